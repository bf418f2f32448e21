"""Durations as people read them (``3 min 12 s``), for progress lines. No TensorFlow, nothing from tf_langdml.

Below :mod:`tf_langdml.runs` on purpose: the image passes of :mod:`tf_langdml.inference`
and the run counter of :mod:`tf_langdml.runs.progress` both print elapsed times.
"""


def format_duration(seconds: float) -> str:
    """``45 s``, ``3 min 12 s``, ``2 h 05 min``: whole seconds, the two largest units."""
    seconds = max(0, int(round(seconds)))
    hours, rest = divmod(seconds, 3600)
    minutes, seconds = divmod(rest, 60)
    if hours:
        return f"{hours} h {minutes:02d} min"
    if minutes:
        return f"{minutes} min {seconds:02d} s"
    return f"{seconds} s"
