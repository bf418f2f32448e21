"""Experiment runs: a YAML config -> a trained, evaluated run directory.

- :mod:`~tf_langdml.runs.schema`: the config as frozen dataclasses, YAML in and out,
  unknown keys and wrong types named with "did you mean"; imports no TensorFlow.
- :mod:`~tf_langdml.runs.builders`: one function per config section (data, text
  encoder, language table, embedder, model, callbacks); the only place that turns
  config values into library calls. The library's own errors do the validating,
  re-raised as :class:`~tf_langdml.runs.schema.ConfigError` naming the config key.
- :mod:`~tf_langdml.runs.run_dir`: the run directory's layout, lock, config identity and records;
  :mod:`~tf_langdml.runs.checkpoints`: its resume state; :mod:`~tf_langdml.runs.trained_embedder`:
  the trained embedder saved and restored (:func:`~tf_langdml.runs.trained_embedder.restore_embedder`).
- :mod:`~tf_langdml.runs.train`: the resumable training loop and the final metrics.
- :mod:`~tf_langdml.runs.serving`: a finished run's embedder exported, or a gallery indexed
  with it (the run-directory side of :mod:`tf_langdml.export` and :mod:`tf_langdml.gallery`).
- ``demo.yaml``: the base config of ``tf-langdml demo`` (``configs/demo.yaml`` links to it).
"""
