"""RunProgress: run i/N lines with elapsed time and an estimate from the runs that trained."""

import io

import pytest

from tf_langdml.runs.progress import RunProgress, format_duration


class Clock:
    def __init__(self):
        self.now = 1000.0

    def __call__(self):
        return self.now


@pytest.mark.parametrize(
    "seconds,text", [(0, "0 s"), (44.6, "45 s"), (192, "3 min 12 s"), (7500, "2 h 05 min"), (-3, "0 s")]
)
def test_durations_are_read_in_two_units(seconds, text):
    assert format_duration(seconds) == text


def test_lines_count_runs_and_estimate_from_trained_runs_only():
    clock, stream = Clock(), io.StringIO()
    progress = RunProgress(4, stream=stream, clock=clock)
    progress.start("baseline")
    clock.now += 120
    progress.finish()
    progress.start("elg")  # already complete: no time, not in the mean
    progress.finish(trained=False)
    clock.now += 60
    progress.start("plg")
    lines = stream.getvalue().splitlines()
    assert lines[0] == "tf_langdml: run 1/4 (baseline): 0 s elapsed, no estimate yet"
    # The estimate covers the run starting and those after it, at the mean trained run (120 s): 3 x 120 s.
    assert lines[1] == "tf_langdml: run 2/4 (elg): 2 min 00 s elapsed, about 6 min 00 s left"
    # The skipped run lowered the count, not the mean: 2 x 120 s.
    assert lines[2] == "tf_langdml: run 3/4 (plg): 3 min 00 s elapsed, about 4 min 00 s left"


def test_misuse_is_refused():
    with pytest.raises(ValueError, match="at least one run"):
        RunProgress(0)
    with pytest.raises(RuntimeError, match="without start"):
        RunProgress(1, stream=io.StringIO()).finish()
