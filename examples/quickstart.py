"""Train a language-guided embedder with model.fit on the offline demo set (its time: README.md, "The two commands").

Run from the repository root, with tf_langdml installed (``make install``): python examples/quickstart.py
"""

import tf_langdml  # first: binds tf.keras to Keras 2 (tf-keras) before TensorFlow loads  # isort: skip
from tf_langdml import keras
from tf_langdml.data import load_demo, make_train_dataset

keras.utils.set_random_seed(0)

# The offline demo set: 290 emoji classes, each drawn in two designs (Noto, Twemoji);
# 148 classes train, 142 unseen classes test. Labels are 0..C-1 within each split.
data = load_demo()

# Expert-label guidance (ELG): one language embedding per training class, from the
# offline MiniLM text encoder ("a photo of a {}"). The first call builds the encoder
# into the cache (~10 s); embeddings are cached on disk. Shape (148, 1, 384).
language_table = tf_langdml.expert_language_table(data.train_class_names, "minilm", template="a photo of a {}")

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

# Class-balanced batches: 16 classes x 2 images, random resized crop + flip, infinite.
train = make_train_dataset(data.train_split, batch_size=32, examples_per_class=2, seed=0, image_size=64)
history = model.fit(train, steps_per_epoch=10, epochs=3, verbose=2)

images, _ = next(iter(train))
embeddings = model.predict(images[:4], verbose=0)  # (4, 128), unit length
print("final loss", round(history.history["loss"][-1], 4), "embeddings", embeddings.shape)
