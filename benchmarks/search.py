"""Gallery search: the exported ``search_embeddings`` signature against its matmul floor and faiss-cpu, side by side.

For each gallery size (default 100,000 and 1,000,000 random 128-d unit vectors, seeded),
one export holds the gallery (``export_embedder(..., gallery=...)``, toy embedder: only
the gallery part is timed) and is loaded back with ``tf.saved_model.load``, as TF Serving
would load it. Beside it, in the same rounds:

- ``floor``: one bare ``tf.matmul`` of the same shapes (the batch against the whole
  gallery, a float32 variable) and a max over each row, so that nothing but the matmul
  is measured (the max reads the scores once; without it the matmul's result is unused).
  This is what an exact search cannot go below: every score has to be computed.
- ``floor, bfloat16``: the same bare matmul with the queries and a bfloat16 copy of the
  gallery (scores rounded to bfloat16: no CPU kernel gives float32 output for bfloat16
  inputs), to show what a bfloat16 gallery could gain on this CPU.
- ``chunked matmul``: the signature's scan of the gallery in chunks (the same rows per
  chunk) with only a running max of the scores: the scan's own floor, no selection.
- ``grouped``: :func:`tf_langdml.top_k.top_k_in_chunks` as the signature runs it (each
  chunk's top-k read through the best score of each group of rows), traced here as a
  ``tf.function`` on the gallery variable: the signature minus its request handling
  (the queries' finiteness check and normalisation, the item ids and class names).
- ``plain top_k``: the same scan with each chunk's top-k taken by one ``tf.math.top_k``
  over the chunk's scores (the selection before the group maxima).
- ``faiss``: the same vectors in a faiss ``IndexFlatIP`` (exact inner product).

Before the galleries, where a chunk's time goes once its scores exist: the selection alone
on one chunk's worth of random scores (the batch x the signature's rows per chunk), by one
``top_k``, by the group maxima, and a bare ``reduce_max`` over the same scores (one read:
what any selection costs at least), median of 30 calls each.

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
from tf_langdml.models.precision import reported_cpu_flags
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


def time_selection(args):
    """Median ms of selecting the top k from one chunk of scores: plain top_k, group maxima, a bare max."""
    rows = int(top_k.chunk_rows(args.batch, args.chunk_elements))
    scores = tf.constant(np.random.default_rng(0).standard_normal((args.batch, rows), dtype=np.float32))
    k = tf.constant(args.k)
    functions = {
        "one top_k": tf.function(lambda scores: tf.math.top_k(scores, k)),
        "group maxima": tf.function(lambda scores: top_k._top_k_by_groups(scores, k)),
        "reduce_max only": tf.function(lambda scores: tf.reduce_max(scores, axis=1)),
    }
    medians = {}
    for name, function in functions.items():
        function(scores)
        times = []
        for _ in range(30):
            started = time.perf_counter()
            tf.nest.map_structure(lambda tensor: tensor.numpy(), function(scores))
            times.append(time.perf_counter() - started)
        medians[name] = statistics.median(times) * 1e3
    print(
        f"selection of the top {args.k} from one chunk of {args.batch} x {rows:,} scores: "
        + ", ".join(f"{name} {value:.2f} ms" for name, value in medians.items())
        + f"  (one top_k / group maxima {medians['one top_k'] / medians['group maxima']:.1f})",
        flush=True,
    )


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

    variable_bfloat16 = tf.Variable(tf.cast(vectors, tf.bfloat16), trainable=False)

    @tf.function(input_signature=[spec])
    def bare_matmul_bfloat16(queries):
        scores = tf.matmul(tf.cast(queries, tf.bfloat16), variable_bfloat16, transpose_b=True)
        return tf.cast(tf.reduce_max(scores, axis=1), tf.float32)

    @tf.function(input_signature=[spec])
    def chunked_matmul(queries):
        rows = top_k.chunk_rows(tf.shape(queries)[0], args.chunk_elements)

        def scan(start, best):
            scores = tf.matmul(queries, variable[start : start + rows], transpose_b=True)
            return start + rows, tf.maximum(best, tf.reduce_max(scores, axis=1))

        best = tf.fill([tf.shape(queries)[0]], -np.inf)
        return tf.while_loop(lambda start, best: start < size, scan, (0, best), parallel_iterations=1)[1]

    def top_k_function():
        return tf.function(
            lambda queries: top_k_in_chunks(queries, variable, k, args.chunk_elements), input_signature=[spec]
        ).get_concrete_function()

    grouped = top_k_function()
    with plain_top_k_per_chunk():
        plain = top_k_function()

    def signature(queries):
        outputs = search(embeddings=tf.constant(queries), k=k)
        return outputs["indices"].numpy(), outputs["scores"].numpy()

    def faiss_search(queries):
        scores, ids = index.search(queries, args.k)
        return ids, scores

    sides = {
        "signature": signature,
        "floor": lambda queries: bare_matmul(tf.constant(queries)).numpy(),
        "floor, bfloat16": lambda queries: bare_matmul_bfloat16(tf.constant(queries)).numpy(),
        "chunked matmul": lambda queries: chunked_matmul(tf.constant(queries)).numpy(),
        "grouped": lambda queries: [tensor.numpy() for tensor in grouped(tf.constant(queries))],
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
        + "   ratios to the floor: "
        + ", ".join(f"{name} {median[name] / median['floor']:.2f}" for name in sides if name != "floor")
        + f";  signature / faiss {median['signature'] / median['faiss']:.2f}   "
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
    shown = reported_cpu_flags()
    print(f"CPU flags (of those that matter here): {' '.join(shown) or 'none'}; {os.cpu_count()} logical CPUs")
    time_selection(args)
    folder = tempfile.mkdtemp(prefix="tf_langdml_search_benchmark_")
    try:
        for size in sizes:
            run(size, args, folder)
    finally:
        shutil.rmtree(folder, ignore_errors=True)


if __name__ == "__main__":
    main()
