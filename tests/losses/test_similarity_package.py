"""TF-Similarity is imported without its plotting subpackage, and that subpackage still works when read.

The first check runs in a fresh interpreter: what a new process imports is the point, and the test workers
have imported TF-Similarity already.
"""

import json
import sys

import helpers

from tf_langdml.losses.similarity_package import DEFERRED_SUBPACKAGE, defer_plotting_subpackage, similarity_losses

DEFERRED_THEN_READ = """
import json, sys
from tf_langdml.losses import build_dml_loss
build_dml_loss("multisimilarity")
import tensorflow_similarity as tfsim
after_build = sorted(name for name in ("umap", "bokeh", "pynndescent", "sklearn") if name in sys.modules)
stand_in = sys.modules["tensorflow_similarity.visualization"]
same_object = tfsim.visualization is stand_in
projector = tfsim.visualization.projector
from tensorflow_similarity.visualization import confusion_matrix
print(json.dumps({
    "after_build": after_build,
    "same_object": same_object,
    "projector_module": projector.__module__,
    "confusion_matrix_module": confusion_matrix.__module__,
    "umap_after_read": "umap" in sys.modules,
    "stand_in_class": type(stand_in).__name__,
}))
"""


def test_building_a_loss_imports_no_plotting_package_and_reading_one_loads_the_real_code():
    result = json.loads(helpers.run_python(DEFERRED_THEN_READ).stdout.strip().splitlines()[-1])
    assert result["after_build"] == []
    assert result["same_object"] is True
    # The real functions, from the real modules, once a name is read.
    assert result["projector_module"] == "tensorflow_similarity.visualization.projector"
    assert result["confusion_matrix_module"] == "tensorflow_similarity.visualization.confusion_matrix_viz"
    assert result["umap_after_read"] is True
    assert result["stand_in_class"] == "module"


def test_nothing_is_deferred_once_tf_similarity_is_imported():
    # This worker imported it already (through the package or a user's import): no stand-in is put in place,
    # and the subpackage already in sys.modules, stand-in or real, is left as it is.
    losses = similarity_losses()
    before = sys.modules.get(DEFERRED_SUBPACKAGE)
    assert defer_plotting_subpackage() is False
    assert sys.modules.get(DEFERRED_SUBPACKAGE) is before
    assert losses is sys.modules["tensorflow_similarity"].losses
