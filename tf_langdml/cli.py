"""The ``tf-langdml`` command line (also ``python -m tf_langdml``).

Parsing the command line and reading the config import no TensorFlow, so ``--help``
and config errors answer at once. Quiet by default: TensorFlow's C++ log level is set
to 3 (``TF_CPP_MIN_LOG_LEVEL=3``: no C++ log lines; failures still raise Python
errors) and what native libraries print while they load (TensorFlow's log lines from
before its logging starts, the NMSLIB banner) is hidden unless the import fails.
``--verbose`` sets the level to 0 and hides nothing. Keras progress lines stay
(``train --quiet`` turns them off).

Errors a user can fix (a config error, a missing file, a run directory in use, a file
that cannot be written: permissions, a full disk, a read-only file system, a path through
a regular file) print one line naming the path or key and what to do, and exit with
status 2; ``--verbose`` prints the traceback above that line. Any other exception
propagates with its traceback: it is a bug to report.
"""

import argparse
import errno
import importlib
import json
import os
import sys
import tempfile
import traceback

EXAMPLES = {
    "demo": "tf-langdml demo\n  tf-langdml demo --set training.epochs=4 --runs-dir /tmp/runs",
    "train": "tf-langdml train --config configs/cub200_plg_128.yaml --set data.manual_dir=~/downloads",
    "evaluate": "tf-langdml evaluate --run runs/cub200_plg_128",
    "sweep": "tf-langdml sweep --config configs/demo.yaml --grid loss.language_weight=0,2.5,7.5 "
    "--grid language.guidance=elg,plg --seeds 0,1,2 --final",
    "embed-classes": 'tf-langdml embed-classes --names "black footed albatross,laysan albatross" --out table.npz',
    "pseudolabel": "tf-langdml pseudolabel --config configs/cub200_plg_128.yaml --out pseudo_labels.json",
    "export": "tf-langdml export --run runs/cub200_plg_128 --name cub200_plg_128\n"
    "  tensorflow_model_server --rest_api_port=8501 --model_name=cub200_plg_128 "
    "--model_base_path=$PWD/saved_models/cub200_plg_128",
    "index": "tf-langdml index --run runs/cub200_plg_128 --gallery test --name cub200_search\n"
    "  tf-langdml index --run runs/cub200_plg_128 --gallery ~/new_photos --name cub200_search --add",
    "search": "tf-langdml search --model saved_models/cub200_search photo.jpg other.png --k 5\n"
    "  tf-langdml search --model saved_models/cub200_search/2 photo.jpg --json",
    "report": "tf-langdml report runs/cub200_plg_128\n  tf-langdml report runs/demo_sweep --out demo_sweep.html",
}


