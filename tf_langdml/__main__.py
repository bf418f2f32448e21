"""``python -m tf_langdml``: the tf-langdml command line."""

import sys

import tf_langdml  # noqa: F401  (binds tf.keras to tf-keras before TensorFlow loads)
from tf_langdml.cli import main

sys.exit(main())
