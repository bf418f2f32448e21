"""Wall time of the commands that must answer without loading TensorFlow: --help and config validation.

Each command runs as a fresh process (``python -m tf_langdml ...``, as the console
script does) ``--repeats`` times; the table shows the median and the slowest, and
whether TensorFlow was imported (it must not be). The aim is well under 1 s each.

    .venv/bin/python benchmarks/cli_startup.py [--repeats 5]
"""

import argparse
import pathlib
import statistics
import subprocess
import sys
import time

ROOT = pathlib.Path(__file__).resolve().parents[1]

# Run the CLI as `python -m tf_langdml` would, then report whether TensorFlow got imported.
PROBE = (
    "import sys\n"
    "from tf_langdml.cli import main\n"
    "try:\n"
    "    code = main(sys.argv[1:])\n"
    "except SystemExit as exit:\n"
    "    code = exit.code\n"
    "print('tensorflow imported:', 'tensorflow' in sys.modules, file=sys.stderr)\n"
)

COMMANDS = {
    "tf-langdml --help": ["--help"],
    "tf-langdml train --help": ["train", "--help"],
    "tf-langdml train (config error)": [
        "train",
        "--config",
        "configs/cub200_plg_128.yaml",
        "--set",
        "training.epoch=3",
    ],
    "tf-langdml pseudolabel (config error)": ["pseudolabel", "--config", "configs/missing.yaml", "--out", "x.json"],
}


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    print(f"{'command':42s}{'median s':>10s}{'max s':>10s}  tensorflow imported")
    for title, argv in COMMANDS.items():
        times, imported = [], set()
        for _ in range(args.repeats):
            start = time.perf_counter()
            result = subprocess.run([sys.executable, "-c", PROBE, *argv], capture_output=True, text=True, cwd=ROOT)
            times.append(time.perf_counter() - start)
            imported.add("tensorflow imported: True" in result.stderr)
        print(f"{title:42s}{statistics.median(times):10.3f}{max(times):10.3f}  {sorted(imported)}")


if __name__ == "__main__":
    main()
