"""Build the icon image collection (freedesktop icon names drawn by several icon themes).

A plain script of the repository: standard library only (no TensorFlow), plus the
system's gdk-pixbuf and librsvg libraries, which it calls through ``ctypes`` to
rasterise SVG and to resize PNG. That is the path GTK itself draws themed icons by,
it needs no install on Debian/Ubuntu machines that have GTK's libraries (else
``apt-get install libgdk-pixbuf-2.0-0 librsvg2-common``) and no pip or npm package.
(Alternatives looked at: ``/usr/local/bin/convert`` on the build machine is a
stand-in, not ImageMagick; ``rsvg-convert`` of the package librsvg2-bin draws the
same pixels, being the same librsvg, but needs that package and cannot resize PNGs;
cairosvg would need a pip install, not tried.) ``dpkg-deb`` must be on the PATH.

Class = a freedesktop icon name (``edit-copy``, ``folder``, ``audio-volume-high``...),
design = an icon theme. Download the theme packages (the Debian 12 "bookworm"
versions of the first build; no root needed), then run the script from the
repository root::

    mkdir -p /work/icon_build/debs && cd /work/icon_build/debs
    apt-get download adwaita-icon-theme=43-1 breeze-icon-theme=4:5.103.0-1 \\
        deepin-icon-theme=2021.11.24-1 elementary-icon-theme=7.2.0-1 \\
        elementary-xfce-icon-theme=0.17-1 faba-icon-theme=4.3-1 \\
        faenza-icon-theme=1.3.1-3 gnome-accessibility-themes=3.28-2 \\
        gnome-colors-common=5.5.1-2.1 gnome-icon-theme=3.12.0-5 \\
        gnome-icon-theme-gartoon=0.5-5 gnome-icon-theme-nuovo=0.5-4.2 \\
        gnome-icon-theme-suede=0.2.5-3 gnome-icon-theme-yasis=0.4.2-1.2 \\
        lxde-icon-theme=0.5.1-2.1 mate-icon-theme=1.26.0-1 mint-y-icons=1.6.5-1 \\
        moka-icon-theme=5.5.0-2 numix-icon-theme=0~20230220-1 \\
        oxygen-icon-theme=5:5.103.0-1 paper-icon-theme=1.5.0+git20200312.aa3e8af-4 \\
        papirus-icon-theme=20230104-2 suru-icon-theme=20.05.1-3 \\
        tango-icon-theme=0.8.90-11 yaru-theme-icon=22.10.3-1 \\
        icon-naming-utils=0.8.90-7
    cd /work/main
    python tools/make_icon_set.py --debs /work/icon_build/debs --out /work/data/icons

(363 MB of packages: 25 icon themes, and icon-naming-utils for its table of
legacy icon names, see step 2. The build takes about 6 minutes of CPU time, one
process; 8 minutes of wall time on a busy 2-core machine.) Other versions of the
packages work too, without the ``=version``; the versions used are recorded in the
output. ``--themes papirus,tango,...`` builds from a subset of
the themes; ``--exclusive-pictures`` and ``--all-names`` are explained below.

What it does, for every theme of ``THEMES`` (one theme folder per package; the
colour variants that some packages also ship are not used):

1. Extracts ``usr/share/icons/<theme folder>/`` and the package's copyright file
   from the .deb (``dpkg-deb --fsys-tarfile``) into a scratch folder (``--work``,
   a temporary folder by default).
2. Reads the theme's ``index.theme`` and lists, per icon name, the theme's own
   pictures: files in the folders that ``index.theme`` declares, symlinks resolved
   (a link that leaves the theme folder or is broken is not the theme's own
   picture and is ignored). Skipped: ``-symbolic`` icons, the ``Animations``
   context (sprite sheets), PNGs under 48 px, SVGs drawn for under 16 px.
   A theme that lacks a standard name but draws one of its older names (the
   table ``legacy-icon-mapping.xml`` of icon-naming-utils: ``gnome-fs-directory``
   or ``stock_folder`` for ``folder``, ``gtk-copy`` for ``edit-copy``...) gives
   that picture to the standard name (GNOME 2 themes such as Nuovo use such names).
3. Picks the best source per name: the smallest PNG of at least 64 px, else the
   largest PNG of 48..63 px, else an SVG (the one drawn for the size nearest 64,
   48 px or more if there is one).
   Its context (apps, actions, places, devices, status, mimetypes, categories,
   emblems, emotes, ...) comes from the theme folder it lies in; a class's
   context is the most common one over its themes.

Then, for the names that at least ``--min-themes`` (3) themes draw:

4. Name rules (``--all-names`` turns them off): a class name is a freedesktop-style
   name, lower-case words joined by "-" (or "." and "+" as in MIME types), without
   a purely numeric word (``battery-040``), not a toolkit- or program-specific
   legacy name (first word in ``LEGACY_FIRST_WORDS``: ``gtk-copy``,
   ``gnome-fs-directory``, ``nm-signal-50``...), and, in the apps context, a generic
   name (``accessories-calculator``, ``utilities-terminal``...) rather than one
   program's name and logo (``firefox``, ``gimp``).
5. Aliases: themes alias names with symlinks. When every picture of name B is
   the same file (same bytes) as name A's picture in the same theme, B adds no
   picture and is dropped (listed under A's ``aliases``); of names with the very
   same pictures, the one drawn by more themes is kept, then the one that is a
   real file (not a symlink) in more themes, then the alphabetically first. Names
   that share only some pictures are all kept (see step 8).
6. Byte-identical copies: when a theme ships the very same file as a theme earlier
   in ``THEMES`` for a name (derived themes copy pictures), only the earlier theme
   keeps that picture.
7. Renders each picture to 64 x 64 RGBA (transparent background kept; aspect ratio
   kept, centred) and drops: blank pictures; faint ones, drawn in white or light
   grey for dark panels and nearly invisible on the white that the library puts
   behind them (on white, fewer than ``FAINT_PIXELS`` pixels differ from white by
   ``FAINT_INK`` or more in a colour channel; light icons such as a white page with
   a grey outline or a yellow star are kept); and
   near copies of an earlier theme's picture (``picture_difference`` of the 16 x 16
   versions on white under ``NEAR_COPY_DIFFERENCE``: re-exported or recoloured
   copies, as between gnome and mate, or moka and mint-y).
8. The same image under several names (a symlink alias in one theme, or a copy
   under another name in another theme): each class's ``shared_images`` lists,
   per theme, the other classes' images that are the very same PNG. With
   ``--exclusive-pictures`` such an image stays in one class only (the one whose
   own file it is, else the one with more images), so that no image is in two
   classes.
9. Keeps the names that ``--min-themes`` themes still draw.

Writes ``<out>/<icon-name>/<theme>.png``, ``<out>/classes.json`` (per class: name,
context, whether it is one of the standard names of the icon-naming-utils table,
themes, aliases, shared images, source file of each picture; plus the
themes' packages, versions, licences and image counts, and a summary) and
``<out>/LICENSES.md`` (each theme's licence as its Debian copyright file gives it,
then the copyright files themselves; no other file or folder is written, so that
every sub-folder of ``<out>`` is a class). An existing ``--out`` folder of a
previous build is replaced. The output is deterministic (sorted; the PNG bytes are
the same on every run with the same libraries).
"""

