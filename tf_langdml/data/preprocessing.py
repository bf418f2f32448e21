"""Image decoding and the paper's train / eval preprocessing, in the TensorFlow graph.

Outputs are float32 RGB with values in [0, 255]: the embedder applies its backbone's
own normalisation (caffe-style for ResNet50, (x - 127) / 128 for EfficientNet-Lite),
so the pipeline does not need to know the backbone.

Decoding (:func:`decode_rgb`) shows an image as a viewer would: transparent pixels
(PNG alpha, a PNG palette or grey/RGB colour marked transparent by ``tRNS``, a GIF's
transparent colour) are composited onto a background colour (white by default), and
16-bit PNGs are scaled to 8 bits (rounded, not truncated). Before anything is decoded,
the image size is read from the file header and an image above ``max_pixels`` is
refused, so a small file that claims to be 100,000 x 100,000 cannot exhaust memory. A
GIF is checked by its first image (which may be larger than its logical screen) and
decoded to that frame only. What a decode then costs, per pixel, is measured in
``docs/data.md`` (3 bytes for JPEG and BMP, up to 22 for a 16-bit PNG with alpha).
"""

import numbers
import os
import stat
from collections.abc import Sequence

import numpy as np
import tensorflow as tf

from tf_langdml.errors import ArgumentError

# What transparent pixels are composited onto: "white", "black" or (r, g, b) in 0..255.
Background = str | Sequence[int]
BACKGROUNDS = {"white": (255, 255, 255), "black": (0, 0, 0)}
DEFAULT_BACKGROUND = BACKGROUNDS["white"]
# 64 megapixels: an 8000 x 8000 photo, 192 MB as uint8 RGB. Peak memory of decoding one that large
# (measured, docs/data.md): JPEG, BMP 0.19 GB; GIF 0.34 GB; PNG 0.45 GB opaque, 1.0 GB 8-bit with
# alpha, 1.4 GB 16-bit with alpha. Lower data.max_pixels where a decode worker has less to spare.
DEFAULT_MAX_PIXELS = 64_000_000

# Format codes of image_format().
UNKNOWN, JPEG, PNG, GIF, BMP = 0, 1, 2, 3, 4
FORMAT_NAMES = {UNKNOWN: "unknown", JPEG: "JPEG", PNG: "PNG", GIF: "GIF", BMP: "BMP"}
FORMAT_CODES = {name: code for code, name in FORMAT_NAMES.items()}
_HEADER_BYTES = 32


def parse_background(background: Background) -> tuple[int, int, int]:
    """An (r, g, b) tuple of ints in 0..255 from ``"white"``, ``"black"`` or ``[r, g, b]``."""
    if isinstance(background, str):
        if background not in BACKGROUNDS:
            raise ArgumentError(
                f"Unknown background {background!r}; expected 'white', 'black' or [r, g, b] in 0..255.",
                argument="background",
            )
        return BACKGROUNDS[background]
    values = tuple(background) if isinstance(background, (list, tuple, np.ndarray)) else None
    if (
        values is None
        or len(values) != 3
        or not all(isinstance(v, numbers.Integral) and not isinstance(v, bool) and 0 <= v <= 255 for v in values)
    ):
        raise ArgumentError(
            f"background must be 'white', 'black' or [r, g, b] with integers in 0..255; got {background!r}.",
            argument="background",
        )
    return tuple(int(v) for v in values)


def _header(encoded):
    """The first 32 bytes of ``encoded`` (zero-padded) as int32 values; works on a batch of strings too."""
    padded = tf.strings.substr(tf.strings.join([encoded, "\0" * _HEADER_BYTES]), 0, _HEADER_BYTES)
    return tf.cast(tf.io.decode_raw(padded, tf.uint8), tf.int32)


# Magic numbers of the formats decode_rgb reads; one table for the graph and the host-side scan.
_SIGNATURES = ((b"\xff\xd8\xff", JPEG), (b"\x89PNG\r\n\x1a\n", PNG), (b"GIF87a", GIF), (b"GIF89a", GIF), (b"BM", BMP))


def _starts_with(header, signature):
    return tf.reduce_all(tf.equal(header[..., : len(signature)], list(signature)), axis=-1)


