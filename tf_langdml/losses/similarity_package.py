"""TensorFlow Similarity's losses, imported without its plotting subpackage.

``import tensorflow_similarity`` imports every subpackage it has, and ``visualization`` pulls in
umap, pynndescent, numba, scikit-learn, pandas and bokeh: about 3.2 s of the 3.5 s the import
costs (``python -X importtime``, 2-core CPU), paid by every training process although nothing in
this package plots. So before the first import, :func:`similarity_losses` puts a stand-in for
``tensorflow_similarity.visualization`` in ``sys.modules``: a module object with the real spec
that runs the real package the first time any of its names is read. Code that plots with
TF-Similarity still gets the real functions; it pays the 3.2 s when it first uses them.

Nothing is deferred when TF-Similarity was imported before this module ran, or when the
subpackage cannot be found (then the normal import raises its normal error).
"""

from __future__ import annotations

import importlib.machinery
import importlib.util
import sys
import threading
import types
from typing import Any

PACKAGE = "tensorflow_similarity"
DEFERRED_SUBPACKAGE = "tensorflow_similarity.visualization"
_LOAD_LOCK = threading.RLock()


class _DeferredPackage(types.ModuleType):
    """A package whose code runs when one of its attributes is first read."""

    def __getattr__(self, name: str) -> Any:
        # Only called for names the module does not have yet: the spec, path and file the import
        # system reads are set by module_from_spec, so importing never triggers the load.
        with _LOAD_LOCK:
            if type(self) is _DeferredPackage:
                self.__class__ = types.ModuleType
                self.__spec__.loader.exec_module(self)
        return getattr(self, name)


def defer_plotting_subpackage() -> bool:
    """Puts the deferred ``tensorflow_similarity.visualization`` in place; True if it did."""
    if PACKAGE in sys.modules or DEFERRED_SUBPACKAGE in sys.modules:
        return False
    package_spec = importlib.machinery.PathFinder.find_spec(PACKAGE)
    if package_spec is None or not package_spec.submodule_search_locations:
        return False
    spec = importlib.machinery.PathFinder.find_spec(DEFERRED_SUBPACKAGE, package_spec.submodule_search_locations)
    if spec is None or spec.loader is None:
        return False
    module = importlib.util.module_from_spec(spec)
    module.__class__ = _DeferredPackage
    sys.modules[DEFERRED_SUBPACKAGE] = module
    return True


def similarity_losses() -> types.ModuleType:
    """``tensorflow_similarity.losses``, imported on first use with plotting deferred."""
    if PACKAGE not in sys.modules:
        defer_plotting_subpackage()
    # The one function-local import of losses/: TF-Similarity is a third-party package the exported
    # embedder, serving and the CLI's config checks never need.
    from tensorflow_similarity import losses

    return losses