import argparse
import collections
import ctypes
import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
import tarfile
import tempfile
import time
from configparser import RawConfigParser
from typing import NamedTuple
from xml.etree import ElementTree

ICON_SIZE = 64
MIN_PNG_SIZE = 48  # a PNG drawn for fewer pixels is too coarse to scale up to 64
MIN_SVG_SIZE = 16  # SVGs drawn for 8 or 12 px are simplified pictograms
THUMB_SIZE = 16  # the size at which two themes' pictures are compared
NEAR_COPY_DIFFERENCE = 0.15  # picture_difference under which two themes' pictures are copies
BLANK_ALPHA = 8  # a picture whose 16 x 16 alpha never reaches this is blank
FAINT_INK = 40  # a picture is faint when, on white, all but FAINT_PIXELS - 1 of its
FAINT_PIXELS = 20  # pixels are within FAINT_INK of white in every colour channel
SKIPPED_CONTEXTS = {"animations"}

# Name rules (off with --all-names): class names are freedesktop-style names,
# lower-case words joined by "-" (also "." and "+", as in MIME type names).
NAME_PATTERN = re.compile(r"^[a-z][a-z0-9]*([-.+][a-z0-9]+)*$")
# First words of toolkit- or program-specific legacy names (gtk-copy, gnome-fs-directory,
# stock_..., nm-signal-50, xfpm-..., notification-..., indicator-...): aliases of
# standard names or variants for one program's panel, not names of their own.
LEGACY_FIRST_WORDS = {
    "gtk",
    "gnome",
    "stock",
    "xfce",
    "xfce4",
    "xfpm",
    "gpm",
    "nm",
    "redhat",
    "kde",
    "mate",
    "indicator",
    "notification",
    "cs",
    "kcm",
}
# In the apps context only the generic names (accessories-calculator, utilities-terminal,
# preferences-desktop-theme...) are kept: the others name one program and show its logo.
GENERIC_APP_FIRST_WORDS = {
    "accessories",
    "help",
    "internet",
    "multimedia",
    "office",
    "preferences",
    "system",
    "utilities",
}

# index.theme "Context" values -> the context names written to classes.json
# (freedesktop Icon Theme spec names, lower case; "apps" for Applications).
CONTEXT_NAMES = {
    "actions": "actions",
    "applications": "apps",
    "apps": "apps",
    "categories": "categories",
    "devices": "devices",
    "emblems": "emblems",
    "emotes": "emotes",
    "filesystems": "places",  # GNOME 2 name of places
    "filesytems": "places",  # typo in lxde-icon-theme's index.theme
    "international": "international",
    "mimetypes": "mimetypes",
    "places": "places",
    "status": "status",
    "stxatus": "status",  # typo in lxde-icon-theme's index.theme
    "stock": "",  # GNOME 2 / GTK stock icons: all kinds of icons, no context of their own
}


class Theme(NamedTuple):
    """One design: a theme folder of a Debian package and its licence."""

    id: str  # the output file name: <out>/<icon-name>/<id>.png
    package: str  # Debian package name
    folder: str  # folder under usr/share/icons/
    licence: str  # licence of the icons as the package's copyright file states it


# The order is the priority when two themes ship the same picture (steps 6 and 7):
# original designs first, themes derived from them after.
THEMES = (
    Theme("tango", "tango-icon-theme", "Tango", "public-domain"),
    Theme("gnome", "gnome-icon-theme", "gnome", "GPL-2+"),
    Theme("adwaita", "adwaita-icon-theme", "Adwaita", "CC-BY-SA-3.0 or LGPL-3"),
    Theme("highcontrast", "gnome-accessibility-themes", "HighContrast", "LGPL-2.1+"),
    Theme("oxygen", "oxygen-icon-theme", "oxygen", "LGPL-3+"),
    Theme("breeze", "breeze-icon-theme", "breeze", "LGPL-3+"),
    Theme("elementary", "elementary-icon-theme", "elementary", "GPL-3.0-or-later"),
    Theme("faenza", "faenza-icon-theme", "Faenza", "GPL-3+"),
    Theme("faba", "faba-icon-theme", "Faba", "GPL-3 or CC-BY-SA-4.0"),
    Theme("paper", "paper-icon-theme", "Paper", "CC-BY-SA-3.0"),
    Theme("numix", "numix-icon-theme", "Numix", "GPL-3+"),
    Theme("papirus", "papirus-icon-theme", "Papirus", "GPL-3"),
    Theme("yaru", "yaru-theme-icon", "Yaru", "CC-BY-SA-4.0"),
    Theme("suru", "suru-icon-theme", "suru", "CC-BY-SA-3.0"),
    Theme("mint-y", "mint-y-icons", "Mint-Y", "CC-BY-SA-4"),
    Theme("deepin-bloom", "deepin-icon-theme", "bloom", "LGPL-3+"),
    Theme("nuovo", "gnome-icon-theme-nuovo", "Nuovo", "GPL-2+"),
    Theme("yasis", "gnome-icon-theme-yasis", "yasis", "GPL-2+"),
    Theme("gartoon", "gnome-icon-theme-gartoon", "gartoon", "GPL-2+"),
    Theme("suede", "gnome-icon-theme-suede", "Suede", "GPL-2+"),
    Theme("nuovext2", "lxde-icon-theme", "nuoveXT2", "LGPL-3+"),
    Theme("gnome-colors", "gnome-colors-common", "gnome-colors-common", "GPL-2"),
    Theme("mate", "mate-icon-theme", "mate", "LGPL-3+ or CC-BY-SA"),
    Theme("elementary-xfce", "elementary-xfce-icon-theme", "elementary-xfce", "GPL-2+"),
    Theme("moka", "moka-icon-theme", "Moka", "CC-BY-SA-4.0 or GPL-3+"),
)