@tf.autograph.experimental.do_not_convert
def image_format(encoded: tf.Tensor) -> tf.Tensor:
    """The format code (JPEG, PNG, GIF, BMP or UNKNOWN) of encoded image bytes, from the magic number."""
    header = _header(encoded)
    code = tf.fill(tf.shape(header)[:-1], UNKNOWN)
    for signature, value in _SIGNATURES:
        code = tf.where(_starts_with(header, signature), value, code)
    return code


def _uint(header, offsets, little_endian):
    total = tf.zeros_like(header[..., 0], dtype=tf.int64)
    for position, offset in enumerate(offsets if little_endian else offsets[::-1]):
        total += tf.cast(header[..., offset], tf.int64) * (256**position)
    return total


def _fixed_header_size(encoded, code):
    """(height, width) int64 from the fixed PNG / GIF / BMP header fields ((0, 0) for other formats)."""
    header = _header(encoded)
    png = tf.stack([_uint(header, [20, 21, 22, 23], False), _uint(header, [16, 17, 18, 19], False)], -1)
    gif = tf.stack([_uint(header, [8, 9], True), _uint(header, [6, 7], True)], -1)
    # BMP: int32 width and height; a negative height means rows stored top-down.
    bmp_width, bmp_height = _uint(header, [18, 19, 20, 21], True), _uint(header, [22, 23, 24, 25], True)
    signed = lambda value: tf.where(value >= 2**31, value - 2**32, value)
    bmp = tf.stack([tf.abs(signed(bmp_height)), tf.abs(signed(bmp_width))], -1)
    size = tf.zeros_like(png)
    for format_code, format_size in ((PNG, png), (GIF, gif), (BMP, bmp)):
        size = tf.where(tf.equal(code, format_code)[..., None], format_size, size)
    return size


# Where _gif_first_image stands: at a block, in an extension's or the image's sub-blocks, done, or lost.
_AT_BLOCK, _IN_EXTENSION, _IN_IMAGE, _DONE, _DAMAGED = range(5)
_GIF_RUN_STEPS = 64  # steps of _gif_first_image's first phase (runs of equal sub-blocks)
_GIF_BLOCK_STEPS = 1024  # steps of its second phase (one block, sub-block chain or terminator each)
_GIF_RUN = 65536  # sub-blocks of one size skipped by one strided read (64 steps: 1 GB of 255-byte ones)


