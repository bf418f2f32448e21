"""Gallery search: the exported ``search_embeddings`` signature against its matmul floor and faiss-cpu, side by side.

For each gallery size (default 100,000 and 1,000,000 random 128-d unit vectors, seeded),
one export holds the gallery (``export_embedder(..., gallery=...)``, toy embedder: only
the gallery part is timed) and is loaded back with ``tf.saved_model.load``, as TF Serving
would load it. Beside it, in the same rounds:

- ``floor``: one bare ``tf.matmul`` of the same shapes (the batch against the whole
  gallery, a float32 variable) and a max over each row, so that nothing but the matmul
  is measured (the max reads the scores once; without it the matmul's result is unused).
  This is what an exact search cannot go below: every score has to be computed.
- ``plain top_k``: the same chunked scan with each chunk's top-k taken by one
  ``tf.math.top_k`` over the chunk's scores (the selection before the group maxima of
  :func:`tf_langdml.top_k._top_k_by_groups`), traced here as a ``tf.function``.
- ``faiss``: the same vectors in a faiss ``IndexFlatIP`` (exact inner product).

Round after round, one batch of random unit queries is searched by each (the order
rotating each round so that drift hits all alike); the first call of each is not
timed (tracing, allocation). Printed per gallery: median and best milliseconds per
batch, queries per second, the ratios signature / floor, plain top_k / floor and
signature / faiss, the process's peak RSS, and agreement with faiss: the top-k ids
must be the same wherever the scores are not tied (a rank whose score differs from its
neighbours' by more than 1e-5), and the scores within 1e-5.

The ``search`` signature (image bytes in) is the same top-k graph after the embedder;
its time is the embedding pass (see language_overhead.py / precision figures) plus this.

Needs faiss-cpu (``pip install -e ".[benchmark]"``). Writes nothing but a temporary
folder, removed at the end.

    .venv/bin/python benchmarks/search.py [--sizes 100000,1000000] [--batch 64] [--k 10] [--rounds 8] [--quick]
"""

import argparse
import contextlib
import os
import resource
import shutil
import statistics
import tempfile
import time

import tf_langdml  # noqa: F401  (first: binds tf.keras to tf-keras before TensorFlow loads)

# isort: split
import numpy as np
import tensorflow as tf

from tf_langdml import top_k
from tf_langdml.export import export_embedder
from tf_langdml.gallery import Gallery
from tf_langdml.models import build_embedder
from tf_langdml.models.precision import read_cpu_flags
from tf_langdml.top_k import DEFAULT_CHUNK_ELEMENTS, top_k_in_chunks


def unit_rows(rng, count, dim):
    vectors = rng.standard_normal((count, dim), dtype=np.float32)
    return vectors / np.linalg.norm(vectors, axis=1, keepdims=True)


def agreement(ids, scores, reference_ids, reference_scores, tolerance=1e-5):
    """(ranks whose ids differ at an untied score, largest score difference)."""
    padded = np.pad(reference_scores.astype(np.float64), ((0, 0), (1, 1)), constant_values=np.inf)
    gaps = np.minimum(np.abs(padded[:, 1:-1] - padded[:, :-2]), np.abs(padded[:, 1:-1] - padded[:, 2:]))
    untied = gaps > tolerance
    return int(np.sum((ids != reference_ids) & untied)), float(np.max(np.abs(scores - reference_scores)))


@contextlib.contextmanager
def plain_top_k_per_chunk():
    """Inside the block, top_k_in_chunks traces the one-top_k-per-chunk selection (no group maxima)."""
    factor = top_k.GROUPED_SELECTION_FACTOR
    top_k.GROUPED_SELECTION_FACTOR = 2**30  # no k passes the test for the grouped selection
    try:
        yield
    finally:
        top_k.GROUPED_SELECTION_FACTOR = factor