# The lines of the packages' copyright files that the licences above come from,
# for the reader of LICENSES.md (checked: each must occur in its copyright file).
LICENCE_EVIDENCE = {
    "tango": "License: public-domain",
    "gnome": "License: GPL-2+",
    "adwaita": "License: CC-BY-SA-3.0 or LGPL-3",
    "highcontrast": "License: LGPL-2.1+",
    "oxygen": "License: LGPL-3+",
    "breeze": "License: LGPL-3+",
    "elementary": "License: GPL-3.0-or-later",
    "faenza": "License: GPL-3+",
    "faba": "License: GPL-3 or CC-BY-SA-4.0",
    "paper": "License: CC-BY-SA-3.0",
    "numix": "License: GPL-3+",
    "papirus": "License: GPL-3",
    "yaru": "License: CC-BY-SA-4.0",
    "suru": "License: CC-BY-SA-3.0",
    "mint-y": "License: CC-BY-SA-4",
    "deepin-bloom": "License: LGPL-3+",
    "nuovo": "either version 2 of the License, or",
    "yasis": "either version 2 of the License, or",
    "gartoon": "License: GPL-2+",
    "suede": "License: GPL-2+",
    "nuovext2": "License: LGPL-3+",
    "gnome-colors": "License: GPL-2",
    "mate": "License: LGPL-3+ or CC-BY-SA",
    "elementary-xfce": "License: GPL-2+",
    "moka": "License: CC-BY-SA-4.0 or GPL-3+",
}


assert set(LICENCE_EVIDENCE) == {theme.id for theme in THEMES}, "every theme needs its LICENCE_EVIDENCE"

# The package whose table maps older icon names to the standard ones (step 2).
LEGACY_MAPPING_PACKAGE = "icon-naming-utils"


class BuildError(Exception):
    """A problem with the inputs; the message names the bad value and the fix."""


# --------------------------------------------------------------------------- packages


def find_deb(debs_dir, package, alternative="or leave its theme out with --themes"):
    """The one ``<package>_*.deb`` in ``debs_dir``."""
    matches = sorted(name for name in os.listdir(debs_dir) if name.startswith(package + "_") and name.endswith(".deb"))
    if not matches:
        raise BuildError(
            f"no {package}_*.deb in {debs_dir}: run `cd {debs_dir} && apt-get download {package}` ({alternative})"
        )
    if len(matches) > 1:
        raise BuildError(f"several .deb files of {package} in {debs_dir} ({', '.join(matches)}): keep only one")
    return os.path.join(debs_dir, matches[0])


def deb_version(deb_path):
    """The Version field of a .deb."""
    return run_dpkg_deb(["-f", deb_path, "Version"]).decode().strip()


def run_dpkg_deb(arguments):
    """Output of ``dpkg-deb ARGUMENTS``; a BuildError if it is missing or fails."""
    try:
        result = subprocess.run(["dpkg-deb", *arguments], capture_output=True, check=False)
    except FileNotFoundError:
        raise BuildError("dpkg-deb is not on the PATH: install the dpkg package (Debian/Ubuntu)") from None
    if result.returncode != 0:
        raise BuildError(f"dpkg-deb {' '.join(arguments)} failed: {result.stderr.decode().strip()}")
    return result.stdout


def member_path(name):
    """A tar member name of a .deb without its leading "./" ("./usr/x" -> "usr/x")."""
    return os.path.normpath(name[2:] if name.startswith("./") else name)


def extract_members(deb_path, wanted, dest):
    """Extract the files of ``deb_path`` whose path ``wanted(path)`` accepts below ``dest``.

    Paths are relative ("usr/share/..."). Only regular files and symlinks are written,
    never outside ``dest``. Returns the set of extracted paths.
    """
    process = subprocess.Popen(["dpkg-deb", "--fsys-tarfile", deb_path], stdout=subprocess.PIPE)
    dest_root = os.path.realpath(dest) + os.sep
    extracted = set()
    with tarfile.open(fileobj=process.stdout, mode="r|") as archive:
        for member in archive:
            name = member_path(member.name)
            if not wanted(name) or name.startswith("/") or ".." in name.split("/"):
                continue
            target = os.path.join(dest, name)
            os.makedirs(os.path.dirname(target), exist_ok=True)
            if not os.path.realpath(os.path.dirname(target)).startswith(dest_root):
                continue  # below a symlink that leads out of dest
            if member.issym():
                os.symlink(member.linkname, target)
            elif member.islnk():  # a hard link to a member extracted before
                linked = os.path.join(dest, member_path(member.linkname))
                if not os.path.exists(linked):
                    continue
                shutil.copyfile(linked, target)
            elif member.isfile():
                with open(target, "wb") as file:
                    shutil.copyfileobj(archive.extractfile(member), file)
            else:
                continue
            extracted.add(name)
    if process.wait() != 0:
        raise BuildError(f"dpkg-deb --fsys-tarfile {deb_path} failed: is it a complete .deb? download it again")
    return extracted


def extract_theme(deb_path, theme, dest):
    """Extract the theme folder and the copyright file of ``deb_path`` below ``dest``.

    Returns (theme folder, copyright file).
    """
    icons_prefix = f"usr/share/icons/{theme.folder}/"
    copyright_name = f"usr/share/doc/{theme.package}/copyright"
    extracted = extract_members(deb_path, lambda name: name.startswith(icons_prefix) or name == copyright_name, dest)
    theme_dir = os.path.join(dest, icons_prefix)
    if not os.path.isfile(os.path.join(theme_dir, "index.theme")):
        raise BuildError(
            f"{deb_path} has no usr/share/icons/{theme.folder}/index.theme: "
            f"is it the {theme.package} package of an icon theme? fix THEMES or the download"
        )
    if copyright_name not in extracted:
        raise BuildError(f"{deb_path} has no {copyright_name}: cannot name the licence of {theme.id}")
    return theme_dir, os.path.join(dest, copyright_name)


