"""Peak memory of decoding one image with decode_rgb, measured in a fresh process (max RSS)."""

import io
import json
import os
import pathlib
import sys
import textwrap

import numpy as np
from PIL import Image

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))  # tests/, for `helpers` when run as a script
from helpers import quiet_env, run_python

# name -> (PIL mode, PIL format, save options); noise in the pixels, so no decoder can shortcut.
KINDS = {
    "PNG RGB 8-bit": ("RGB", "PNG", {"compress_level": 1}),
    "PNG RGBA 8-bit": ("RGBA", "PNG", {"compress_level": 1}),
    "PNG RGBA 16-bit": ("RGBA;16", "PNG", {}),
    "JPEG": ("RGB", "JPEG", {"quality": 90}),
    "GIF": ("P", "GIF", {}),
    "BMP": ("RGB", "BMP", {}),
}


def encoded_image(kind, side, seed=0):
    """Encoded bytes of a side x side image of ``kind`` (a key of KINDS) with random pixels."""
    mode, fmt, options = KINDS[kind]
    rng = np.random.default_rng(seed)
    if mode == "RGBA;16":
        import tensorflow as tf

        pixels = rng.integers(0, 65536, (side, side, 4), dtype=np.uint16)
        return tf.io.encode_png(pixels).numpy()
    pixels = rng.integers(0, 256, (side, side, 3 if mode != "RGBA" else 4), dtype=np.uint8)
    image = Image.fromarray(pixels)
    if mode == "P":
        image = image.quantize(256)
    buffer = io.BytesIO()
    image.save(buffer, format=fmt, **options)
    return buffer.getvalue()


_RUNNER = textwrap.dedent("""
    import json, resource, sys
    import tf_langdml
    import tensorflow as tf
    from tf_langdml.data.preprocessing import decode_rgb

    decode = tf.function(lambda data: tf.shape(decode_rgb(data, max_pixels=None)))
    small, large = open(sys.argv[1], "rb").read(), open(sys.argv[2], "rb").read()
    def status(field):
        with open("/proc/self/status") as lines:
            return next(int(line.split()[1]) * 1024 for line in lines if line.startswith(field + ":"))

    decode(tf.constant(small))  # traced, thread pools up: what stays is not the decode's
    large = tf.constant(large)
    # Reset the high-water mark (VmHWM, which getrusage's ru_maxrss reports) to the current RSS:
    # importing TensorFlow peaks above what a decode adds.
    with open("/proc/self/clear_refs", "w") as clear:
        clear.write("5")
    before = status("VmRSS")
    if len(sys.argv) > 3:  # an address-space limit: an allocation beyond it fails the decode
        limit = status("VmSize") + int(sys.argv[3])
        resource.setrlimit(resource.RLIMIT_AS, (limit, resource.RLIM_INFINITY))
    shape = decode(large).numpy().tolist()
    print(json.dumps({"shape": shape, "peak_bytes": status("VmHWM") - before,
                      "encoded_bytes": int(tf.strings.length(large))}))
""")


def measure(kind, side, folder):
    """{"shape", "peak_bytes", "encoded_bytes", "bytes_per_pixel"} of decoding a side x side ``kind`` image."""
    paths = []
    for name, size in (("small", 16), ("large", side)):
        paths.append(os.path.join(folder, f"{name}.bin"))
        with open(paths[-1], "wb") as handle:
            handle.write(encoded_image(kind, size))
    result = measure_file(paths[1], paths[0])
    return {**result, "bytes_per_pixel": result["peak_bytes"] / side**2}


def measure_file(path, warm_up=None, address_space=None):
    """{"shape", "peak_bytes", "encoded_bytes"} of decoding the image file ``path`` in a fresh process.

    ``warm_up``: a small image of the same format decoded first (default: a 2 x 2 PNG),
    so tracing and thread pools are not counted. ``address_space``: bytes of address
    space the decode may add (``RLIMIT_AS`` above the process's size before it), or None.
    """
    if warm_up is None:
        warm_up = path + ".warm_up.png"
        Image.new("RGB", (2, 2)).save(warm_up)
    limit = [] if address_space is None else [str(int(address_space))]
    done = run_python(_RUNNER, warm_up, path, *limit, env=quiet_env(TF_CPP_MIN_LOG_LEVEL="2"))
    return json.loads(done.stdout.strip().splitlines()[-1])


if __name__ == "__main__":  # python tests/data/decode_memory.py [side]: the table of docs/data.md
    import tempfile

    side = int(sys.argv[1]) if len(sys.argv) > 1 else 4000
    with tempfile.TemporaryDirectory() as folder:
        for kind in KINDS:
            result = measure(kind, side, folder)
            print(
                f"{kind:16s} {side}x{side}: encoded {result['encoded_bytes'] / 1e6:7.1f} MB, peak "
                f"{result['peak_bytes'] / 1e6:7.1f} MB = {result['bytes_per_pixel']:5.1f} B/px, "
                f"at 64 MP {result['bytes_per_pixel'] * 64e6 / 1e9:5.2f} GB",
                flush=True,
            )