@tf.function(input_signature=[tf.TensorSpec([], tf.string)], autograph=False)
def _gif_first_image(encoded):
    """(found, (top, left, height, width) int64, start, end) of a GIF's first image, walking its blocks in order.

    From the end of the global colour table: an extension (21, a label, sub-blocks) is
    skipped; the first image descriptor (2C, at ``start``) is read; its local colour
    table, LZW code size and sub-blocks are skipped, and ``end`` is the byte after their
    00 terminator.
    Sub-block chains are sequential, so this is a ``tf.while_loop``; one step skips a
    whole run of equal-sized sub-blocks (encoders write 255-byte ones) by one strided
    read, so a usual GIF takes a handful of steps. A GIF still unwalked after
    ``_GIF_RUN_STEPS`` steps (many small sub-blocks) is walked again from there with
    a table of every chain's terminator (pointer doubling: log2(len) gathers over the
    bytes), where one step is one block; so the cost is bounded by the file size
    whatever its bytes. ``found`` is False when a byte is neither an extension nor an
    image where a block must start, the data ends first (truncated), or the walk needs
    more than ``_GIF_RUN_STEPS + _GIF_BLOCK_STEPS`` steps. A function, so eager
    callers run the loop as a graph too.
    """
    size = tf.strings.length(encoded)
    # Zero padding: a chain that runs off the end stops at a 00 beyond ``size``, which marks it truncated.
    data = tf.io.decode_raw(tf.strings.join([encoded, "\0" * 16]), tf.uint8)  # uint8: 1 byte a byte
    last = tf.size(data) - 1
    byte = lambda index: tf.cast(tf.gather(data, tf.minimum(index, last)), tf.int32)
    u16 = lambda index: tf.cast(byte(index) + 256 * byte(index + 1), tf.int64)
    table = lambda flags: tf.where(flags >= 128, 3 * tf.bitwise.left_shift(2, flags % 8), 0)

    def run_end(position, value, at_block):
        # The first size byte after a run of sub-blocks of ``value`` bytes each (a no-op stride off a chain).
        stride = tf.where(at_block | tf.equal(value, 0), last + 1, value + 1)
        run = data[position : tf.minimum(position + _GIF_RUN * stride, last + 1) : stride]
        same = tf.concat([tf.cast(tf.equal(run, tf.cast(value, tf.uint8)), tf.int32), [0]], 0)
        return position + tf.cast(tf.argmin(same, output_type=tf.int32), tf.int32) * stride

    def step(position, state, descriptor, chain_next):
        value = byte(position)
        at_block = tf.equal(state, _AT_BLOCK)
        extension, image = at_block & tf.equal(value, 0x21), at_block & tf.equal(value, 0x2C)
        chain_end = ~at_block & tf.equal(value, 0)
        # An image: 10 descriptor bytes, its local colour table, the LZW code size, then sub-blocks.
        moved = tf.where(
            extension,
            position + 2,
            tf.where(
                image,
                position + 11 + table(byte(position + 9)),
                tf.where(chain_end, position + 1, chain_next(position, value, at_block)),
            ),
        )
        state = tf.where(
            extension,
            _IN_EXTENSION,
            tf.where(
                image,
                _IN_IMAGE,
                tf.where(
                    chain_end,
                    tf.where(tf.equal(state, _IN_EXTENSION), _AT_BLOCK, _DONE),
                    tf.where(at_block, _DAMAGED, state),
                ),
            ),
        )
        state = tf.where(tf.not_equal(state, _DONE) & (moved >= size), _DAMAGED, state)
        descriptor = tf.where(
            image,
            tf.stack(
                [
                    u16(position + 3),
                    u16(position + 1),
                    u16(position + 7),
                    u16(position + 5),
                    tf.cast(position, tf.int64),
                ]
            ),
            descriptor,
        )
        return moved, state, descriptor

    def walk(walked, chain_next, steps):
        return tf.while_loop(
            lambda position, state, descriptor: state < _DONE,
            lambda *walked: step(*walked, chain_next),
            walked,
            maximum_iterations=steps,
        )

    def terminators():
        # jumps[i]: where the chain through size byte i ends (its 00), after log2(len) doublings.
        indices = tf.range(last + 1)
        jumps = tf.where(tf.equal(data, 0), indices, tf.minimum(indices + tf.cast(data, tf.int32) + 1, last))
        rounds = tf.cast(tf.math.ceil(tf.math.log(tf.cast(last + 2, tf.float32)) / np.log(2.0)), tf.int32) + 1
        return tf.while_loop(
            lambda i, jumps: i < rounds, lambda i, jumps: (i + 1, tf.gather(jumps, jumps)), (0, jumps)
        )[1]

    start = 13 + table(byte(10))
    walked = walk(
        (start, tf.where(start < size, _AT_BLOCK, _DAMAGED), tf.zeros([5], tf.int64)), run_end, _GIF_RUN_STEPS
    )

    def table_walk():
        jumps = terminators()
        chain_end = lambda position, value, at_block: tf.gather(jumps, tf.minimum(position, last))
        return walk(walked, chain_end, _GIF_BLOCK_STEPS)

    position, state, descriptor = tf.cond(walked[1] < _DONE, table_walk, lambda: walked)
    return tf.equal(state, _DONE), descriptor[:4], tf.cast(descriptor[4], tf.int32), position


def _gif_size(encoded):
    """(found, (height, width), first image's start, its end) of a GIF: the screen grown to hold the first image.

    The first image may be larger than the screen or lie partly outside it (a 1 x 1
    screen can hold a 9000 x 9000 frame, which the decoder allocates whole), so the
    size checked is the bounding box of both. Later frames are never decoded
    (:func:`_first_gif_frame`), so they cost nothing. Not found (damaged data): the screen.
    """
    screen = _fixed_header_size(encoded, GIF)
    found, descriptor, start, end = _gif_first_image(encoded)
    extent = tf.maximum(screen, descriptor[:2] + descriptor[2:])
    return found, tf.where(found, extent, screen), start, end