def _parser():
    verbosity = argparse.ArgumentParser(add_help=False)
    verbosity.add_argument(
        "--verbose",
        action="store_true",
        default=argparse.SUPPRESS,
        help="show TensorFlow's log lines and native libraries' start-up messages",
    )
    parser = argparse.ArgumentParser(
        prog="tf-langdml",
        parents=[verbosity],
        description="Language guidance for deep metric learning (Roth, Vinyals, Akata, CVPR 2022) in TensorFlow.",
    )
    commands = parser.add_subparsers(dest="command", required=True, metavar="command")

    def command(name, summary):
        return commands.add_parser(
            name,
            help=summary,
            description=f"{summary}\n\nExample:\n  {EXAMPLES[name]}",
            formatter_class=argparse.RawDescriptionHelpFormatter,
            parents=[verbosity],
        )

    demo = command(
        "demo",
        "Train baseline, ELG and PLG on the offline emoji demo set and print one results "
        "table (EfficientNet-Lite0 + MiniLM, fully offline; its time on 2 cores is in README.md), "
        "then the 3-seed paired differences its ω were chosen with.",
    )
    demo.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override a demo setting")
    demo.add_argument("--runs-dir", default=None, help="where the run directories go (default: runs)")
    demo.add_argument(
        "--seeds",
        default=None,
        metavar="S1,S2,...",
        help="train every variant once per seed (e.g. 0,1,2: three times as long) and print mean ± std "
        "and the paired difference to the baseline; runs other than seed 0 are named "
        "demo_<variant>_seed-<s> (default: one seed, training.seed)",
    )

    train = command(
        "train",
        "Train (or resume) the run a YAML config describes; writes a run directory with the "
        "resolved config, TensorBoard logs, checkpoints, the language table and metrics.json.",
    )
    train.add_argument(
        "--config",
        required=False,
        help="a YAML file from configs/, e.g. configs/demo.yaml or configs/folder.yaml (without it "
        "and without --set, train shows what the defaults would do and asks first)",
    )
    train.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override a config key, e.g. training.epochs=10 (repeatable)",
    )
    train.add_argument("--quiet", action="store_true", help="no Keras progress lines and no messages")
    train.add_argument(
        "--yes",
        action="store_true",
        help="start without asking when there is no --config (then the defaults apply, with any "
        "--set on top: ResNet50 with ImageNet weights, 224 px, 150 epochs unless overridden)",
    )

    sweep = command(
        "sweep",
        "Choose hyper-parameters on validation classes: train every grid point once per seed "
        "on the training classes minus a held-out part, score it on that part, print mean ± std "
        "per point and name the best (written to <runs_dir>/<name>_sweep/sweep.csv, sweep.json). "
        "Resumes where it stopped.",
    )
    sweep.add_argument("--config", required=False, help="the base YAML config (default: all defaults)")
    sweep.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override a base config key")
    sweep.add_argument(
        "--grid",
        action="append",
        default=[],
        metavar="KEY=V1,V2,...",
        required=True,
        help="a config key and its values (repeatable: the grid is the product)",
    )
    sweep.add_argument("--seeds", default="0", help="comma-separated training seeds per point (default: 0)")
    sweep.add_argument(
        "--metric", default="recall@1", help="selection criterion, a metrics.json key (default: recall@1)"
    )
    sweep.add_argument(
        "--validation-fraction",
        type=float,
        default=None,
        help="share of training classes held out (default: data.validation_fraction, else 0.3)",
    )
    sweep.add_argument(
        "--final",
        action="store_true",
        help="then retrain the best point on the full training split and report its test metrics "
        "(the only time the sweep reads the test split)",
    )
    sweep.add_argument("--final-all", action="store_true", help="as --final, for every point (a report, not a choice)")
    sweep.add_argument("--quiet", action="store_true", help="no per-run progress messages")

    evaluate = command(
        "evaluate", "Recompute the test-split metrics of a finished run's embedder and print them as JSON."
    )
    evaluate.add_argument("--run", required=True, help="a run directory")

    embed = command(
        "embed-classes",
        "Embed class names with a text encoder (the ELG table) and save them as .npz (texts, embeddings).",
    )
    embed.add_argument("--names", help="comma-separated class names")
    embed.add_argument("--file", help="a text file with one class name per line")
    embed.add_argument("--encoder", default="minilm", help="minilm | hub:<handle>[|<preprocessor>] | precomputed:<npz>")
    embed.add_argument(
        "--template",
        default="a photo of a {}",
        help="the text each name is put in, {} marks the name (default: 'a photo of a {}')",
    )
    embed.add_argument("--out", required=True, help="output .npz")

    pseudo = command(
        "pseudolabel",
        "Run PLG pseudo-labelling for a config's training split and write the chosen "
        "ImageNet names per class (JSON) and the table (.npy beside it).",
    )
    pseudo.add_argument(
        "--config",
        required=True,
        help="the YAML config of the run whose training split is pseudo-labelled (its data: and language: sections)",
    )
    pseudo.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override a config key, e.g. language.top_k=3 (repeatable)",
    )
    pseudo.add_argument("--out", required=True, help="output .json (the table goes to the same name with .npy)")
    export = command(
        "export",
        "Export a finished run's embedder as a SavedModel for TF Serving: "
        "saved_models/<name>/<version>/ with serving_default (JPEG/PNG bytes -> embeddings) "
        "and embed_images (preprocessed float images -> embeddings).",
    )
    export.add_argument("--run", required=True, help="a finished run directory")
    export.add_argument("--name", required=True, help="the model name (folder under saved_models/)")
    export.add_argument("--version", type=int, default=None, help="default: the next integer")
    export.add_argument("--saved-models", default="saved_models", help="base folder (default: saved_models)")
    export.add_argument(
        "--precision",
        choices=("float32", "mixed_bfloat16"),
        default="float32",
        type=str.lower,
        help="what the exported embedder computes in (float32 inputs and outputs either way; default: float32)",
    )

    index = command(
        "index",
        "Export a finished run's embedder together with a gallery as a searchable SavedModel: "
        "saved_models/<name>/<version>/ with serving_default, embed_images, search (image bytes "
        "+ k -> top-k item ids, class names, cosine scores) and search_embeddings.",
    )
    index.add_argument("--run", required=True, help="a finished run directory")
    index.add_argument(
        "--gallery",
        required=True,
        help="an image folder <folder>/<class>/<images> (item ids: paths relative to it), or "
        "train | test | validation: that split of the run's own dataset",
    )
    index.add_argument("--name", required=True, help="the model name (folder under saved_models/)")
    index.add_argument(
        "--add",
        action="store_true",
        help="keep the latest version's items and append these (a new version; same run required)",
    )
    index.add_argument("--version", type=int, default=None, help="default: the next integer")
    index.add_argument("--saved-models", default="saved_models", help="base folder (default: saved_models)")
    index.add_argument(
        "--batch-size",
        type=int,
        default=None,
        help="images per forward pass (default: 2^17 input pixels per CPU core, within a quarter of the free "
        "memory; evaluation.batch_size on a GPU)",
    )
    index.add_argument(
        "--precision",
        default=None,
        type=str.lower,
        help="float32 | mixed_bfloat16: the policy the gallery is embedded in and the exported embedder computes "
        "in, so queries and gallery are embedded alike (default: the run's; a mixed_float16 run: float32)",
    )
    index.add_argument("--quiet", action="store_true", help="no progress lines while the gallery is embedded")

    search = command(
        "search",
        "Find the nearest gallery items of images with an indexed SavedModel (loads the "
        "SavedModel only: no run, no config).",
    )
    search.add_argument(
        "--model", required=True, help="saved_models/<name> (latest version) or saved_models/<name>/<v>"
    )
    search.add_argument("images", nargs="+", help="image files (JPEG, PNG, GIF, BMP)")
    search.add_argument("--k", type=int, default=5, help="neighbours per image (default: 5)")
    search.add_argument("--json", action="store_true", help="print JSON instead of a table")

    report = command(
        "report",
        "Write one self-contained HTML page for a run directory (metrics, loss and R@1 "
        "curves, the latest retrieval grid and S_img | S_lang heat map) or a sweep folder "
        "(validation R@1 against ω per guidance with mean ± std over seeds, the paired Δ, the "
        "final test rows); reads the folder's files only, builds no model.",
    )
    report.add_argument(
        "folder", metavar="RUN_OR_SWEEP", help="a run directory (runs/<name>) or a sweep folder (runs/<name>_sweep)"
    )
    report.add_argument("--out", default=None, help="the HTML file to write (default: <folder>/report.html)")
    return parser


