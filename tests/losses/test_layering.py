"""losses/ imports in one direction: the registry (dml.py) imports the losses it builds, never the reverse."""

import pathlib
import re

import tf_langdml.losses

LOSSES = pathlib.Path(tf_langdml.losses.__file__).parent
# The one import inside a function: TF-Similarity, a third-party package that doubles TensorFlow's start-up time
# and that the exported embedder, serving and the CLI never need.
ALLOWED_LOCAL_IMPORTS = {("similarity_package.py", "from tensorflow_similarity import losses")}


def test_no_module_of_losses_imports_inside_a_function():
    local = {
        (path.name, line.strip())
        for path in sorted(LOSSES.glob("*.py"))
        for line in path.read_text(encoding="utf-8").splitlines()
        if re.match(r"^\s+(from \S+ )?import ", line)
    }
    assert local == ALLOWED_LOCAL_IMPORTS


def test_s2sd_does_not_import_the_registry():
    source = (LOSSES / "s2sd.py").read_text(encoding="utf-8")
    assert not re.search(r"^\s*(from tf_langdml\.losses(\.dml)? import|import tf_langdml\.losses\.dml)", source, re.M)