def run(size, args, folder):
    import faiss

    rng = np.random.default_rng(size)
    vectors = unit_rows(rng, size, args.dim)
    embedder = build_embedder("toy_cnn", weights=None, embed_dim=args.dim, input_shape=(32, 32, 3))
    gallery = Gallery(
        vectors,
        np.char.add("item/", np.arange(size).astype(str)),
        np.char.add("class ", (np.arange(size) % 1000).astype(str)),
    )
    started = time.perf_counter()
    path = export_embedder(embedder, f"{folder}/g{size}", gallery=gallery, chunk_elements=args.chunk_elements)
    export_seconds = time.perf_counter() - started
    search = tf.saved_model.load(str(path)).signatures["search_embeddings"]
    index = faiss.IndexFlatIP(args.dim)
    index.add(vectors)
    k = tf.constant(args.k, tf.int32)
    variable = tf.Variable(vectors, trainable=False)
    spec = tf.TensorSpec([None, args.dim], tf.float32)

    @tf.function(input_signature=[spec])
    def bare_matmul(queries):
        return tf.reduce_max(tf.matmul(queries, variable, transpose_b=True), axis=1)

    with plain_top_k_per_chunk():
        plain = tf.function(
            lambda queries: top_k_in_chunks(queries, variable, k, args.chunk_elements), input_signature=[spec]
        ).get_concrete_function()

    def signature(queries):
        outputs = search(embeddings=tf.constant(queries), k=k)
        return outputs["indices"].numpy(), outputs["scores"].numpy()

    def faiss_search(queries):
        scores, ids = index.search(queries, args.k)
        return ids, scores

    sides = {
        "signature": signature,
        "floor": lambda queries: bare_matmul(tf.constant(queries)).numpy(),
        "plain top_k": lambda queries: [tensor.numpy() for tensor in plain(tf.constant(queries))],
        "faiss": faiss_search,
    }
    warm = unit_rows(rng, args.batch, args.dim)
    for side in sides.values():
        side(warm)
    times = {name: [] for name in sides}
    wrong, largest = 0, 0.0
    names = list(sides)
    for round_index in range(args.rounds):
        queries = unit_rows(rng, args.batch, args.dim)
        results = {}
        for name in names[round_index % len(names) :] + names[: round_index % len(names)]:
            started = time.perf_counter()
            results[name] = sides[name](queries)
            times[name].append(time.perf_counter() - started)
        round_wrong, round_largest = agreement(*results["signature"], *results["faiss"])
        wrong, largest = wrong + round_wrong, max(largest, round_largest)
    median = {name: statistics.median(values) for name, values in times.items()}

    def timing(name):
        return (
            f"{name} {median[name] * 1e3:7.1f} ms/batch (best {min(times[name]) * 1e3:.1f}, "
            f"{args.batch / median[name]:.0f} q/s)"
        )

    print(
        f"gallery {size:>9,} x {args.dim}  export {export_seconds:5.1f} s   "
        + "   ".join(timing(name) for name in sides)
        + f"   ratios: signature / floor {median['signature'] / median['floor']:.2f}, "
        f"plain top_k / floor {median['plain top_k'] / median['floor']:.2f}, "
        f"signature / faiss {median['signature'] / median['faiss']:.2f}   "
        f"untied ids differing from faiss {wrong}/{args.rounds * args.batch * args.k}, "
        f"max |score diff| {largest:.1e}   "
        f"peak RSS {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20:.1f} GiB",
        flush=True,
    )
    return median["signature"] / median["floor"], wrong


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--sizes", default="100000,1000000", help="gallery sizes, comma-separated")
    parser.add_argument("--dim", type=int, default=128)
    parser.add_argument("--batch", type=int, default=64, help="queries per request")
    parser.add_argument("--k", type=int, default=10)
    parser.add_argument("--rounds", type=int, default=8, help="timed batches per side")
    parser.add_argument(
        "--chunk-elements",
        type=int,
        default=DEFAULT_CHUNK_ELEMENTS,
        help="scores per gallery chunk in the signature (the export's default)",
    )
    parser.add_argument("--quick", action="store_true", help="a smoke check: one 20,000-item gallery, 3 rounds")
    args = parser.parse_args()
    sizes = [20_000] if args.quick else [int(size) for size in args.sizes.split(",")]
    if args.quick:
        args.rounds = 3
    import faiss

    print(
        f"TensorFlow {tf.__version__}, {tf.config.threading.get_intra_op_parallelism_threads() or 'all'} intra-op "
        f"threads; faiss {faiss.__version__}, {faiss.omp_get_max_threads()} OpenMP threads; batch {args.batch}, "
        f"k {args.k}, {args.rounds} rounds; median (best) of the timed batches"
    )
    flags = read_cpu_flags() or frozenset()
    shown = [flag for flag in ("avx2", "fma", "avx512f", "avx512_bf16", "amx_bf16") if flag in flags]
    print(f"CPU flags (of those that matter here): {' '.join(shown) or 'unread'}; {os.cpu_count()} logical CPUs")
    folder = tempfile.mkdtemp(prefix="tf_langdml_search_benchmark_")
    try:
        for size in sizes:
            run(size, args, folder)
    finally:
        shutil.rmtree(folder, ignore_errors=True)


if __name__ == "__main__":
    main()