def _import_quietly(modules):
    """Import ``modules`` with the process's stderr (file descriptor 2) captured.

    Native libraries print there while they load (TensorFlow's log lines from before
    its logging starts, NMSLIB's CPU banner), below Python's ``sys.stderr``. What they
    printed is shown after all if an import fails. A module that is not installed is
    skipped.
    """
    sys.stderr.flush()
    saved = os.dup(2)
    with tempfile.TemporaryFile() as captured:
        os.dup2(captured.fileno(), 2)
        try:
            for module in modules:
                try:
                    importlib.import_module(module)
                except ModuleNotFoundError as error:
                    if error.name != module:
                        raise
        except KeyboardInterrupt:  # Ctrl-C while loading: what the libraries printed explains nothing
            raise
        except BaseException:
            sys.stderr.flush()
            os.dup2(saved, 2)
            captured.seek(0)
            sys.stderr.write(captured.read().decode("utf-8", "replace"))
            raise
        finally:
            sys.stderr.flush()
            os.dup2(saved, 2)
            os.close(saved)


_STARTED = [False]  # set once TensorFlow is loaded: a Ctrl-C before that interrupted only the start-up


def _load_tensorflow(verbose):
    """Import TensorFlow (and NMSLIB, which TF-Similarity loads) quietly unless ``verbose``."""
    _STARTED[0] = False
    os.environ["TF_CPP_MIN_LOG_LEVEL"] = "0" if verbose else "3"
    if not verbose:
        _import_quietly(["tensorflow", "nmslib"])
    else:
        importlib.import_module("tensorflow")
    _STARTED[0] = True


