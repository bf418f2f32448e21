"""MultiWorkerMirroredStrategy: two worker processes on localhost train a few steps and end identical."""

import json
import socket
import subprocess
import sys

import numpy as np
from helpers import quiet_env

WORKER = r"""
import json, sys
import tf_langdml
import numpy as np
import tensorflow as tf
from tf_langdml import keras
from tf_langdml.models import LanguageGuidedModel, build_embedder
strategy = tf.distribute.MultiWorkerMirroredStrategy()
rng = np.random.default_rng(0)
labels = np.repeat(np.arange(4), 2).astype("int32")
images = rng.uniform(0, 255, (8, 16, 16, 3)).astype("float32")
table = rng.normal(size=(4, 1, 5)).astype("float32")
with strategy.scope():
    keras.utils.set_random_seed(1)
    embedder = build_embedder("toy_cnn", weights=None, embed_dim=8, input_shape=(16, 16, 3))
    model = LanguageGuidedModel(embedder, language_table=table)
    model.compile(optimizer=keras.optimizers.SGD(0.5), language_weight=1.0)
data = tf.data.Dataset.from_tensors((images, labels)).repeat()
history = model.fit(data, steps_per_epoch=3, epochs=1, verbose=0).history
np.save(sys.argv[1], np.concatenate([w.ravel() for w in model.embedder.get_weights()]))
print(json.dumps({"replicas": strategy.num_replicas_in_sync, "loss": history["loss"][0],
                  "steps": int(model.optimizer.iterations.numpy())}))
"""


def free_ports(count):
    sockets = [socket.socket() for _ in range(count)]
    for sock in sockets:
        sock.bind(("localhost", 0))
    ports = [sock.getsockname()[1] for sock in sockets]
    for sock in sockets:
        sock.close()
    return ports


def test_two_workers_end_with_identical_weights(tmp_path):
    cluster = {"worker": [f"localhost:{port}" for port in free_ports(2)]}
    workers = []
    for index in range(2):
        environment = quiet_env(TF_CONFIG=json.dumps({"cluster": cluster, "task": {"type": "worker", "index": index}}))
        workers.append(
            subprocess.Popen(
                [sys.executable, "-c", WORKER, str(tmp_path / f"worker{index}.npy")],
                env=environment,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                text=True,
            )
        )
    outputs = []
    for worker in workers:
        stdout, stderr = worker.communicate(timeout=600)
        assert worker.returncode == 0, stderr[-3000:]
        outputs.append(json.loads(stdout.strip().splitlines()[-1]))
    assert [output["replicas"] for output in outputs] == [2, 2]
    assert [output["steps"] for output in outputs] == [3, 3]
    first, second = np.load(tmp_path / "worker0.npy"), np.load(tmp_path / "worker1.npy")
    # Exact on purpose: the all-reduce hands both workers the same gradient and each computes the same
    # global-batch loss with the same ops on the same machine, so the strategy promises bit-identity.
    np.testing.assert_array_equal(first, second)
    assert outputs[0]["loss"] == outputs[1]["loss"]