def read_legacy_names(debs_dir, dest):
    """{standard name: [legacy names, ...]} from icon-naming-utils' legacy-icon-mapping.xml.

    The Tango project's table of the freedesktop standard names and the older GNOME,
    KDE, GTK and Xfce names of the same icons (``folder``: ``gnome-fs-directory``,
    ``stock_folder``...).
    """
    mapping_name = "usr/share/icon-naming-utils/legacy-icon-mapping.xml"
    deb_path = find_deb(debs_dir, LEGACY_MAPPING_PACKAGE, "its table of legacy icon names is always used")
    if mapping_name not in extract_members(deb_path, lambda name: name == mapping_name, dest):
        raise BuildError(f"{deb_path} has no {mapping_name}: download {LEGACY_MAPPING_PACKAGE} again")
    legacy_names = {}
    for icon in ElementTree.parse(os.path.join(dest, mapping_name)).getroot().iter("icon"):
        legacy_names[icon.get("name")] = [link.text.strip() for link in icon.iter("link") if link.text]
    return legacy_names


# ----------------------------------------------------------------------- theme index


class Source(NamedTuple):
    """One picture that a theme draws for an icon name."""

    path: str  # the resolved file
    listed_path: str  # the file name as the theme lists it, relative to the theme folder
    kind: str  # "png" or "svg"
    size: int  # the size (px) that the folder's pictures are drawn for
    scale: int  # the folder's scale: a PNG has size x scale pixels
    context: str  # normalized context of the folder ("" when not a standard one)
    is_link: bool  # the file has another name (a symlink, or a legacy name of the icon)
    legacy_name: str = ""  # the legacy name this picture is listed under, for a standard name

    def rank(self):
        """Sort key: smaller is better (see the module docstring, step 3)."""
        pixels = self.size * self.scale
        if self.kind == "png" and pixels >= ICON_SIZE:
            return (0, pixels, self.listed_path)
        if self.kind == "png":
            return (1, -pixels, self.listed_path)
        return (2, self.size < MIN_PNG_SIZE, abs(self.size - ICON_SIZE), self.scale, self.listed_path)


def read_theme_dirs(theme_dir):
    """(folder, size, scale, context) of each folder that index.theme declares.

    The context is None for a skipped context, "" for a non-standard one.
    """
    index = RawConfigParser(strict=False, interpolation=None)
    with open(os.path.join(theme_dir, "index.theme"), encoding="utf-8", errors="replace") as file:
        index.read_file(file)
    header = index["Icon Theme"]
    listed = []
    for key in ("Directories", "ScaledDirectories"):
        for folder in header.get(key, "").split(","):
            folder = folder.strip()
            if folder and folder not in listed and index.has_section(folder):
                listed.append(folder)
    dirs = []
    for folder in listed:
        section = index[folder]
        try:
            size, scale = int(section.get("size", "0")), int(section.get("scale", "1"))
        except ValueError:
            continue
        raw_context = section.get("context", "").strip().lower()
        context = None if raw_context in SKIPPED_CONTEXTS else CONTEXT_NAMES.get(raw_context, "")
        dirs.append((folder, size, scale, context))
    return dirs


def index_theme(theme_dir):
    """{icon name: best Source} of the theme's own, non-symbolic pictures."""
    theme_root = os.path.realpath(theme_dir)
    sources = collections.defaultdict(list)
    for folder, size, scale, context in read_theme_dirs(theme_dir):
        folder_path = os.path.join(theme_dir, folder)
        if context is None or not os.path.isdir(folder_path):
            continue
        for file_name in sorted(os.listdir(folder_path)):
            name, extension = os.path.splitext(file_name)
            if extension.lower() not in (".png", ".svg") or "-symbolic" in name:
                continue
            listed_path = os.path.join(folder_path, file_name)
            resolved = os.path.realpath(listed_path)
            if not resolved.startswith(theme_root + os.sep) or not os.path.isfile(resolved):
                continue  # broken, or another theme's picture
            resolved_name, resolved_extension = os.path.splitext(os.path.basename(resolved))
            resolved_kind = resolved_extension[1:].lower()
            if resolved_kind not in ("png", "svg") or "-symbolic" in resolved_name:
                continue
            if (resolved_kind == "png" and size * scale < MIN_PNG_SIZE) or size < MIN_SVG_SIZE:
                continue
            sources[name].append(
                Source(
                    path=resolved,
                    listed_path=os.path.join(folder, file_name),
                    kind=resolved_kind,
                    size=size,
                    scale=scale,
                    context=context,
                    is_link=resolved_name != name,
                )
            )
    return {name: min(found, key=Source.rank) for name, found in sources.items()}


def add_standard_names(sources, legacy_names):
    """Give the theme's picture of a legacy name to the standard name it lacks (step 2).

    ``sources``: index_theme's {name: Source}; ``legacy_names``: read_legacy_names'
    table. Returns the number of names added.
    """
    added = 0
    for standard_name, old_names in legacy_names.items():
        if standard_name in sources:
            continue
        found = [sources[old_name] for old_name in old_names if old_name in sources]
        if found:
            best = min(found, key=Source.rank)
            legacy_name = os.path.splitext(os.path.basename(best.listed_path))[0]
            sources[standard_name] = best._replace(is_link=True, legacy_name=legacy_name)
            added += 1
    return added


def file_digest(path):
    """SHA-256 of a file's bytes."""
    with open(path, "rb") as file:
        return hashlib.sha256(file.read()).hexdigest()


# ------------------------------------------------------------------------ rasteriser


class GError(ctypes.Structure):
    _fields_ = [("domain", ctypes.c_uint32), ("code", ctypes.c_int), ("message", ctypes.c_char_p)]


