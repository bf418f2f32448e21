"""retrieval_metrics at SOP test scale against faiss exact search, side by side in one run.

60,502 L2-normalised 512-d embeddings in 11,316 classes of 2-12 images (SOP's test
split shape), clustered with noise so that Recall@1 is SOP-like. Each side runs in its
own fresh process, so peak resident memory is measured per side (TensorFlow's import
included):

- tf_langdml: ``retrieval_metrics(ks=(1, 2, 4, 8, 10, 100, 1000))`` -- recall@k, map@r
  and map@1000, exact;
- faiss-cpu ``IndexFlatIP`` exact search with k = 1001 (the neighbours the paper's code
  asks faiss for; metrics not even computed).

Targets: peak RSS <= 3 GiB, time ratio tf_langdml / faiss <= 0.5.

    .venv/bin/pip install faiss-cpu   # or: pip install -e ".[benchmark]"
    .venv/bin/python benchmarks/retrieval_eval.py [--noise 2.0]
"""

import argparse
import json
import os
import subprocess
import sys
import tempfile

import numpy as np

NUM_IMAGES, NUM_CLASSES, DIM = 60_502, 11_316, 512

TF_SIDE = """
import json, resource, sys, time
import tf_langdml
import numpy as np
from tf_langdml.evaluation import retrieval_metrics
embeddings, labels = np.load(sys.argv[1]), np.load(sys.argv[2])
start, cpu = time.perf_counter(), time.process_time()
metrics = retrieval_metrics(embeddings, labels, ks=(1, 2, 4, 8, 10, 100, 1000))
print(json.dumps({"seconds": time.perf_counter() - start, "cpu": time.process_time() - cpu,
                  "peak_rss_gib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20, "metrics": metrics}))
"""

FAISS_SIDE = """
import json, resource, sys, time
import faiss
import numpy as np
embeddings = np.load(sys.argv[1])
start, cpu = time.perf_counter(), time.process_time()
index = faiss.IndexFlatIP(embeddings.shape[1])
index.add(embeddings)
similarities, neighbours = index.search(embeddings, 1001)
print(json.dumps({"seconds": time.perf_counter() - start, "cpu": time.process_time() - cpu,
                  "peak_rss_gib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20,
                  "threads": faiss.omp_get_max_threads()}))
"""


def sop_like_embeddings(noise, seed=0):
    rng = np.random.default_rng(seed)
    sizes = np.full(NUM_CLASSES, 2)
    extra = NUM_IMAGES - sizes.sum()
    while extra > 0:  # spread the remaining images, at most 12 per class
        grow = rng.choice(np.flatnonzero(sizes < 12), size=min(extra, NUM_CLASSES), replace=False)
        sizes[grow[:extra]] += 1
        extra = NUM_IMAGES - sizes.sum()
    labels = np.repeat(np.arange(NUM_CLASSES), sizes)
    centres = rng.standard_normal((NUM_CLASSES, DIM), dtype=np.float32)
    embeddings = centres[labels] + noise * rng.standard_normal((NUM_IMAGES, DIM), dtype=np.float32)
    embeddings /= np.linalg.norm(embeddings, axis=1, keepdims=True)
    return embeddings, labels


def run(code, *arguments):
    result = subprocess.run(
        [sys.executable, "-c", code, *arguments],
        capture_output=True,
        text=True,
        env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"},
    )
    if result.returncode != 0:
        raise RuntimeError(result.stderr[-3000:])
    return json.loads(result.stdout.strip().splitlines()[-1])


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--noise", type=float, default=2.4, help="per-dimension noise around the class centres")
    args = parser.parse_args()
    try:
        import faiss  # noqa: F401  (only checks the extra is installed; the comparison imports it again)
    except ImportError:
        sys.exit("faiss-cpu is a benchmark extra: .venv/bin/pip install faiss-cpu")
    embeddings, labels = sop_like_embeddings(args.noise)
    with tempfile.TemporaryDirectory() as folder:
        embeddings_path, labels_path = os.path.join(folder, "embeddings.npy"), os.path.join(folder, "labels.npy")
        np.save(embeddings_path, embeddings)
        np.save(labels_path, labels)
        ours = run(TF_SIDE, embeddings_path, labels_path)
        theirs = run(FAISS_SIDE, embeddings_path)
    print(
        f"{NUM_IMAGES} x {DIM} float32, {NUM_CLASSES} classes; each side in a fresh process on {os.cpu_count()} cores"
    )
    shown = ", ".join(f"{name} {value:.4f}" for name, value in ours["metrics"].items())
    print(f"metrics: {shown}")
    print(
        f"tf_langdml retrieval_metrics : {ours['seconds']:7.1f} s ({ours['cpu']:6.1f} s CPU)   "
        f"peak RSS {ours['peak_rss_gib']:.2f} GiB (target <= 3)"
    )
    print(
        f"faiss IndexFlatIP, k = 1001  : {theirs['seconds']:7.1f} s ({theirs['cpu']:6.1f} s CPU)   "
        f"peak RSS {theirs['peak_rss_gib']:.2f} GiB, {theirs['threads']} threads"
    )
    print(
        f"ratio tf_langdml / faiss     : {ours['seconds'] / theirs['seconds']:7.2f} wall, "
        f"{ours['cpu'] / theirs['cpu']:.2f} CPU  (target <= 0.5)"
    )


if __name__ == "__main__":
    main()