# errno -> what to do, for an OSError a user can fix (any other errno propagates: it is not ours to explain).
_FIXABLE_ERRNOS = {
    errno.EACCES: "make it writable for this user, or choose another location",
    errno.EPERM: "make it writable for this user, or choose another location",
    errno.EROFS: "the file system is read-only; choose a location on a writable one",
    errno.ENOSPC: "free space on that disk, or choose a location on another one",
    errno.EDQUOT: "free space within your disk quota, or choose another location",
    errno.EFBIG: "the file grew past the file system's limit; choose a location on another file system",
    errno.ENOTDIR: "a part of that path is a file, not a folder; move the file or choose another location",
    errno.EISDIR: "that path is a folder where a file is expected; move it or choose another location",
    errno.ENAMETOOLONG: "shorten the path",
    errno.ELOOP: "the path has a symbolic-link loop; fix the link or choose another location",
}


def _user_error_line(error):
    """The one line (no traceback) for an error a user can fix; None for anything else (a bug: let it propagate)."""
    from tf_langdml.runs.schema import ConfigError

    if isinstance(error, (ConfigError, FileNotFoundError, FileExistsError, ModuleNotFoundError)):
        return str(error)
    run_dir = sys.modules.get("tf_langdml.runs.run_dir")  # loaded whenever it can have raised (it imports TensorFlow)
    if run_dir is not None and isinstance(error, run_dir.RunDirectoryError):
        return str(error)
    if isinstance(error, OSError) and error.errno in _FIXABLE_ERRNOS:
        path = error.filename if error.filename is not None else "a file (its path was not reported)"
        other = f" -> {error.filename2}" if error.filename2 is not None else ""
        return f"{path}{other}: {error.strerror or os.strerror(error.errno)}; {_FIXABLE_ERRNOS[error.errno]}."
    return None


# What a Ctrl-C leaves, per command: how to take the work up again.
_RESUME = {
    "train": "run the same command again: it resumes from the run's last checkpoint",
    "sweep": "run the same command again: finished runs are kept and the interrupted one resumes from its last "
    "checkpoint",
    "demo": "run the same command again: finished runs are kept and the interrupted one resumes from its last "
    "checkpoint",
}
_PACKAGE_DIR = os.path.dirname(os.path.abspath(__file__))


def _interrupted_line(command, started):
    """The one line printed on Ctrl-C (exit status 130)."""
    if not started:
        return f"tf-langdml {command}: interrupted while starting (loading TensorFlow); nothing was done."
    return f"tf-langdml {command}: interrupted; {_RESUME.get(command, 'run the same command again')}."


def _plain_warnings(command):
    """Show tf_langdml's own warnings (skipped files, ...) as one plain line: no class name, no source line."""
    import warnings

    shown = warnings.showwarning

    def show(message, category, filename, lineno, file=None, line=None):
        ours = getattr(category, "__module__", "").startswith("tf_langdml") or os.path.abspath(filename).startswith(
            _PACKAGE_DIR + os.sep
        )
        if not ours:
            return shown(message, category, filename, lineno, file, line)
        print(f"tf-langdml {command}: warning: {' '.join(str(message).split())}", file=file or sys.stderr)

    warnings.showwarning = show
    return shown