class Rasterizer:
    """Loads PNG and SVG files into 64 x 64 RGBA PNGs with gdk-pixbuf (+ librsvg)."""

    INTERP_BILINEAR = 2  # GDK_INTERP_BILINEAR: area-averaging when shrinking
    COLORSPACE_RGB = 0

    def __init__(self):
        try:
            self.pixbuf = ctypes.CDLL("libgdk_pixbuf-2.0.so.0")
            self.gobject = ctypes.CDLL("libgobject-2.0.so.0")
            self.glib = ctypes.CDLL("libglib-2.0.so.0")
        except OSError as error:
            raise BuildError(
                f"cannot load gdk-pixbuf ({error}): install it with "
                f"`apt-get install libgdk-pixbuf-2.0-0 librsvg2-common`"
            ) from None
        p, gp, vp, ip = self.pixbuf, ctypes.c_void_p, ctypes.c_void_p, ctypes.c_int
        error_out = ctypes.POINTER(ctypes.POINTER(GError))
        for name, restype, argtypes in (
            ("gdk_pixbuf_new_from_file_at_size", gp, [ctypes.c_char_p, ip, ip, error_out]),
            ("gdk_pixbuf_new", gp, [ip, ip, ip, ip, ip]),
            ("gdk_pixbuf_fill", None, [gp, ctypes.c_uint32]),
            ("gdk_pixbuf_copy_area", None, [gp, ip, ip, ip, ip, gp, ip, ip]),
            ("gdk_pixbuf_add_alpha", gp, [gp, ip, ctypes.c_ubyte, ctypes.c_ubyte, ctypes.c_ubyte]),
            ("gdk_pixbuf_scale_simple", gp, [gp, ip, ip, ip]),
            ("gdk_pixbuf_get_width", ip, [gp]),
            ("gdk_pixbuf_get_height", ip, [gp]),
            ("gdk_pixbuf_get_rowstride", ip, [gp]),
            ("gdk_pixbuf_get_n_channels", ip, [gp]),
            ("gdk_pixbuf_get_has_alpha", ip, [gp]),
            ("gdk_pixbuf_get_pixels", vp, [gp]),
            (
                "gdk_pixbuf_save_to_bufferv",
                ip,
                [gp, ctypes.POINTER(vp), ctypes.POINTER(ctypes.c_size_t), ctypes.c_char_p, vp, vp, error_out],
            ),
        ):
            function = getattr(p, name)
            function.restype, function.argtypes = restype, argtypes
        self.gobject.g_object_unref.argtypes = [gp]
        self.glib.g_free.argtypes = [vp]
        self.glib.g_error_free.argtypes = [ctypes.POINTER(GError)]
        self._check_svg_support()

    def _check_svg_support(self):
        with tempfile.NamedTemporaryFile("w", suffix=".svg", delete=False) as probe:
            probe.write(
                '<svg xmlns="http://www.w3.org/2000/svg" width="8" height="8">'
                '<rect width="8" height="8" fill="red"/></svg>'
            )
        try:
            self.render(probe.name)
        except BuildError as error:
            raise BuildError(
                f"gdk-pixbuf cannot read SVG ({error}): install its SVG loader with `apt-get install librsvg2-common`"
            ) from None
        finally:
            os.unlink(probe.name)

    def _unref(self, pixbuf):
        self.gobject.g_object_unref(pixbuf)

    def _raise(self, error, what):
        message = error.contents.message.decode(errors="replace") if error else "unknown error"
        if error:
            self.glib.g_error_free(error)
        raise BuildError(f"{what}: {message}")

    def render(self, path):
        """``path`` drawn into 64 x 64: (PNG bytes, its RGBA bytes, 16 x 16 RGBA thumbnail bytes)."""
        p = self.pixbuf
        error = ctypes.POINTER(GError)()
        loaded = p.gdk_pixbuf_new_from_file_at_size(path.encode(), ICON_SIZE, ICON_SIZE, ctypes.byref(error))
        if not loaded:
            self._raise(error, f"cannot load {path}")
        try:
            if not p.gdk_pixbuf_get_has_alpha(loaded):
                with_alpha = p.gdk_pixbuf_add_alpha(loaded, 0, 0, 0, 0)
                self._unref(loaded)
                loaded = with_alpha
            width, height = p.gdk_pixbuf_get_width(loaded), p.gdk_pixbuf_get_height(loaded)
            canvas = p.gdk_pixbuf_new(self.COLORSPACE_RGB, 1, 8, ICON_SIZE, ICON_SIZE)
            p.gdk_pixbuf_fill(canvas, 0)
            p.gdk_pixbuf_copy_area(
                loaded, 0, 0, width, height, canvas, (ICON_SIZE - width) // 2, (ICON_SIZE - height) // 2
            )
        finally:
            self._unref(loaded)
        try:
            thumbnail = p.gdk_pixbuf_scale_simple(canvas, THUMB_SIZE, THUMB_SIZE, self.INTERP_BILINEAR)
            thumbnail_bytes = self._rgba_bytes(thumbnail)
            self._unref(thumbnail)
            return self._png_bytes(canvas, path), self._rgba_bytes(canvas), thumbnail_bytes
        finally:
            self._unref(canvas)

    def _rgba_bytes(self, pixbuf):
        p = self.pixbuf
        width, height = p.gdk_pixbuf_get_width(pixbuf), p.gdk_pixbuf_get_height(pixbuf)
        rowstride = p.gdk_pixbuf_get_rowstride(pixbuf)
        raw = ctypes.string_at(p.gdk_pixbuf_get_pixels(pixbuf), rowstride * (height - 1) + width * 4)
        return b"".join(raw[row * rowstride : row * rowstride + width * 4] for row in range(height))

    def _png_bytes(self, pixbuf, path):
        buffer, size = ctypes.c_void_p(), ctypes.c_size_t()
        error = ctypes.POINTER(GError)()
        if not self.pixbuf.gdk_pixbuf_save_to_bufferv(
            pixbuf, ctypes.byref(buffer), ctypes.byref(size), b"png", None, None, ctypes.byref(error)
        ):
            self._raise(error, f"cannot encode {path} as PNG")
        try:
            return ctypes.string_at(buffer, size.value)
        finally:
            self.glib.g_free(buffer)


