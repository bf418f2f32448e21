"""The shared test harness: one helper per concern, importable as ``helpers`` from any test module.

Data: :func:`synthetic_problem` (arrays), :func:`write_colour_folder` (an image folder on disk).
Models: :func:`toy_backbone` (the library's ``toy_cnn``, the one tiny backbone), :func:`tiny_embedder`,
:func:`tiny_guided_model`, :func:`global_policy`.
Runs: :func:`write_fake_run` (a finished run directory without training), :func:`tiny_run_overrides`,
:func:`deterministic_run_overrides`, :func:`tiny_sweep_values`.
Processes: :func:`quiet_env`, :func:`user_env`, :func:`run_process`, :func:`run_python`, :func:`run_cli` and
:data:`CLI_PROBE`; :func:`run_saved_model_cli` and :func:`saved_model_cli_path` (TensorFlow's ``saved_model_cli``).
Files: :func:`h5_arrays`, :func:`unit_rows`.
"""

from __future__ import annotations

import contextlib
import json
import os
import pathlib
import subprocess
import sys
from collections.abc import Iterable, Iterator, Mapping, Sequence

import numpy as np
from PIL import Image

from tf_langdml import keras
from tf_langdml.models import LanguageGuidedModel, build_backbone, build_embedder
from tf_langdml.runs import builders
from tf_langdml.runs.schema import config_to_yaml, load_config

ROOT = pathlib.Path(__file__).resolve().parents[1]

# -- data -----------------------------------------------------------------------------------------------------------


def synthetic_problem(
    num_classes: int = 6, per_class: int = 4, size: int = 16, seed: int = 0
) -> tuple[np.ndarray, np.ndarray]:
    """Images = a random prototype per class + noise, values in [0, 255]; returns (float32 images, int32 labels)."""
    rng = np.random.default_rng(seed)
    prototypes = rng.uniform(0, 255, (num_classes, size, size, 3))
    labels = np.repeat(np.arange(num_classes), per_class)
    noise = rng.normal(0, 20, (labels.size, size, size, 3))
    images = np.clip(prototypes[labels] + noise, 0, 255).astype("float32")
    return images, labels.astype("int32")


def unit_rows(array: np.ndarray) -> np.ndarray:
    """``array`` (float64) with every row scaled to unit L2 norm."""
    array = np.asarray(array, dtype=np.float64)
    return array / np.linalg.norm(array, axis=-1, keepdims=True)


def write_colour_folder(
    root: str | os.PathLike,
    num_classes: int = 8,
    per_class: int = 4,
    size: int | tuple[int, int] = 16,
    noise: int = 20,
    seed: int = 0,
    class_name: str = "class_{}",
    class_names: Sequence[str] | None = None,
    colours: Sequence[Sequence[int]] | None = None,
) -> pathlib.Path:
    """``root/<class folder>/<j>.png``: per class, noisy copies (±``noise``) of one colour; returns root.

    The image folder most tests train and evaluate on: classes are told apart by colour alone.

    Args:
        root: the folder to create (its parents too); it must not hold the class folders yet.
        num_classes, per_class: how many class folders and PNGs in each.
        size: side of the square images, or (height, width).
        noise: each channel of each pixel is the class colour plus an integer drawn from [-noise, noise].
        seed: of the one generator that draws, class by class, the colour and then the noise of its images.
        class_name: folder name of class ``i``, ``class_name.format(i)`` (e.g. ``"{0:02d}.class_{0}"``).
        class_names: the folder names themselves (then ``num_classes`` is their count and ``class_name`` unused).
        colours: fixed RGB colours, one per class (then only the noise is drawn).

    Returns:
        ``root`` as a ``pathlib.Path``.
    """
    root = pathlib.Path(root)
    if class_names is None:
        class_names = [class_name.format(index) for index in range(num_classes)]
    if colours is not None and len(colours) != len(class_names):
        raise ValueError(f"colours has {len(colours)} entries for {len(class_names)} classes; give one per class.")
    height, width = (size, size) if isinstance(size, int) else size
    rng = np.random.default_rng(seed)
    for index, name in enumerate(class_names):
        colour = rng.integers(0, 256, 3) if colours is None else np.array(colours[index])
        folder = root / name
        folder.mkdir(parents=True)
        for image in range(per_class):
            pixels = np.clip(colour + rng.integers(-noise, noise + 1, (height, width, 3)), 0, 255).astype(np.uint8)
            Image.fromarray(pixels).save(folder / f"{image}.png")
    return root


