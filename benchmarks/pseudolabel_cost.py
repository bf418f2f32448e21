"""The PLG pseudo-labelling pass against one training epoch over the same split, side by side.

Both sides use the same backbone at the same image size on the offline demo set's
training split (148 classes x 2 images): the pseudo-labelling pass is
`pseudo_label_table` with a fresh cache (eval pipeline, ImageNet classifier forward
pass, top-k, MiniLM embeddings of the chosen names); the epoch is `model.fit` of a
`LanguageGuidedModel` (same backbone, ImageNet weights, embed_dim 128) for
ceil(N / batch) steps of class-balanced batches (traced by one untimed step first; the
pass's own tracing is counted). Target: ratio <= 0.5.

    .venv/bin/python benchmarks/pseudolabel_cost.py [--backbone efficientnet_lite0] [--image-size 224]
"""

import argparse
import math
import tempfile
import time

import tf_langdml  # isort: skip
from tf_langdml import keras
from tf_langdml.data import load_demo, make_train_dataset
from tf_langdml.language import build_text_encoder, pseudo_label_table
from tf_langdml.models import build_imagenet_classifier, classifier_fingerprint


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--backbone", default="efficientnet_lite0", choices=["efficientnet_lite0", "resnet50"])
    parser.add_argument("--image-size", type=int, default=224)
    parser.add_argument("--batch-size", type=int, default=32)
    args = parser.parse_args()
    weights = "imagenet" if args.backbone == "efficientnet_lite0" else None  # no offline ResNet50 weights here

    split = load_demo().train_split
    encoder = build_text_encoder("minilm")
    encoder.encode(["warm up"])  # the encoder is built once per machine; not part of the pass
    classifier = build_imagenet_classifier(args.backbone, weights=weights, image_size=args.image_size)
    with tempfile.TemporaryDirectory() as cache:
        start, cpu = time.perf_counter(), time.process_time()
        table, _ = pseudo_label_table(
            classifier,
            split,
            encoder,
            k=5,
            level="class",
            batch_size=args.batch_size,
            cache_dir=cache,
            verbose=False,
            classifier_key=classifier_fingerprint(classifier),
        )
        pseudo_seconds, pseudo_cpu = time.perf_counter() - start, time.process_time() - cpu

    embedder = tf_langdml.build_embedder(
        args.backbone, weights=weights, embed_dim=128, input_shape=(args.image_size, args.image_size, 3)
    )
    model = tf_langdml.LanguageGuidedModel(embedder, table)
    model.compile(optimizer=keras.optimizers.Adam(1e-5), language_weight=1.0)
    steps = math.ceil(len(split.labels) / args.batch_size)
    train = make_train_dataset(split, args.batch_size, 2, seed=0, image_size=args.image_size)
    model.fit(train, steps_per_epoch=1, epochs=1, verbose=0)  # build and trace, untimed
    start, cpu = time.perf_counter(), time.process_time()
    model.fit(train, steps_per_epoch=steps, epochs=1, verbose=0)
    epoch_seconds, epoch_cpu = time.perf_counter() - start, time.process_time() - cpu

    print(
        f"{args.backbone} at {args.image_size} x {args.image_size}, {len(split.labels)} training images, batch {args.batch_size}"
    )
    print("wall-clock s | CPU s (all threads; wall-clock on this VM sometimes stalls in steps of ~2.5 s)")
    print(
        f"pseudo-labelling pass : {pseudo_seconds:7.1f} | {pseudo_cpu:7.1f}  ({len(split.labels) / pseudo_seconds:6.1f} images/s)"
    )
    print(
        f"one training epoch    : {epoch_seconds:7.1f} | {epoch_cpu:7.1f}  "
        f"({steps} steps, {steps * args.batch_size / epoch_seconds:6.1f} images/s)"
    )
    print(
        f"ratio pass / epoch    : {pseudo_seconds / epoch_seconds:7.2f} | {pseudo_cpu / epoch_cpu:7.2f}  (target <= 0.5)"
    )


if __name__ == "__main__":
    main()