def main(argv=None):
    """Run ``tf-langdml`` with ``argv``; returns the exit status (2: an error the user can fix, printed as one line).

    Ctrl-C prints one line (what was interrupted, how to resume) and returns 130; the
    traceback only with ``--verbose``.
    """
    import warnings

    arguments = _parser().parse_args(argv)
    verbose = getattr(arguments, "verbose", False)
    shown = _plain_warnings(arguments.command)
    try:
        return _main(arguments, verbose)
    except KeyboardInterrupt:
        if verbose:
            traceback.print_exc()
        print(_interrupted_line(arguments.command, _STARTED[0]), file=sys.stderr)
        return 130
    except Exception as error:
        line = _user_error_line(error)
        if line is None and isinstance(error, ValueError) and arguments.command in ("index", "search"):
            line = str(error)  # bad galleries, k, item ids: named in the message; elsewhere a ValueError is a bug
        if line is None:
            raise
        if verbose:
            traceback.print_exc()
        print(f"tf-langdml {arguments.command}: {' '.join(line.split())}", file=sys.stderr)
        return 2
    finally:
        warnings.showwarning = shown


def _main(arguments, verbose):
    from tf_langdml.runs.schema import load_config

    if arguments.command == "demo":
        from tf_langdml.demo import demo_configs
        from tf_langdml.runs.sweep_grid import parse_seeds

        seeds = None if arguments.seeds is None else parse_seeds(arguments.seeds)
        for seed in seeds or [None]:  # the config errors, before TensorFlow
            demo_configs(overrides=arguments.set, runs_dir=arguments.runs_dir, seed=seed)
        _load_tensorflow(verbose)
        from tf_langdml.demo import run_demo

        run_demo(overrides=arguments.set, runs_dir=arguments.runs_dir, seeds=seeds)
    elif arguments.command == "train":
        config = load_config(arguments.config, arguments.set)
        if arguments.config is None and not arguments.yes and not _confirm_defaults(config, bool(arguments.set)):
            return 2
        _load_tensorflow(verbose)
        from tf_langdml.runs.train import train

        metrics = train(config, verbose=0 if arguments.quiet else 1)
        print(json.dumps(metrics, indent=1, default=float))
    elif arguments.command == "sweep":
        from tf_langdml.runs.sweep_grid import sweep_from_arguments

        base_values, grid, seeds = sweep_from_arguments(
            arguments.config,
            arguments.set,
            arguments.grid,
            arguments.seeds,
            arguments.metric,
            arguments.final,
            arguments.validation_fraction,
        )
        _load_tensorflow(verbose)
        from tf_langdml.runs.sweep import run_sweep

        result = run_sweep(
            base_values,
            grid,
            seeds,
            metric=arguments.metric,
            final="all" if arguments.final_all else arguments.final,
            validation_fraction=arguments.validation_fraction,
            verbose=0 if arguments.quiet else 1,
        )
        print(result.table())
        print(
            f"wall time {result.wall_seconds / 60:.1f} min; table: {result.folder / 'sweep.csv'}; "
            f"TensorBoard HParams: tensorboard --logdir {result.folder}"
        )
    elif arguments.command == "evaluate":
        _load_tensorflow(verbose)
        from tf_langdml.runs.train import evaluate

        print(json.dumps(evaluate(arguments.run), indent=1, default=float))
    elif arguments.command == "embed-classes":
        _load_tensorflow(verbose)
        _embed_classes(arguments)
    elif arguments.command == "pseudolabel":
        config = load_config(arguments.config, arguments.set)
        _load_tensorflow(verbose)
        _pseudolabel(config, arguments.out)
    elif arguments.command == "export":
        _load_tensorflow(verbose)
        from tf_langdml.runs.serving import export_run

        path = export_run(arguments.run, arguments.name, arguments.saved_models, arguments.version, arguments.precision)
        computing = "" if arguments.precision == "float32" else f"; computing in {arguments.precision}"
        print(f"exported {path} (signatures serving_default, embed_images{computing})")
    elif arguments.command == "index":
        _load_tensorflow(verbose)
        from tf_langdml.runs.serving import index_run

        path = index_run(
            arguments.run,
            arguments.gallery,
            arguments.name,
            arguments.saved_models,
            arguments.version,
            arguments.add,
            arguments.batch_size,
            verbose=0 if arguments.quiet else 1,
            precision=arguments.precision,
        )
        gallery = json.loads((path / "assets" / "tf_langdml_export.json").read_text())["gallery"]
        added = gallery["source"][-1]
        print(
            f"exported {path} with {gallery['items']} gallery items, embedded and served in {added['precision']} "
            f"({added['precision_from']}) (signatures serving_default, embed_images, search, search_embeddings)"
        )
    elif arguments.command == "search":
        return _search(arguments, verbose)
    elif arguments.command == "report":
        from tf_langdml.report import ReportError, write_report  # no TensorFlow: the event files are read as protobuf

        try:
            path = write_report(arguments.folder, arguments.out)
        except ReportError as error:
            print(f"tf-langdml report: {' '.join(str(error).split())}", file=sys.stderr)
            return 2
        print(f"wrote {path}")
    return 0


