"""The README's quick-start is examples/quickstart.py, and it runs as written."""

import pathlib
import re
import sys

import pytest
from helpers import quiet_env, run_process

ROOT = pathlib.Path(__file__).resolve().parents[1]


def test_readme_quickstart_is_the_module():
    readme = (ROOT / "README.md").read_text()
    module = (ROOT / "examples" / "quickstart.py").read_text()
    blocks = re.findall(r"```python\n(.*?)```", readme, flags=re.S)
    code = module[module.index("import tf_langdml") :]
    assert code in blocks


@pytest.mark.slow  # minutes of ResNet50 steps (README.md states the time); make test-slow and make quickstart run it
def test_quickstart_trains_offline():
    result = run_process(
        [sys.executable, "examples/quickstart.py"], env=quiet_env(drop=["TF_USE_LEGACY_KERAS"]), cwd=ROOT
    )
    match = re.search(r"final loss ([0-9.]+) embeddings \(4, 128\)", result.stdout)
    assert match, result.stdout[-2000:]
    losses = [float(value) for value in re.findall(r"- loss: ([0-9.]+)", result.stdout)]
    assert len(losses) == 3 and losses[-1] < losses[0], result.stdout
