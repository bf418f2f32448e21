"""Serving is a library: the export and gallery modules import nothing from tf_langdml.runs (issue #27, item 3)."""

import subprocess
import sys


def test_export_and_gallery_import_no_runs_module():
    # A fresh process: this one has long imported tf_langdml.runs through other tests.
    script = (
        "import sys\n"
        "import tf_langdml.export, tf_langdml.gallery, tf_langdml.top_k\n"
        "print(sorted(name for name in sys.modules if name == 'tf_langdml.runs' "
        "or name.startswith('tf_langdml.runs.')))\n"
    )
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stdout.strip().splitlines()[-1] == "[]", result.stdout