def _shipped_configs():
    """The YAML files in the repository's configs/ (the dml_losses/ ones left out), by name."""
    folder = os.path.join(os.path.dirname(_PACKAGE_DIR), "configs")
    return sorted(name for name in os.listdir(folder) if name.endswith(".yaml")) if os.path.isdir(folder) else []


def _defaults_plan(config):
    """What a ``train`` with every default would do, in a few words (from the config alone: nothing is built)."""
    model, data, training = config.model, config.data, config.training
    weights = (
        "ImageNet weights downloaded from storage.googleapis.com unless already in ~/.keras/models"
        if model.weights == "imagenet"
        else f"weights {model.weights}"
    )
    steps = f"{training.steps_per_epoch} steps" if training.steps_per_epoch else "one pass over the training images"
    return (
        f"backbone {model.backbone} ({weights}), {data.image_size} x {data.image_size} images of the "
        f"{data.dataset} data set, {training.epochs} epochs of {steps} at batch {data.batch_size}"
    )


def _confirm_defaults(config, overridden=False):
    """``train`` without --config: say what the defaults (plus ``--set``) would do, then ask on a terminal; else refuse.

    Any ``--set`` leaves every other key at its default (``--set name=x`` alone still
    starts ResNet50 for 150 epochs), so the question is asked whatever ``--set`` holds.
    """
    import re

    configs = _shipped_configs()
    paper = [name for name in configs if re.fullmatch(r"[a-z0-9]+_(baseline|elg|plg)_\d+\.yaml", name)]
    datasets = sorted({name.split("_")[0] for name in paper})
    shipped = ", ".join(f"configs/{name}" for name in configs if name not in paper)
    if paper:
        shipped += (
            f" and {len(paper)} paper runs, configs/<data set>_<baseline|elg|plg>_<dims>.yaml for {', '.join(datasets)}"
        )
    shipped = f"shipped: {shipped}" if configs else "see configs/ in the repository"
    what = "the defaults with your --set values" if overridden else "the defaults (hours of CPU time)"
    if not sys.stdin.isatty():
        print(
            f"tf-langdml train: no --config given, and {what} would train {_defaults_plan(config)}; pass "
            f"--config (for a first run: --config configs/demo.yaml; {shipped}) or --yes to start it.",
            file=sys.stderr,
        )
        return False
    print(
        f"No --config given: {what} would train {_defaults_plan(config)}.\n"
        f"For a first run use --config configs/demo.yaml ({shipped}).",
        file=sys.stderr,
    )
    try:
        answer = input("Start it anyway? [y/N] ")
    except EOFError:
        answer = ""
    if answer.strip().lower() in ("y", "yes"):
        return True
    print("tf-langdml train: not started.", file=sys.stderr)
    return False


