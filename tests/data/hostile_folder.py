"""A class folder holding every entry a folder walk must not open, and a runner that walks it in a limited process."""

import json
import os
import textwrap

from helpers import quiet_env, run_python
from PIL import Image

# Entries of root/a/ that are not regular image files, by the kind the skip warning counts them as.
HOSTILE = {"fifo.png": "FIFO", "zero.png": "device", "dangling.png": "dangling link", "loop.png": "link loop"}
NOT_UTF8_NAME = b"\xff.png"


def make_hostile_folder(root):
    """root/a and root/b with two 8 x 8 PNGs each, plus every hostile entry in root/a and again in root/a/gallery.

    Returns those two folders.
    """
    for name in ("a", "b"):
        os.makedirs(os.path.join(root, name))
        for index in range(2):
            Image.new("RGB", (8, 8), (index, 9, 9)).save(os.path.join(root, name, f"{index}.png"))
    folders = [os.path.join(root, "a"), os.path.join(root, "a", "gallery")]
    os.makedirs(folders[1])
    for hostile in folders:
        os.mkfifo(os.path.join(hostile, "fifo.png"))
        os.symlink("/dev/zero", os.path.join(hostile, "zero.png"))
        os.symlink(os.path.join(root, "missing.png"), os.path.join(hostile, "dangling.png"))
        os.symlink("loop.png", os.path.join(hostile, "loop.png"))
        Image.new("RGB", (8, 8)).save(os.path.join(os.fsencode(hostile), NOT_UTF8_NAME), format="PNG")
    return folders


_RUNNER = textwrap.dedent("""
    import json, resource, sys, warnings
    import tf_langdml.data, tf_langdml.gallery
    import tensorflow as tf

    tf.io.decode_png(tf.io.encode_png(tf.zeros([2, 2, 3], tf.uint8)))  # thread pools exist before the limit
    with open("/proc/self/status") as status:
        virtual = next(int(line.split()[1]) * 1024 for line in status if line.startswith("VmSize:"))
    # A read of /dev/zero fills this at once; the walk itself needs a few MB.
    resource.setrlimit(resource.RLIMIT_AS, (virtual + (1 << 30), resource.RLIM_INFINITY))
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        value = eval(sys.argv[1])
    print(json.dumps({"value": value, "warnings": [str(warning.message) for warning in caught]}))
""")


def walk_in_limited_process(expression, timeout=120):
    """The JSON-able ``expression`` (``load_image_folder`` or ``folder_items`` of a hostile folder) and its warnings.

    Run in a fresh process under ``timeout`` seconds (an opened FIFO would block for
    ever) and an address-space limit of 1 GiB above what TensorFlow holds after start
    (a read of /dev/zero never ends). Raises AssertionError with the process's error.
    """
    try:
        done = run_python(_RUNNER, expression, timeout=timeout, env=quiet_env(TF_CPP_MIN_LOG_LEVEL="2"))
    except AssertionError as error:  # a timeout here means a FIFO was opened
        raise AssertionError(f"the walk of {expression} failed or did not end (a FIFO opened?): {error}") from None
    return json.loads(done.stdout.strip().splitlines()[-1])