def _first_gif_frame(encoded, background, start, end):
    """GIF bytes cut after the first image's data, trailer (3B) added, transparency drawn as ``background``.

    TensorFlow's decoder reads every frame and sizes its output by the largest, so 20
    frames of 4000 x 4000 in 259 KB cost 1.2 GB; PIL and the paper's loader use the first.
    The transparent colour is looked for before the first image (``start``) and patched
    in the bytes up to its largest local colour table, so that byte work does not grow
    with the image data.
    """
    head = tf.minimum(start + 10 + 768, end)
    patched = _gif_transparency_to_background(tf.strings.substr(encoded, 0, head), background, start)
    return tf.strings.join([patched, tf.strings.substr(encoded, head, end - head), "\x3b"])


@tf.autograph.experimental.do_not_convert
def header_image_size(encoded: tf.Tensor) -> tf.Tensor:
    """(height, width) int64 of encoded image bytes as their header declares, without decoding.

    PNG and BMP: the fixed header fields; JPEG: ``tf.io.extract_jpeg_shape`` (which
    reads only the markers); GIF: the logical screen grown to hold the first image,
    found by walking the blocks up to it (what :func:`decode_rgb` checks and decodes;
    a damaged GIF gives its screen). Unknown formats give (0, 0); a damaged JPEG
    header raises ``InvalidArgumentError`` as decoding would.
    """
    code = image_format(encoded)
    return tf.switch_case(
        tf.where(tf.equal(code, JPEG), 0, tf.where(tf.equal(code, GIF), 1, 2)),
        [
            lambda: tf.cast(tf.io.extract_jpeg_shape(encoded)[:2], tf.int64),
            lambda: _gif_size(encoded)[1],
            lambda: _fixed_header_size(encoded, code),
        ],
    )


def _check_pixels(size, max_pixels):
    size = tf.cast(size, tf.int64)
    message = tf.strings.format(
        "The image header declares {} x {} pixels (height x width), above max_pixels = "
        + str(int(max_pixels))
        + " (data.max_pixels); the image is not decoded. Resize it, or raise max_pixels if it is genuine.",
        (size[0], size[1]),
    )
    return tf.debugging.Assert(size[0] * size[1] <= int(max_pixels), [message])


def _composite(rgba, background, scale):
    """RGB uint8 of a (H, W, 4) image composited onto ``background``; ``scale`` = the channels' maximum.

    An opaque image (every alpha at ``scale``) skips the alpha arithmetic: its rounded
    RGB is what compositing gives (x + (rgb - x) * 1 = rgb), at a third of the memory.
    """

    def opaque():
        return tf.cast(tf.round(tf.cast(rgba[..., :3], tf.float32) * (255.0 / scale)), tf.uint8)

    def composite():
        rgb = tf.cast(rgba[..., :3], tf.float32) * (255.0 / scale)
        alpha = tf.cast(rgba[..., 3:], tf.float32) * (1.0 / scale)
        background_values = tf.constant(background, tf.float32)
        # rgb * alpha + background * (1 - alpha), with one product fewer.
        composited = background_values + (rgb - background_values) * alpha
        return tf.cast(tf.round(tf.clip_by_value(composited, 0.0, 255.0)), tf.uint8)

    return tf.cond(tf.reduce_all(tf.equal(rgba[..., 3], int(scale))), opaque, composite)