def _search(arguments, verbose):
    """``tf-langdml search``: a table (or JSON) of each image's neighbours; bad images and k named on failure."""
    import re

    missing = [image for image in arguments.images if not os.path.lexists(image)]
    if missing:
        raise FileNotFoundError(f"no such image file: {', '.join(missing)}")
    # FIFOs, devices, folders, dangling links: refused before anything is opened (a FIFO would block the read).
    irregular = [image for image in arguments.images if not os.path.isfile(image)]
    if irregular:
        raise FileNotFoundError(f"not a regular image file: {', '.join(irregular)}; give the image files themselves.")
    if arguments.k < 1:
        raise ValueError(f"--k must be at least 1; got {arguments.k}.")
    _load_tensorflow(verbose)
    import tensorflow as tf

    from tf_langdml.gallery import search_saved_model

    try:
        results = search_saved_model(arguments.model, arguments.images, arguments.k)
    except tf.errors.InvalidArgumentError as error:
        message = str(error.message)
        # tf.debugging.Assert prints its data as "assertion failed: [part] [part]\n\t [[{{node ...}}]]": keep the
        # parts, without their brackets, before the file names (which may hold brackets) go in.
        asserted = re.search(r"assertion failed: ((?:\[[^\[\]]*\] ?)+)", message)
        if asserted:
            message = " ".join(re.findall(r"\[([^\[\]]*)\]", asserted.group(1)))
        else:
            message = " ".join(message.split())
        for row, image in enumerate(arguments.images):  # the signature names 0-based rows; name the files
            message = re.sub(rf"\brow {row}:", lambda _, image=image: f"{image}:", message)
        print(f"tf-langdml search: {message}", file=sys.stderr)
        return 2
    if arguments.json:
        print(
            json.dumps(
                [{"image": image, "neighbours": neighbours} for image, neighbours in zip(arguments.images, results)],
                indent=1,
                ensure_ascii=False,
            )
        )
        return 0
    for image, neighbours in zip(arguments.images, results):
        print(image)
        for neighbour in neighbours:
            print(
                f"  {neighbour['rank']:>3}  {neighbour['score']:.4f}  {neighbour['class_name']}  {neighbour['item_id']}"
            )
    return 0


def _embed_classes(arguments):
    import numpy as np

    from tf_langdml.cache import write_cached_arrays
    from tf_langdml.language import prime, text_embeddings

    if bool(arguments.names) == bool(arguments.file):
        raise FileNotFoundError("Give the class names with exactly one of --names or --file.")
    if arguments.names:
        names = [name.strip() for name in arguments.names.split(",")]
    else:
        with open(arguments.file, encoding="utf-8") as handle:
            names = [line.strip() for line in handle if line.strip()]
    vectors = text_embeddings(names, arguments.encoder, arguments.template, verbose=True)
    write_cached_arrays(
        arguments.out, names=np.array(names), texts=np.array(prime(names, arguments.template)), embeddings=vectors
    )
    print(f"wrote {arguments.out}: {vectors.shape[0]} names x {vectors.shape[1]} dims")


def _pseudolabel(config, out):
    import pathlib

    import numpy as np

    from tf_langdml.runs import builders

    builders.check_language(config.language)
    split = builders.dataset(config.data).train_split
    table, labels = builders.pseudo_labels(
        config.language,
        split,
        builders.text_encoder(config.language),
        config.evaluation.batch_size,
        output_path=out,
        policy=builders.precision(config.training, config.model, config.data)[0],
    )  # as a training run
    np.save(pathlib.Path(out).with_suffix(".npy"), table)
    for row_name, names in list(zip(labels.row_names, labels.names))[:10]:
        print(f"{row_name}: {', '.join(names)}")
    print(f"wrote {out} and the {table.shape} table beside it")


if __name__ == "__main__":
    sys.exit(main())