def on_white(thumbnail):
    """The 16 x 16 RGBA thumbnail composited on white: its R, G, B values (0..255)."""
    values = []
    for offset in range(0, len(thumbnail), 4):
        alpha = thumbnail[offset + 3]
        values.extend((channel * alpha + 255 * (255 - alpha)) // 255 for channel in thumbnail[offset : offset + 3])
    return values


def ink(rgba):
    """How far the ``FAINT_PIXELS``-th darkest pixel of an RGBA image on white is from white (0..255).

    A pixel's distance is its largest channel difference from white, times its alpha.
    """
    distances = sorted(
        (255 - min(red, green, blue)) * alpha // 255
        for red, green, blue, alpha in zip(rgba[0::4], rgba[1::4], rgba[2::4], rgba[3::4])
    )
    return distances[-FAINT_PIXELS]


def picture_difference(values_a, values_b):
    """How different two pictures are, from their ``on_white`` thumbnails (0 = identical).

    The mean absolute difference of the values, relative to how far the pictures are
    from plain white on average, so that light pictures are compared as fairly as dark
    ones; about 1 for unrelated pictures.
    """
    difference = sum(abs(a - b) for a, b in zip(values_a, values_b))
    content = sum(255 - a for a in values_a) + sum(255 - b for b in values_b)
    return 2 * difference / max(content, 1)


# ---------------------------------------------------------------------------- build


def choose_aliases(drawings, link_counts):
    """Names to drop as aliases: {dropped name: kept name} (module docstring, step 5).

    ``drawings``: {name: {theme id: file digest}}; ``link_counts``: {name: number of
    themes where the name is a symlink to another name}.
    """
    names_by_picture = collections.defaultdict(set)
    for name, pictures in drawings.items():
        for item in pictures.items():
            names_by_picture[item].add(name)
    # Preference: more themes, then a real file (not a symlink) in more themes, then alphabetical.
    preference = {name: (-len(drawings[name]), link_counts[name], name) for name in drawings}
    dropped = {}
    for name in sorted(drawings, key=preference.get, reverse=True):  # least preferred first
        containing = set.intersection(*(names_by_picture[item] for item in drawings[name].items()))
        containing -= {name, *dropped}
        if containing:
            kept = min(containing, key=preference.get)
            dropped[name] = kept
    # Point every dropped name at a kept one (a dropped name may have absorbed others).
    for name, kept in dropped.items():
        while kept in dropped:
            kept = dropped[kept]
        dropped[name] = kept
    return dropped


def name_rule_failure(name, context):
    """Why ``name`` (of majority context ``context``) is not a class name; None if it is."""
    if not NAME_PATTERN.match(name):
        return "not a lower-case hyphenated name"
    words = re.split(r"[-.+]", name)
    if any(word.isdigit() for word in words):
        return "numbered variant"
    if words[0] in LEGACY_FIRST_WORDS:
        return "legacy or program-specific name"
    if context == "apps" and words[0] not in GENERIC_APP_FIRST_WORDS:
        return "program logo"
    return None


def assign_pictures_exclusively(pictures, own_files, min_themes):
    """Show each image under one class only (``--exclusive-pictures``).

    ``pictures``: {name: {theme id: digest of the rendered PNG}}; ``own_files``: the
    (name, theme id) pairs whose source file carries the name itself (not a symlink
    or copy under another name). An image that several names show (the same bytes,
    in the same theme or across themes) goes to the name whose own file it is, else
    to the name with more images, then to the alphabetically first; the other names
    lose it. Names left with fewer than ``min_themes`` images are dropped and their
    images handed out again, until nothing changes. Returns ({name: [theme id, ...]},
    number of images taken away).
    """
    alive = set(pictures)
    while True:
        names_by_digest = collections.defaultdict(set)
        for name in alive:
            for digest in pictures[name].values():
                names_by_digest[digest].add(name)
        kept = {name: [] for name in alive}
        taken_away = 0
        for name in alive:
            for theme_id, digest in pictures[name].items():
                owner = min(
                    names_by_digest[digest],
                    key=lambda other, digest=digest: (
                        not any((other, t) in own_files for t, d in pictures[other].items() if d == digest),
                        -len(pictures[other]),
                        other,
                    ),
                )
                if owner == name:
                    kept[name].append(theme_id)
                else:
                    taken_away += 1
        still_alive = {name for name in alive if len(kept[name]) >= min_themes}
        if still_alive == alive:
            return {name: kept[name] for name in sorted(alive)}, taken_away
        alive = still_alive


def majority_context(contexts):
    """The most common non-empty context (ties: alphabetical); "" when none."""
    counts = collections.Counter(context for context in contexts if context)
    if not counts:
        return ""
    return min(counts, key=lambda context: (-counts[context], context))


def remove_folder(path):
    """Remove a scratch folder of an earlier run, if there is one."""
    if os.path.lexists(path):
        shutil.rmtree(path)


def check_output_folder(out_dir):
    """Refuse an ``out_dir`` that is a file, or a non-empty folder that is not a previous build."""
    if os.path.exists(out_dir) and not os.path.isdir(out_dir):
        raise BuildError(f"--out {out_dir} is a file: pass a folder")
    if os.path.isdir(out_dir) and os.listdir(out_dir) and not os.path.isfile(os.path.join(out_dir, "classes.json")):
        raise BuildError(
            f"--out {out_dir} is not empty and holds no classes.json of a previous build: pass an empty or new folder"
        )


def prepare_output(out_dir):
    """An empty ``out_dir``: a previous build there is removed."""
    check_output_folder(out_dir)
    if os.path.isdir(out_dir):
        shutil.rmtree(out_dir)
    os.makedirs(out_dir)


def build(debs_dir, out_dir, work_dir, themes, min_themes, all_names=False, exclusive_pictures=False):
    """Run the whole build (see the module docstring); returns the summary dict."""
    started = time.time()
    check_output_folder(out_dir)
    rasterizer = Rasterizer()
    remove_folder(os.path.join(work_dir, LEGACY_MAPPING_PACKAGE))
    legacy_names = read_legacy_names(debs_dir, os.path.join(work_dir, LEGACY_MAPPING_PACKAGE))
    theme_versions, deb_digests, copyrights, indexes = {}, {}, {}, {}
    for theme in themes:
        deb_path = find_deb(debs_dir, theme.package)
        theme_versions[theme.id] = deb_version(deb_path)
        deb_digests[theme.id] = file_digest(deb_path)
        dest = os.path.join(work_dir, theme.id)
        remove_folder(dest)
        theme_dir, copyrights[theme.id] = extract_theme(deb_path, theme, dest)
        with open(copyrights[theme.id], encoding="utf-8", errors="replace") as file:
            if LICENCE_EVIDENCE[theme.id] not in file.read():
                raise BuildError(
                    f"the copyright file of {theme.package} {theme_versions[theme.id]} no longer says "
                    f"{LICENCE_EVIDENCE[theme.id]!r}: check its licence and update THEMES and "
                    f"LICENCE_EVIDENCE"
                )
        indexes[theme.id] = index_theme(theme_dir)
        from_legacy = add_standard_names(indexes[theme.id], legacy_names)
        print(
            f"{theme.id:16s} {theme.package} {theme_versions[theme.id]}: "
            f"{len(indexes[theme.id])} icon names ({from_legacy} standard names from legacy names)",
            flush=True,
        )
    theme_order = [theme.id for theme in themes]

    # Names that enough themes draw at all (before any de-duplication).
    drawn_by = collections.defaultdict(list)
    for theme_id in theme_order:
        for name in indexes[theme_id]:
            drawn_by[name].append(theme_id)
    candidates = sorted(name for name, theme_ids in drawn_by.items() if len(theme_ids) >= min_themes)
    name_rule_drops = collections.Counter()
    if not all_names:
        passing = []
        for name in candidates:
            failure = name_rule_failure(name, majority_context(indexes[t][name].context for t in drawn_by[name]))
            name_rule_drops[failure or "kept"] += 1
            if not failure:
                passing.append(name)
        print(f"name rules: {dict(sorted(name_rule_drops.items()))}", flush=True)
        candidates = passing

    drawings = {name: {t: file_digest(indexes[t][name].path) for t in drawn_by[name]} for name in candidates}
    link_counts = {name: sum(indexes[t][name].is_link for t in drawn_by[name]) for name in candidates}
    aliases_of = choose_aliases(drawings, link_counts)

    # Step 6: a theme's byte copy of an earlier theme's picture is not a design of its own.
    byte_copies = 0
    designs = {}
    for name in candidates:
        if name in aliases_of:
            continue
        seen, kept = set(), []
        for theme_id in drawn_by[name]:
            digest = drawings[name][theme_id]
            if digest in seen:
                byte_copies += 1
                continue
            seen.add(digest)
            kept.append(theme_id)
        if len(kept) >= min_themes:
            designs[name] = kept
    print(
        f"{len(candidates)} names drawn by >= {min_themes} themes; {len(aliases_of)} aliases dropped, "
        f"{byte_copies} byte-identical copies dropped",
        flush=True,
    )
    print(f"rendering {len(designs)} names", flush=True)

    # Step 7: render, drop blank and faint pictures and near copies.
    rendered, blank, faint, near_copies, failed = {}, [], [], [], []
    for count, name in enumerate(sorted(designs), 1):
        kept = []
        for theme_id in designs[name]:
            source = indexes[theme_id][name]
            try:
                png, rgba, thumbnail = rasterizer.render(source.path)
            except BuildError as error:  # reported; the name keeps its other themes
                failed.append(f"{name}/{theme_id}: {str(error).replace(work_dir, '<work>')}")
                continue
            if max(thumbnail[3::4]) < BLANK_ALPHA:
                blank.append(f"{name}/{theme_id}")
                continue
            if ink(rgba) < FAINT_INK:
                faint.append(f"{name}/{theme_id}")
                continue
            values = on_white(thumbnail)
            copy_of = next(
                (
                    other
                    for other, other_values, _ in kept
                    if picture_difference(values, other_values) < NEAR_COPY_DIFFERENCE
                ),
                None,
            )
            if copy_of:
                near_copies.append(f"{name}/{theme_id}~{copy_of}")
                continue
            kept.append((theme_id, values, png))
        if len(kept) >= min_themes:
            rendered[name] = {theme_id: png for theme_id, _, png in kept}
        if count % 200 == 0:
            print(f"  rendered {count}/{len(designs)} names", flush=True)

    # Step 8: the same image under several names.
    image_digests = {
        name: {theme_id: hashlib.sha256(png).hexdigest() for theme_id, png in pngs.items()}
        for name, pngs in rendered.items()
    }
    shared_taken_away = 0
    if exclusive_pictures:
        own_files = {
            (name, theme_id)
            for name, pngs in rendered.items()
            for theme_id in pngs
            if not indexes[theme_id][name].is_link
        }
        kept_themes, shared_taken_away = assign_pictures_exclusively(image_digests, own_files, min_themes)
        rendered = {name: {t: rendered[name][t] for t in theme_ids} for name, theme_ids in kept_themes.items()}
        image_digests = {
            name: {t: image_digests[name][t] for t in theme_ids} for name, theme_ids in kept_themes.items()
        }
        print(
            f"exclusive pictures: {shared_taken_away} shared images taken from classes, {len(rendered)} classes left",
            flush=True,
        )
    images_by_digest = collections.defaultdict(list)
    for name, digests in image_digests.items():
        for theme_id, digest in digests.items():
            images_by_digest[digest].append(f"{name}/{theme_id}")

    # Classes and their contexts.
    classes = []
    for name in sorted(rendered):
        theme_ids = sorted(rendered[name])
        shared = {}
        for theme_id in theme_ids:
            same = sorted(
                image for image in images_by_digest[image_digests[name][theme_id]] if not image.startswith(name + "/")
            )
            if same:
                shared[theme_id] = same
        sources = {t: indexes[t][name] for t in theme_ids}
        entry = {
            "name": name,
            "context": majority_context(source.context for source in sources.values()),
            "standard_name": name in legacy_names,
            "themes": theme_ids,
            "aliases": sorted(alias for alias, owner in aliases_of.items() if owner == name),
            "shared_images": shared,
            "sources": {t: source_record(source) for t, source in sorted(sources.items())},
        }
        classes.append(entry)

    # Write.
    prepare_output(out_dir)
    for name in sorted(rendered):
        os.makedirs(os.path.join(out_dir, name))
        for theme_id, png in sorted(rendered[name].items()):
            with open(os.path.join(out_dir, name, f"{theme_id}.png"), "wb") as file:
                file.write(png)
    theme_table = {
        theme.id: {
            "package": theme.package,
            "version": theme_versions[theme.id],
            "deb_sha256": deb_digests[theme.id],
            "folder": theme.folder,
            "licence": theme.licence,
            "images": sum(theme.id in pictures for pictures in rendered.values()),
        }
        for theme in themes
    }
    per_theme_count = collections.Counter(len(pictures) for pictures in rendered.values())
    summary = {
        "classes": len(classes),
        "images": sum(per_theme_count[k] * k for k in per_theme_count),
        "classes_with_3_4_5plus_themes": [
            per_theme_count[3],
            per_theme_count[4],
            sum(n for k, n in per_theme_count.items() if k >= 5),
        ],
        "classes_per_theme_count": {str(k): per_theme_count[k] for k in sorted(per_theme_count)},
        "classes_per_context": dict(sorted(collections.Counter(c["context"] or "other" for c in classes).items())),
        "aliases_dropped": len(aliases_of),
        "byte_copies_dropped": byte_copies,
        "near_copies_dropped": len(near_copies),
        "blank_dropped": len(blank),
        "faint_dropped": len(faint),
        "names_dropped_by_name_rules": {k: v for k, v in sorted(name_rule_drops.items()) if k != "kept"},
        "failed_to_load": failed,
        "classes_with_shared_images": sum(bool(c["shared_images"]) for c in classes),
        "images_shared_with_other_classes": sum(len(c["shared_images"]) for c in classes),
        "shared_pictures_taken_away": shared_taken_away,
    }
    with open(os.path.join(out_dir, "classes.json"), "w") as file:
        json.dump(
            {
                "source": "tools/make_icon_set.py: freedesktop icon themes from Debian packages",
                "image_size": ICON_SIZE,
                "min_themes": min_themes,
                "name_rules": not all_names,
                "exclusive_pictures": exclusive_pictures,
                "themes": theme_table,
                "summary": summary,
                "classes": classes,
            },
            file,
            indent=1,
            sort_keys=False,
        )
        file.write("\n")
    write_licences(out_dir, themes, theme_table, copyrights)
    summary["wall_seconds"] = round(time.time() - started, 1)
    summary["near_copies"] = near_copies
    summary["blank"] = blank
    summary["faint"] = faint
    return summary


def source_record(source):
    """What classes.json says of the source of one image."""
    record = {
        "file": source.listed_path,
        "context": source.context,
        "kind": source.kind,
        "drawn_for_px": source.size,
        "scale": source.scale,
    }
    if source.legacy_name:
        record["legacy_name"] = source.legacy_name
    return record


def write_licences(out_dir, themes, theme_table, copyrights):
    """LICENSES.md: each theme's package, version and licence, then the packages' copyright files."""
    with open(os.path.join(out_dir, "LICENSES.md"), "w") as file:
        file.write(
            "# Icon images: licences\n\n"
            "Made by `python tools/make_icon_set.py` from the icon themes of the Debian packages below "
            "(pictures rasterised or resized to 64 x 64 PNG, otherwise unchanged). Each theme's "
            "licence is the one its package's Debian copyright file gives for the icons; the "
            "copyright files, with the authors to credit, follow the table.\n\n"
            "| theme (file name) | Debian package | version | theme folder | licence | images |\n"
            "| --- | --- | --- | --- | --- | --- |\n"
        )
        for theme in themes:
            row = theme_table[theme.id]
            file.write(
                f"| `{theme.id}.png` | {theme.package} | {row['version']} | {theme.folder} | "
                f"{theme.licence} | {row['images']} |\n"
            )
        file.write(
            f"\nThe class names of some pictures come from the table of legacy icon names of "
            f"{LEGACY_MAPPING_PACKAGE} (GPL-2; only used, not copied).\n"
            "\nMost themes are under copyleft licences (GPL, LGPL, CC-BY-SA): "
            "keep this file with any copy of the images.\n"
            "\n## The packages' copyright files\n"
        )
        for theme in themes:
            with open(copyrights[theme.id], encoding="utf-8", errors="replace") as copyright_file:
                text = copyright_file.read().rstrip("\n")
            file.write(
                f"\n### {theme.package} {theme_table[theme.id]['version']} "
                f"(`usr/share/doc/{theme.package}/copyright`)\n\n~~~~~~~~ text\n{text}\n~~~~~~~~\n"
            )


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--debs", required=True, help="folder with the theme packages' .deb files (apt-get download)")
    parser.add_argument("--out", required=True, help="output folder (new, empty, or a previous build's)")
    parser.add_argument("--work", help="scratch folder for the extracted themes (default: a temporary folder)")
    parser.add_argument(
        "--themes",
        help="comma-separated theme ids to use (default: all of THEMES): " + ",".join(theme.id for theme in THEMES),
    )
    parser.add_argument("--min-themes", type=int, default=3, help="keep names drawn by at least this many themes")
    parser.add_argument(
        "--exclusive-pictures",
        action="store_true",
        help="show each picture under one name only (no identical images in two classes)",
    )
    parser.add_argument(
        "--all-names", action="store_true", help="keep every icon name (program logos, legacy and numbered names too)"
    )
    args = parser.parse_args()

    themes = THEMES
    if args.themes:
        wanted = [theme_id.strip() for theme_id in args.themes.split(",") if theme_id.strip()]
        known = {theme.id for theme in THEMES}
        unknown = [theme_id for theme_id in wanted if theme_id not in known]
        if unknown:
            parser.error(f"unknown theme id(s) {', '.join(unknown)}: choose from {', '.join(sorted(known))}")
        themes = tuple(theme for theme in THEMES if theme.id in wanted)
    if args.min_themes < 1:
        parser.error(f"--min-themes {args.min_themes} must be at least 1")
    if not os.path.isdir(args.debs):
        parser.error(f"--debs {args.debs} is not a folder: download the packages first (see the module docstring)")
    try:
        if args.work:
            os.makedirs(args.work, exist_ok=True)
            summary = build(
                args.debs, args.out, args.work, themes, args.min_themes, args.all_names, args.exclusive_pictures
            )
        else:
            with tempfile.TemporaryDirectory(prefix="icon_themes_") as work_dir:
                summary = build(
                    args.debs, args.out, work_dir, themes, args.min_themes, args.all_names, args.exclusive_pictures
                )
    except BuildError as error:
        sys.exit(f"error: {error}")
    for key in ("near_copies", "blank", "faint"):
        print(f"{key} ({len(summary[key])}): {' '.join(summary.pop(key)[:30])} ...")
    print(json.dumps(summary, indent=1))
    print(f"wrote {summary['classes']} classes, {summary['images']} images to {args.out}")


if __name__ == "__main__":
    main()