def _composite_8_bit(rgba, background):
    """RGB uint8 of a uint8 (H, W, 4) image composited onto ``background``, in exact integer arithmetic.

    round((v * a + b * (255 - a)) / 255) as floor((... + 127) / 255) in uint16: the
    numerator is at most 255 * 255 + 127 < 2**16, and it never ends in exactly .5
    (2 * (v - b) * a = 255 * odd has no solution), so this is the float compositing of
    :func:`_composite` without its float32 copies (16 bytes a pixel). An opaque image
    (every alpha 255, as any PNG without alpha or ``tRNS``) is its RGB channels.
    """

    def composite():
        rgb, alpha = tf.cast(rgba[..., :3], tf.uint16), tf.cast(rgba[..., 3:], tf.uint16)
        covered = tf.constant(background, tf.uint16) * (255 - alpha)
        return tf.cast((rgb * alpha + covered + 127) // 255, tf.uint8)

    return tf.cond(tf.reduce_all(tf.equal(rgba[..., 3], 255)), lambda: rgba[..., :3], composite)


def _decode_png(encoded, background):
    """uint8 RGB of any PNG: grey, palette, RGB, with alpha or ``tRNS``, 8 or 16 bits.

    Decoded as RGBA (a missing alpha is opaque; ``tRNS`` becomes alpha) and composited
    onto the background. A PNG of 8 bits or fewer a channel (byte 24 of the header)
    is decoded as uint8 and composited in integers (:func:`_composite_8_bit`); a
    16-bit one as uint16, composited in float32 and rounded to 8 bits (x / 257), not
    truncated to the high byte.
    """
    return tf.cond(
        tf.equal(_header(encoded)[24], 16),
        lambda: _composite(tf.io.decode_png(encoded, channels=4, dtype=tf.uint16), background, 65535.0),
        lambda: _composite_8_bit(tf.io.decode_png(encoded, channels=4), background),
    )


def _gif_transparency_to_background(encoded, background, search_end):
    """GIF bytes whose first frame's transparent colour is drawn as ``background`` (transparency flag cleared).

    TensorFlow's GIF decoder leaves transparent pixels black. The first frame's Graphic
    Control Extension is the first run of bytes with its fixed layout (21 F9 04, four
    bytes, a 00 terminator, then an image descriptor 2C or another extension 21) between
    the global colour table and ``search_end`` (where the first image starts); its
    transparent colour is rewritten in the local colour table of the image descriptor
    that follows it, else in the global one. Found by
    vectorised byte comparisons, without loops, so the decode graph stays free of
    control flow.
    """
    data = tf.cast(tf.io.decode_raw(tf.strings.join([encoded, "\0" * 24]), tf.uint8), tf.int32)
    size = tf.strings.length(encoded)
    start = tf.where(data[10] >= 128, 13 + 3 * tf.bitwise.left_shift(2, data[10] % 8), 13)
    positions = tf.range(tf.size(data) - 24)
    at = lambda offset: data[offset : tf.size(data) - 24 + offset]  # the bytes at each position + offset
    control_block = (
        (positions >= start)
        & (positions < search_end)
        & tf.equal(at(0), 0x21)
        & tf.equal(at(1), 0xF9)
        & tf.equal(at(2), 4)
        & tf.equal(at(7), 0)
        & (tf.equal(at(8), 0x2C) | tf.equal(at(8), 0x21))
    )
    found = tf.reduce_any(control_block)
    control = tf.cast(tf.argmax(tf.cast(control_block, tf.int32)), tf.int32)
    image = control + 8
    local_table = tf.equal(data[image], 0x2C) & (data[image + 9] >= 128)
    table = tf.where(local_table, image + 10, tf.where(data[10] >= 128, 13, -1))
    entry = table + 3 * data[control + 6]
    patch = found & tf.equal(data[control + 3] % 2, 1) & (table >= 0) & (entry + 2 < size)
    # Rewrite four bytes (the flag, then the colour's r, g, b); unchanged when there is nothing to patch.
    indices = tf.stack([control + 3, entry, entry + 1, entry + 2])
    indices = tf.where(patch, indices, tf.range(4))
    values = tf.where(patch, tf.stack([data[control + 3] - 1, *background]), data[:4])
    order = tf.argsort(indices)
    indices, values = tf.gather(indices, order), tf.gather(values, order)
    bounds = tf.concat([[-1], indices, [size]], 0)
    pieces = [tf.strings.substr(encoded, bounds[i] + 1, bounds[i + 1] - bounds[i] - 1) for i in range(5)]
    byte_strings = tf.constant([bytes([value]) for value in range(256)])
    patched = [pieces[0]]
    for i in range(4):
        patched += [tf.gather(byte_strings, values[i]), pieces[i + 1]]
    return tf.strings.join(patched)


def _refuse_unknown_format(encoded):
    length = tf.strings.length(encoded)
    message = tf.where(
        tf.equal(length, 0),
        "The image is empty (0 bytes).",
        tf.strings.format(
            "Not a JPEG, PNG, GIF or BMP image: it is {} bytes long and starts with {}.",
            (length, _header(encoded)[:8]),
            summarize=8,
        ),
    )
    with tf.control_dependencies([tf.debugging.Assert(False, [message])]):
        return tf.zeros([1, 1, 3], tf.uint8)


def read_regular_file(path: str | os.PathLike, count: int | None = None) -> bytes:
    """The bytes of the regular file ``path`` (the first ``count``, or all); anything else is refused unopened.

    ``os.stat`` first (opening a FIFO blocks until a writer comes, and ``/dev/zero``
    never ends), then a non-blocking open whose ``fstat`` must still show a regular
    file, in case the path was swapped in between.
    """
    path = os.fspath(path)
    if not stat.S_ISREG(os.stat(path).st_mode):
        raise ValueError(
            f"{path!r} is not a regular file (a FIFO, device, socket or folder); "
            "only image files are read: remove it or point to the file itself."
        )
    descriptor = os.open(path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0))
    try:
        status = os.fstat(descriptor)
        if not stat.S_ISREG(status.st_mode):
            raise ValueError(f"{path!r} stopped being a regular file while it was opened; only image files are read.")
        with os.fdopen(os.dup(descriptor), "rb") as handle:
            return handle.read(-1 if count is None else count)
    finally:
        os.close(descriptor)