# -- models ---------------------------------------------------------------------------------------------------------


def toy_backbone(input_shape: Sequence[int] = (16, 16, 3)) -> keras.Model:
    """The library's ``toy_cnn`` (three conv + BatchNorm blocks, stride 2 each) as a model, with random weights.

    For the tests that pass a backbone *model* to ``build_embedder``; everywhere else name it: ``"toy_cnn"``.
    """
    model, _ = build_backbone("toy_cnn", weights=None, input_shape=input_shape)
    return model


def tiny_embedder(embed_dim: int = 8, image_size: int = 16, **build_arguments: object) -> keras.Model:
    """``build_embedder("toy_cnn", weights=None, ...)`` for ``image_size`` x ``image_size`` RGB images."""
    return build_embedder(
        "toy_cnn", weights=None, embed_dim=embed_dim, input_shape=(image_size, image_size, 3), **build_arguments
    )


def tiny_guided_model(
    language_table: np.ndarray | None = None,
    *,
    embed_dim: int = 8,
    image_size: int = 16,
    seed: int | None = 0,
    optimizer: keras.optimizers.Optimizer | str | None = "sgd",
    embedder_arguments: Mapping[str, object] | None = None,
    model_arguments: Mapping[str, object] | None = None,
    **compile_arguments: object,
) -> LanguageGuidedModel:
    """A small LanguageGuidedModel on :func:`tiny_embedder`, compiled unless ``optimizer`` is None.

    Args:
        language_table: the model's language table (None: no language guidance).
        embed_dim, image_size: of the embedder.
        seed: ``keras.utils.set_random_seed(seed)`` before building (None: leave the generators alone).
        optimizer: passed to ``compile`` (``"sgd"``: Keras's SGD, learning rate 0.01); None returns the model
            uncompiled, for tests that compile it themselves.
        embedder_arguments: more keyword arguments of ``build_embedder`` (e.g. ``freeze_bn_statistics=False``).
        model_arguments: more keyword arguments of ``LanguageGuidedModel`` (e.g. ``table_index="sample_id"``).
        compile_arguments: the rest of ``compile``'s keyword arguments (``language_weight``, ``dml_loss``, ...).

    Returns:
        The model (compiled when ``optimizer`` is given).
    """
    if seed is not None:
        keras.utils.set_random_seed(seed)
    embedder = tiny_embedder(embed_dim, image_size, **dict(embedder_arguments or {}))
    model = LanguageGuidedModel(embedder, language_table, **dict(model_arguments or {}))
    if optimizer is not None:
        model.compile(optimizer=optimizer, **compile_arguments)
    elif compile_arguments:
        raise ValueError(f"compile arguments {sorted(compile_arguments)} need an optimizer; pass optimizer=...")
    return model


@contextlib.contextmanager
def global_policy(name: str) -> Iterator[None]:
    """Keras's global dtype policy is ``name`` (e.g. ``"mixed_float16"``) inside the block, float32 again after it."""
    keras.mixed_precision.set_global_policy(name)
    try:
        yield
    finally:
        keras.mixed_precision.set_global_policy("float32")


# -- runs -----------------------------------------------------------------------------------------------------------


def write_fake_run(
    run_dir: str | os.PathLike,
    data_dir: str | os.PathLike,
    *,
    image_size: int = 16,
    embed_dim: int = 8,
    seed: int | None = None,
    train_class_names: Sequence[str] | None = None,
    overrides: Iterable[str] = (),
) -> pathlib.Path:
    """A finished run directory without training: config.yaml and a random toy_cnn ``embedder.weights.h5``.

    Args:
        run_dir: the folder to create (parents too); it must not exist yet.
        data_dir: the image folder the config's ``data.data_dir`` names.
        image_size, embed_dim: ``data.image_size`` and ``model.embed_dim``.
        seed: written as ``training.seed`` and given to ``keras.utils.set_random_seed`` before the embedder is
            built (None: neither).
        train_class_names: written to ``train_class_names.json`` when given.
        overrides: more ``key=value`` config overrides (e.g. ``"evaluation.batch_size=8"``).

    Returns:
        ``run_dir`` as a ``pathlib.Path``.
    """
    run_dir = pathlib.Path(run_dir)
    values = [
        "data.dataset=folder",
        f"data.data_dir={data_dir}",
        f"data.image_size={image_size}",
        "model.backbone=toy_cnn",
        "model.weights=null",
        f"model.embed_dim={embed_dim}",
    ]
    if seed is not None:
        values.append(f"training.seed={seed}")
    config = load_config(None, [*values, *overrides])
    run_dir.mkdir(parents=True)
    (run_dir / "config.yaml").write_text(config_to_yaml(config), encoding="utf-8")
    if seed is not None:
        keras.utils.set_random_seed(seed)
    builders.embedder(config.model, image_size, weights=None).save_weights(str(run_dir / "embedder.weights.h5"))
    if train_class_names is not None:
        (run_dir / "train_class_names.json").write_text(json.dumps(list(train_class_names)), encoding="utf-8")
    return run_dir


