"""Read a PyTorch state dict saved in the legacy (non-zip) format, without torch.

``torch.save(..., _use_new_zipfile_serialization=False)`` writes five things one after
another: a pickled magic number, a pickled protocol version, pickled system info, the
pickled object (tensors appear as ``torch._utils._rebuild_tensor_v2(storage, offset,
size, stride, ...)`` with storages as persistent ids ``("storage", type, key, location,
numel)``), a pickled list of storage keys, then each storage's raw bytes in that order,
each preceded by its element count as a little-endian int64.

The unpickler here is restricted: it builds only ordered dicts and tensors and refuses
any other global, so a hostile file cannot run code.
"""

import collections
import pickle
import struct

import numpy as np

_MAGIC_NUMBER = 0x1950A86A20F9469CFC6C
_PROTOCOL_VERSION = 1001
_STORAGE_DTYPES = {
    "FloatStorage": np.float32,
    "DoubleStorage": np.float64,
    "HalfStorage": np.float16,
    "LongStorage": np.int64,
    "IntStorage": np.int32,
    "ShortStorage": np.int16,
    "CharStorage": np.int8,
    "ByteStorage": np.uint8,
    "BoolStorage": np.bool_,
}


class _StorageType:
    def __init__(self, name):
        self.dtype = np.dtype(_STORAGE_DTYPES[name])


class _Storage:
    def __init__(self, key, dtype, numel):
        self.key, self.dtype, self.numel = key, dtype, numel
        self.array = None  # filled after the storage bytes are read


class _Tensor:
    def __init__(self, storage, offset, size, stride):
        self.storage, self.offset, self.size, self.stride = storage, offset, tuple(size), tuple(stride)

    def to_numpy(self):
        data = self.storage.array
        itemsize = data.dtype.itemsize
        if not self.size:
            return data[self.offset].copy()
        view = np.lib.stride_tricks.as_strided(
            data[self.offset :], shape=self.size, strides=[step * itemsize for step in self.stride], writeable=False
        )
        return np.ascontiguousarray(view)


def _rebuild_tensor_v2(storage, storage_offset, size, stride, requires_grad=False, backward_hooks=None, *args):
    return _Tensor(storage, storage_offset, size, stride)


def _rebuild_parameter(data, requires_grad=False, backward_hooks=None, *args):
    return data


class _RestrictedUnpickler(pickle.Unpickler):
    def __init__(self, handle, storages):
        super().__init__(handle, encoding="latin1")
        self.storages = storages

    def find_class(self, module, name):
        if (module, name) == ("collections", "OrderedDict"):
            return collections.OrderedDict
        if (module, name) == ("torch._utils", "_rebuild_tensor_v2"):
            return _rebuild_tensor_v2
        if (module, name) == ("torch._utils", "_rebuild_parameter"):
            return _rebuild_parameter
        if module == "torch" and name in _STORAGE_DTYPES:
            return _StorageType(name)
        raise pickle.UnpicklingError(
            f"Refusing to load {module}.{name}: a legacy torch state dict holds only tensors and ordered dicts."
        )

    def persistent_load(self, saved_id):
        kind, storage_type, key, _location, numel = saved_id[:5]
        if kind != "storage" or not isinstance(storage_type, _StorageType):
            raise pickle.UnpicklingError(f"Unexpected persistent id {saved_id!r}.")
        if key not in self.storages:
            self.storages[key] = _Storage(key, storage_type.dtype, numel)
        return self.storages[key]


def read_torch_legacy_state_dict(path):
    """name -> numpy array of a legacy-format ``.pth`` state dict."""
    with open(path, "rb") as handle:
        if pickle.load(handle) != _MAGIC_NUMBER:
            raise ValueError(
                f"{path} is not a legacy-format torch file (wrong magic number); files written by torch >= 1.6 "
                "are zip archives, which this reader does not handle."
            )
        if pickle.load(handle) != _PROTOCOL_VERSION:
            raise ValueError(f"{path}: unsupported torch legacy protocol version.")
        pickle.load(handle)  # system info: endianness and type sizes
        storages = {}
        state = _RestrictedUnpickler(handle, storages).load()
        keys = pickle.load(handle)
        for key in keys:
            storage = storages[key]
            (numel,) = struct.unpack("<q", handle.read(8))
            raw = handle.read(numel * storage.dtype.itemsize)
            if len(raw) != numel * storage.dtype.itemsize:
                raise ValueError(f"{path} is truncated (storage {key} is incomplete).")
            storage.array = np.frombuffer(raw, dtype=storage.dtype.newbyteorder("<")).astype(storage.dtype)
    if not isinstance(state, dict):
        raise ValueError(f"{path} holds a {type(state).__name__}, not a state dict.")
    return collections.OrderedDict((name, value.to_numpy()) for name, value in state.items() if isinstance(value, _Tensor))