def source_formats(sources: Sequence[str | bytes] | np.ndarray, from_files: bool = True) -> tuple[str, ...]:
    """The format names (``"JPEG"``, ``"PNG"``, ``"GIF"``, ``"BMP"``, ``"unknown"``) among image sources.

    Read from the first bytes only (file paths, or encoded bytes when ``from_files`` is
    False). A split that knows its formats gets a decoder with only those branches.
    """
    found = set()
    for source in sources:
        if from_files:
            head = read_regular_file(source, 8)
        else:
            head = bytes(source[:8])
        found.add(FORMAT_NAMES[next((code for signature, code in _SIGNATURES if head.startswith(signature)), UNKNOWN)])
    return tuple(sorted(found))


def _decoder(code, encoded, background, max_pixels):
    """The decode of one format (JPEG, PNG, GIF, BMP, UNKNOWN), with its header size check."""
    if code == UNKNOWN:
        return _refuse_unknown_format(encoded)
    checks = []
    if code == GIF:
        found, size, start, end = _gif_size(encoded)
        checks.append(
            tf.debugging.Assert(
                found,
                [
                    tf.strings.format(
                        "The GIF ({} bytes) is truncated or damaged: its blocks end before the first image's data does; "
                        "re-save it.",
                        tf.strings.length(encoded),
                    )
                ],
            )
        )
    elif max_pixels is not None:
        size = tf.io.extract_jpeg_shape(encoded)[:2] if code == JPEG else _fixed_header_size(encoded, code)
    if max_pixels is not None:
        checks.append(_check_pixels(size, max_pixels))
    with tf.control_dependencies(checks):
        if code == JPEG:
            return tf.io.decode_jpeg(encoded, channels=3)
        if code == PNG:
            return _decode_png(encoded, background)
        if code == GIF:
            return tf.io.decode_gif(_first_gif_frame(encoded, background, start, end))[0]
        return tf.io.decode_bmp(encoded, channels=3)