# -- processes ------------------------------------------------------------------------------------------------------


def quiet_env(*, drop: Iterable[str] = (), **extra: str) -> dict[str, str]:
    """This process's environment (PYTHONPATH and all) with TensorFlow's C++ logging off, for a child process.

    Args:
        drop: names removed last (e.g. ``("TF_CPP_MIN_LOG_LEVEL",)`` for a child that must choose its own level).
        extra: names set after ``TF_CPP_MIN_LOG_LEVEL=3`` (so ``TF_CPP_MIN_LOG_LEVEL="2"`` overrides it).
    """
    environment = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3", **extra}
    for name in drop:
        environment.pop(name, None)
    return environment


def user_env(**extra: str) -> dict[str, str]:
    """This process's environment without the variables tf_langdml sets for itself, as a user's shell starts a command.

    For children that must show the command line's own defaults (its quiet TensorFlow log level, its Keras binding):
    TF_CPP_MIN_LOG_LEVEL and TF_USE_LEGACY_KERAS removed, then ``extra`` set.
    """
    return {**quiet_env(drop=("TF_CPP_MIN_LOG_LEVEL", "TF_USE_LEGACY_KERAS")), **extra}


def _describe(command: Sequence[str]) -> str:
    return " ".join(
        part if len(part) <= 60 else part[:40].replace("\n", " ") + f"... ({len(part)} chars)" for part in command
    )


def _tail(text: str | bytes | None, limit: int = 4000) -> str:
    if isinstance(text, bytes):
        text = text.decode(errors="replace")
    return "" if not text else text[-limit:]


def run_process(
    argv: Sequence[str | os.PathLike],
    *,
    timeout: float = 600,
    returncode: int | None = 0,
    env: Mapping[str, str] | None = None,
    **run_arguments: object,
) -> subprocess.CompletedProcess:
    """Run ``argv`` with captured text output under ``timeout`` seconds; assert its exit status.

    Args:
        argv: the command.
        timeout: seconds before the child is killed and the test fails (AssertionError, with its output so far).
        returncode: the exit status asserted; None asserts nothing (the test reads ``result.returncode``).
        env: the child's environment (default :func:`quiet_env`).
        run_arguments: more keyword arguments of ``subprocess.run`` (``cwd``, ``stdin``, ...).

    Returns:
        The ``subprocess.CompletedProcess``; on a wrong exit status the AssertionError shows stdout and stderr.
    """
    command = [str(part) for part in argv]
    try:
        result = subprocess.run(
            command,
            capture_output=True,
            text=True,
            timeout=timeout,
            env=quiet_env() if env is None else dict(env),
            **run_arguments,
        )
    except subprocess.TimeoutExpired as error:
        raise AssertionError(
            f"{_describe(command)} did not end within {timeout} s\n--- stdout:\n{_tail(error.stdout)}"
            f"\n--- stderr:\n{_tail(error.stderr)}"
        ) from error
    if returncode is not None:
        assert result.returncode == returncode, (
            f"{_describe(command)} exited with {result.returncode}, expected {returncode}"
            f"\n--- stdout:\n{_tail(result.stdout)}\n--- stderr:\n{_tail(result.stderr)}"
        )
    return result


def run_python(code: str, *args: str | os.PathLike, **run_arguments: object) -> subprocess.CompletedProcess:
    """``python -c code *args`` in a fresh interpreter through :func:`run_process` (same keyword arguments)."""
    return run_process([sys.executable, "-c", code, *args], **run_arguments)


def run_cli(args: Sequence[str | os.PathLike], **run_arguments: object) -> subprocess.CompletedProcess:
    """``python -m tf_langdml *args`` through :func:`run_process` (same keyword arguments)."""
    return run_process([sys.executable, "-m", "tf_langdml", *args], **run_arguments)


