"""GIF bytes built by hand for the decoder tests: frames anywhere, any size, sub-blocks of any length."""

import io
import struct


def lzw(indices, min_code_size=2):
    """GIF LZW of pixel indices as literal codes only (a clear code first, the end code last)."""
    clear, end = 1 << min_code_size, (1 << min_code_size) + 1
    width, next_free = min_code_size + 1, end + 1
    bits, value, count = bytearray(), 0, 0
    for position, code in enumerate([clear] + list(indices) + [end]):
        value |= code << count
        count += width
        if 2 <= position <= len(indices):  # the decoder adds an entry after every code but the first literal
            next_free += 1
            width += next_free == 1 << width
        while count >= 8:
            bits.append(value & 0xFF)
            value >>= 8
            count -= 8
    if count:
        bits.append(value & 0xFF)
    return bytes(bits)


def sub_blocks(data, sizes=(255,)):
    """``data`` as a sub-block chain with the 00 terminator; sub-block lengths cycle through ``sizes``."""
    chain, start, index = bytearray(), 0, 0
    while start < len(data):
        length = min(sizes[index % len(sizes)], len(data) - start)
        chain += bytes([length]) + data[start : start + length]
        start, index = start + length, index + 1
    return bytes(chain) + b"\x00"


def image_block(left, top, width, height, data, min_code_size=2, sizes=(255,)):
    """An image descriptor (no local table), the LZW code size and ``data`` (LZW bytes) as sub-blocks."""
    return (
        b"\x2c"
        + struct.pack("<HHHH", left, top, width, height)
        + b"\x00"
        + bytes([min_code_size])
        + sub_blocks(data, sizes)
    )


PALETTE = bytes([10, 20, 30, 200, 100, 50, 0, 0, 0, 255, 255, 255])  # colours 0..3 of a 4-colour global table


def gif(screen, blocks):
    """GIF89a with a ``screen`` (width, height), the 4-colour :data:`PALETTE`, ``blocks`` and the trailer."""
    return b"GIF89a" + struct.pack("<HH", *screen) + bytes([0x81, 0, 0]) + PALETTE + b"".join(blocks) + b"\x3b"


def frame(left, top, width, height, pixels, sizes=(255,)):
    """An image block of ``pixels`` (colour indices 0..3, row-major, width x height of them)."""
    assert len(pixels) == width * height
    return image_block(left, top, width, height, lzw(pixels), sizes=sizes)


def comment(text=b"x"):
    """A comment extension (21 FE) holding ``text``."""
    return b"\x21\xfe" + sub_blocks(text)


def pil_frame_data(image):
    """(min code size, LZW bytes) of the first image of a PIL-encoded GIF of ``image`` (a "P" image)."""
    buffer = io.BytesIO()
    image.save(buffer, "GIF")
    data = buffer.getvalue()
    position = 13 + (3 * (2 << (data[10] & 7)) if data[10] & 0x80 else 0)
    while data[position] == 0x21:
        position += 2
        while data[position]:
            position += data[position] + 1
        position += 1
    flags = data[position + 9]
    position += 10 + (3 * (2 << (flags & 7)) if flags & 0x80 else 0)
    min_code_size, position, lzw_bytes = data[position], position + 1, bytearray()
    while data[position]:
        lzw_bytes += data[position + 1 : position + 1 + data[position]]
        position += data[position] + 1
    return min_code_size, bytes(lzw_bytes)