@tf.autograph.experimental.do_not_convert
def decode_rgb(
    encoded: tf.Tensor,
    background: Background = DEFAULT_BACKGROUND,
    max_pixels: int | None = DEFAULT_MAX_PIXELS,
    formats: Sequence[str] | None = None,
) -> tf.Tensor:
    """Decode JPEG (RGB, grayscale, CMYK), PNG, GIF (first frame only) or BMP bytes to uint8 RGB (H, W, 3).

    Transparent pixels are composited onto ``background`` (see the module docstring);
    BMP alpha is not used (most 32-bit BMPs leave it zero). The header is checked
    against ``max_pixels`` before decoding (None: no limit).

    ``formats``: the format names the caller expects (see :func:`source_formats`), or
    None for any. Every branch of a data-dependent choice costs time per image in a
    ``tf.data`` map even when it is not taken (about 2.5 us per graph node here), so
    a split of only JPEGs decodes without the PNG / GIF / BMP machinery; an image of
    another format then fails in the decode op, whose error names both formats.

    Raises:
        tf.errors.InvalidArgumentError: empty, not one of these formats (WebP and JPEG XL
            are refused: their size is not read from the header), not one of
            ``formats``, corrupt or truncated data, a GIF whose blocks cannot be walked to
            the end of its first image, or more than ``max_pixels`` pixels (a GIF: its
            screen grown to hold its first image; see :func:`header_image_size`).
    """
    background = parse_background(background)
    expected = sorted({FORMAT_CODES[name] for name in formats}) if formats is not None else None
    if expected is not None and len(expected) == 1:
        # An image of another format fails in the decode op ("Trying to decode PNG format using DecodeJpeg").
        image = _decoder(expected[0], encoded, background, max_pixels)
    else:
        code = image_format(encoded)
        branches = [lambda code=code_: _decoder(code, encoded, background, max_pixels) for code_ in FORMAT_NAMES]
        image = tf.switch_case(code, branches)
    image.set_shape([None, None, 3])
    return image


def _sample_crop_window(shape, scale, ratio, seed):
    """(begin, size) of a random crop box, as torchvision's RandomResizedCrop draws it."""
    arguments = dict(
        bounding_boxes=tf.constant([[[0.0, 0.0, 1.0, 1.0]]]),
        min_object_covered=0.0,
        aspect_ratio_range=ratio,
        area_range=scale,
        max_attempts=10,
        use_image_if_no_bounding_boxes=True,
    )
    if seed is None:
        begin, size, _ = tf.image.sample_distorted_bounding_box(shape, **arguments)
    else:
        begin, size, _ = tf.image.stateless_sample_distorted_bounding_box(shape, seed=seed, **arguments)
    return begin, size


@tf.autograph.experimental.do_not_convert
def resize_bilinear(image: tf.Tensor, size: int | Sequence[int | tf.Tensor], antialias: bool = True) -> tf.Tensor:
    """Bilinear resize of an (H, W, C) image to ``size`` (int: square, or (height, width)); float32.

    ``antialias=True`` is PIL's (and so torchvision's, the paper's) bilinear resize:
    the kernel widens when shrinking. When neither side shrinks, that kernel is the
    plain bilinear one, so the much cheaper non-antialiased op is used and gives the
    same values (tested to float rounding). ``antialias=False`` is TensorFlow's
    default resize: about 4x cheaper when shrinking, with some aliasing.
    """
    size = [size, size] if isinstance(size, int) else size
    if antialias:
        grows = tf.reduce_all(tf.shape(image)[:2] <= tf.convert_to_tensor(size))
        resized = tf.cond(
            grows,
            lambda: tf.image.resize(image, size, method="bilinear"),
            lambda: tf.image.resize(image, size, method="bilinear", antialias=True),
        )
    else:
        resized = tf.image.resize(image, size, method="bilinear")
    resized.set_shape([tf.get_static_value(side) for side in size] + [image.shape[-1]])
    return resized


@tf.autograph.experimental.do_not_convert
def random_resized_crop(
    image: tf.Tensor,
    size: int = 224,
    scale: tuple[float, float] = (0.08, 1.0),
    ratio: tuple[float, float] = (3 / 4, 4 / 3),
    seed: tf.Tensor | None = None,
    antialias: bool = True,
) -> tf.Tensor:
    """Crop a random area fraction ``scale`` and aspect ``ratio`` of the image, resize to ``size``.

    As torchvision's ``RandomResizedCrop`` used by the paper: the crop box is drawn
    by ``tf.image.sample_distorted_bounding_box`` (falls back to the whole image after
    its attempts fail). ``seed`` is a stateless seed of shape (2,) or None. For
    ``antialias`` see :func:`resize_bilinear`.
    """
    begin, crop_size = _sample_crop_window(tf.shape(image), scale, ratio, seed)
    return resize_bilinear(tf.slice(image, begin, crop_size), size, antialias)