def run_saved_model_cli(
    model_dir: str | os.PathLike, signature: str, inputs: str, *extra: str | os.PathLike
) -> subprocess.CompletedProcess:
    """TensorFlow's ``saved_model_cli run`` of ``signature`` (tag set ``serve``) on the ``--inputs`` spec ``inputs``
    (``name=file.npy;...``), with ``extra`` arguments (``--outdir``, ...), through :func:`run_process`."""
    return run_process(
        [
            saved_model_cli_path(),
            "run",
            "--dir",
            model_dir,
            "--tag_set",
            "serve",
            "--signature_def",
            signature,
            "--inputs",
            inputs,
            *extra,
        ]
    )


def saved_model_cli_path() -> str:
    """The ``saved_model_cli`` script installed beside this interpreter (TensorFlow installs it)."""
    return os.path.join(os.path.dirname(sys.executable), "saved_model_cli")


# Run in a fresh interpreter (``python -c CLI_PROBE <argv>``): the CLI's exit status and whether it loaded TensorFlow.
CLI_PROBE = (
    "import sys\n"
    "from tf_langdml.cli import main\n"
    "try:\n"
    "    code = main(sys.argv[1:])\n"
    "except SystemExit as exit:\n"
    "    code = exit.code\n"
    "print('exit', code, 'tensorflow', 'tensorflow' in sys.modules)\n"
)


# -- files ----------------------------------------------------------------------------------------------------------


def h5_arrays(path: str | os.PathLike) -> dict[str, np.ndarray]:
    """Every dataset of an HDF5 file (a Keras ``.weights.h5``) as ``{name: array}``."""
    import h5py

    arrays = {}
    with h5py.File(path, "r") as handle:
        handle.visititems(
            lambda name, item: arrays.__setitem__(name, item[()]) if isinstance(item, h5py.Dataset) else None
        )
    return arrays


def tiny_run_overrides(data_dir: str | os.PathLike, runs_dir: str | os.PathLike, name: str = "tiny") -> list[str]:
    """The ``--set`` items every tiny run shares: the image folder ``data_dir`` at 16 x 16 in batches of 8, on toy_cnn
    without weights, 8-dimensional embeddings, the run ``runs_dir/name``. Tests add their own items after these."""
    return [
        f"name={name}",
        f"runs_dir={runs_dir}",
        "data.dataset=folder",
        f"data.data_dir={data_dir}",
        "data.image_size=16",
        "data.batch_size=8",
        "model.backbone=toy_cnn",
        "model.weights=null",
        "model.embed_dim=8",
    ]


def deterministic_run_overrides(data_dir: str | os.PathLike, runs_dir: str | os.PathLike) -> list[str]:
    """:func:`tiny_run_overrides` (run ``runs_dir/run``) for a baseline of 2 epochs of 4 steps under
    ``training.deterministic``: the run the determinism checks train twice and compare bit for bit."""
    return [
        *tiny_run_overrides(data_dir, runs_dir, "run"),
        "language.guidance=none",
        "loss.language_weight=0",
        "optimizer.learning_rate=0.05",
        "training.epochs=2",
        "training.steps_per_epoch=4",
        "training.eval_every=2",
        "training.deterministic=true",
        "evaluation.semantic=false",
        "evaluation.batch_size=16",
    ]


def tiny_sweep_values(data_dir: str | os.PathLike, runs_dir: str | os.PathLike, name: str = "tiny") -> dict:
    """A tiny ELG config as nested dicts (what ``run_sweep`` takes): the image folder ``data_dir`` at 16 x 16 in
    batches of 8 with a third of the training classes held out for validation, toy_cnn, 2 epochs of 2 steps."""
    return {
        "name": name,
        "runs_dir": str(runs_dir),
        "data": {
            "dataset": "folder",
            "data_dir": str(data_dir),
            "image_size": 16,
            "batch_size": 8,
            "validation_fraction": 0.34,
        },
        "model": {"backbone": "toy_cnn", "weights": None, "embed_dim": 8},
        "loss": {"language_weight": 1.0},
        "language": {"guidance": "elg"},
        "optimizer": {"learning_rate": 0.01},
        "training": {"epochs": 2, "steps_per_epoch": 2, "eval_every": 2, "checkpoint_every": 2},
        "evaluation": {"batch_size": 16, "clustering": False, "ks": [1, 2, 4]},  # validation: 8 images, 7 retrievable
    }
