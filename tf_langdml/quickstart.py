"""Train a language-guided embedder with model.fit on toy data (offline, ~1 minute on CPU).

Run: python -m tf_langdml.quickstart
"""

import tf_langdml  # first: binds tf.keras to Keras 2 (tf-keras) before TensorFlow loads  # isort: skip
import numpy as np
import tensorflow as tf
from tf_langdml import keras

keras.utils.set_random_seed(0)

# Toy data: 8 classes x 4 images of 64x64 RGB in [0, 255], labels 0..7.
rng = np.random.default_rng(0)
labels = np.repeat(np.arange(8), 4).astype("int32")
prototypes = rng.uniform(0, 255, (8, 64, 64, 3))
images = np.clip(prototypes[labels] + rng.normal(0, 25, (32, 64, 64, 3)), 0, 255).astype("float32")

# One language embedding per class (expert-label guidance, ELG). Random here; in
# practice the text-encoder embeddings of the class names, e.g. "a photo of a sparrow".
language_table = rng.normal(size=(8, 384)).astype("float32")

# ResNet50 -> global average pool -> Dense(128) -> L2 norm; BatchNorm statistics frozen.
# Real runs use weights="imagenet" (or a local weights file) at 224x224.
embedder = tf_langdml.build_embedder("resnet50", weights=None, embed_dim=128, input_shape=(64, 64, 3))
model = tf_langdml.LanguageGuidedModel(embedder, language_table)
model.compile(
    optimizer=keras.optimizers.Adam(1e-4),
    dml_loss="multisimilarity",  # the paper's defaults: 2, 40, margin 0.1, threshold 0.5
    language_weight=7.5,  # ω
    weight_decay=4e-4,  # coupled L2, as the paper's Adam
)

# Batches of 4 classes x 4 images (the data is sorted by class), so every image has positives.
dataset = tf.data.Dataset.from_tensor_slices((images, labels)).batch(16)
history = model.fit(dataset, epochs=3, verbose=2)

embeddings = model.predict(images[:4], verbose=0)  # (4, 128), unit length
print("final loss", round(history.history["loss"][-1], 4), "embeddings", embeddings.shape)