def _flip(image, seed):
    if seed is None:
        return tf.image.random_flip_left_right(image)
    return tf.image.stateless_random_flip_left_right(image, seed=tf.random.experimental.stateless_fold_in(seed, 1))


def _flip_and_resize(crop, size, seed, antialias):
    # Flipping commutes with the (symmetric) resize; flipping the uint8 crop moves less memory.
    resized = resize_bilinear(_flip(crop, seed), size, antialias)
    return tf.clip_by_value(resized, 0.0, 255.0)


@tf.autograph.experimental.do_not_convert
def train_preprocess(
    image: tf.Tensor, size: int = 224, seed: tf.Tensor | None = None, antialias: bool = True
) -> tf.Tensor:
    """Random resized crop to ``size`` and a random horizontal flip; float32 in [0, 255].

    ``antialias``: see :func:`resize_bilinear` (True = the paper's PIL resize).
    """
    seed = None if seed is None else tf.convert_to_tensor(seed, tf.int64)
    begin, crop_size = _sample_crop_window(tf.shape(image), (0.08, 1.0), (3 / 4, 4 / 3), seed)
    return _flip_and_resize(tf.slice(image, begin, crop_size), size, seed, antialias)


@tf.autograph.experimental.do_not_convert
def train_image_from_bytes(
    encoded: tf.Tensor,
    size: int = 224,
    seed: tf.Tensor | None = None,
    antialias: bool = True,
    background: Background = DEFAULT_BACKGROUND,
    max_pixels: int | None = DEFAULT_MAX_PIXELS,
    formats: Sequence[str] | None = None,
) -> tf.Tensor:
    """:func:`train_preprocess` of encoded bytes; JPEGs decode only the crop window.

    Same crop box and flip as ``train_preprocess(decode_rgb(encoded, background, max_pixels), size, seed)``
    (JPEG decoding of a window may differ from a full decode by rounding), at a
    fraction of the decoding cost. ``formats``: as for :func:`decode_rgb`.
    """
    seed = None if seed is None else tf.convert_to_tensor(seed, tf.int64)

    def jpeg_window():
        shape = tf.io.extract_jpeg_shape(encoded)
        if max_pixels is not None:
            with tf.control_dependencies([_check_pixels(shape[:2], max_pixels)]):
                shape = tf.identity(shape)
        begin, crop_size = _sample_crop_window(shape, (0.08, 1.0), (3 / 4, 4 / 3), seed)
        window = tf.stack([begin[0], begin[1], crop_size[0], crop_size[1]])
        return _flip_and_resize(tf.image.decode_and_crop_jpeg(encoded, window, channels=3), size, seed, antialias)

    def other_format():
        others = None if formats is None else [name for name in formats if name != "JPEG"]
        return train_preprocess(decode_rgb(encoded, background, max_pixels, others), size, seed, antialias)

    if formats is not None and tuple(formats) == ("JPEG",):
        image = jpeg_window()
    elif formats is not None and "JPEG" not in formats:
        image = other_format()
    else:
        image = tf.cond(tf.io.is_jpeg(encoded), jpeg_window, other_format)
    image.set_shape([size, size, 3])
    return image


def eval_resize(size: int) -> int:
    """The shorter side before the centre crop: 256 for 224, in the same proportion for other sizes."""
    return round(size * 256 / 224)


@tf.autograph.experimental.do_not_convert
def eval_preprocess(image: tf.Tensor, resize: int | None = None, size: int = 224, antialias: bool = True) -> tf.Tensor:
    """Resize the shorter side to ``resize`` (default :func:`eval_resize` of ``size``), take the centre crop."""
    resize = eval_resize(size) if resize is None else resize
    shape = tf.cast(tf.shape(image)[:2], tf.float32)
    scale = float(resize) / tf.reduce_min(shape)
    new_shape = tf.cast(tf.round(shape * scale), tf.int32)
    new_shape = tf.maximum(new_shape, size)
    resized = resize_bilinear(image, tf.unstack(new_shape), antialias)
    top = (new_shape[0] - size) // 2
    left = (new_shape[1] - size) // 2
    crop = resized[top : top + size, left : left + size, :]
    crop.set_shape([size, size, 3])
    return tf.clip_by_value(crop, 0.0, 255.0)
