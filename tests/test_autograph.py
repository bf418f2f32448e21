"""Autograph rewrites none of the package's own graph code, and still rewrites the user's.

The decoding, the pipelines, the sampler, the mined and proxy losses, the language loss and the served
decoding are written with explicit ``tf.cond`` / ``tf.while_loop`` and are marked
``tf.autograph.experimental.do_not_convert`` (``autograph=False`` on their ``tf.function``s): rewriting
their source cost about 4.8 s of every training process's start (a tiny run: 18.4 s -> 13.6 s). What
calls into a user's code (the training step, the embedder's function in an export) is left to autograph.
"""

import json

import helpers
import numpy as np
import tensorflow as tf

from tf_langdml import keras
from tf_langdml.models import LanguageGuidedModel

# Run in a fresh interpreter: autograph caches each conversion per process, and the test workers have run all of
# this before. The private hook only observes what autograph converts; nothing in the package uses it.
RECORD_CONVERSIONS = """
import json, pathlib, sys, tempfile
import numpy as np
import tf_langdml
from tensorflow.python.autograph.impl import api

converted = []
original = api._convert_actual


def recording(entity, program_ctx):
    converted.append(f"{getattr(entity, '__module__', '?')}:{getattr(entity, '__qualname__', '?')}")
    return original(entity, program_ctx)


api._convert_actual = recording
sys.path.insert(0, sys.argv[1])
import helpers
from tf_langdml.data import load_image_folder, make_eval_dataset, make_train_dataset
from tf_langdml.export import export_embedder
from tf_langdml.gallery import Gallery
from tf_langdml.losses import build_dml_loss

root = pathlib.Path(tempfile.mkdtemp())
data = load_image_folder(helpers.write_colour_folder(root / "folder", num_classes=4, per_class=4))
train = make_train_dataset(data.train_split, batch_size=4, examples_per_class=2, seed=0, image_size=16)
images, labels = next(iter(train))
next(iter(make_eval_dataset(data.test_split, batch_size=4, image_size=16)))
table = np.random.default_rng(0).standard_normal((2, 1, 6)).astype("float32")
for loss in ("margin", "proxy_anchor"):
    model = helpers.tiny_guided_model(table, dml_loss=build_dml_loss(loss), language_weight=1.0)
    model.train_on_batch(images, labels)
gallery = Gallery(np.eye(8, dtype="float32")[:3], ["a", "b", "c"], ["x", "y", "x"])
export_embedder(model.embedder, root / "export", gallery=gallery)
print(json.dumps(sorted({name for name in converted if name.startswith("tf_langdml")})))
"""

# What calls a user's code, or TF-Similarity's (which needs autograph: `if tf.rank(labels) == 1`), stays converted.
LEFT_TO_AUTOGRAPH = (
    "tf_langdml.models.",
    "tf_langdml.losses.base:",
    "tf_langdml.losses.s2sd:",
    "tf_langdml.inference:",
)
WRITTEN_FOR_GRAPHS = (
    "tf_langdml.data.",
    "tf_langdml.losses.tuple_losses:",
    "tf_langdml.losses.proxy_losses:",
    "tf_langdml.losses.miners:",
    "tf_langdml.losses.language_matching:",
    "tf_langdml.top_k:",
)


def test_the_package_s_graph_code_is_not_rewritten_by_autograph():
    result = helpers.run_python(RECORD_CONVERSIONS, helpers.ROOT / "tests")
    converted = json.loads(result.stdout.strip().splitlines()[-1])
    assert not [name for name in converted if name.startswith(WRITTEN_FOR_GRAPHS)], converted
    # The served module: only the embedder's function is converted (it calls the user's model).
    assert [name for name in converted if name.startswith("tf_langdml.serving_modules:")] == [
        "tf_langdml.serving_modules:EmbedderModule._embed"
    ], converted
    # The training step is still converted, so a user's code inside it gets autograph (next test).
    assert any(name.startswith(LEFT_TO_AUTOGRAPH) for name in converted), converted


class PythonBranchOnATensor(keras.layers.Layer):
    """A user's layer that needs autograph: a Python ``if`` on a tensor."""

    def call(self, inputs):
        if tf.reduce_sum(inputs) > 0:
            return inputs * 2.0
        return inputs


def test_a_user_layer_that_needs_autograph_trains_inside_the_step():
    keras.utils.set_random_seed(0)
    inner = helpers.tiny_embedder()
    inputs = keras.Input((16, 16, 3))
    embedder = keras.Model(inputs, inner(PythonBranchOnATensor()(inputs)))
    model = LanguageGuidedModel(embedder, None)
    model.compile(optimizer="sgd", dml_loss="margin", num_classes=2)
    images, labels = helpers.synthetic_problem(num_classes=2, per_class=4)
    logs = model.train_on_batch(images, labels, return_dict=True)
    assert np.isfinite(logs["loss"])
