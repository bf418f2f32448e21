"""Read a PyTorch state dict saved in the legacy (non-zip) format, without torch.

``torch.save(..., _use_new_zipfile_serialization=False)`` writes five pickles one after
another: the magic number, the protocol version, the system info (a dict), the state dict
(tensors appear as ``torch._utils._rebuild_tensor_v2(storage, offset, size, stride, ...)``
with storages as persistent ids ``("storage", type, key, location, numel[, None])``) and
the list of storage keys, then each storage's raw bytes in that order, each preceded by
its element count as a little-endian int64.

What a hostile file can do, and what it cannot:

* All five pickles go through a restricted unpickler. The four metadata pickles may name
  no global and no persistent id, so they hold only plain data (ints, strings, bytes,
  tuples, lists, dicts, sets, bools, None). The state dict may name only
  ``collections.OrderedDict``, ``torch._utils._rebuild_tensor_v2``,
  ``torch._utils._rebuild_parameter`` and the ``torch.<Type>Storage`` types; the last three
  resolve to this module's own stand-ins (the rebuild functions only record their
  arguments, a storage type only names a dtype), and every persistent id must have the
  storage form above. So the only callables a file can reach are ``OrderedDict``, the two
  rebuild stand-ins and methods of plain data and ordered dicts: REDUCE, NEWOBJ, NEWOBJ_EX,
  INST and OBJ can call nothing else, and neither can BUILD (which calls ``__setstate__`` if
  the object has one, else sets attributes). BUILD cannot change anything shared either:
  ``OrderedDict`` is an immutable C type, each reference to a rebuild function gets a fresh
  function, and the records built (storage types and references, tensors) are immutable.
* Before unpickling, each pickle's opcodes are listed (:func:`pickletools.genops`, which
  runs nothing) and the extension-registry opcodes EXT1, EXT2 and EXT4 are refused: the C
  unpickler asks ``find_class`` about an extension code only the first time, after that it
  returns the object cached in ``copyreg`` (which another part of the process may have put
  there), so ``find_class`` alone does not guard them.
* Tensor views are checked against their storage (offset, sizes and strides must stay
  inside it), so a file cannot make the reader read memory outside the file's data.
* Not guarded: memory use. A file can still ask for a large array (for example a
  zero-stride tensor with a huge size).

``tests/models/test_torch_legacy.py`` puts payloads calling ``posix.system``,
``builtins.eval``, ``builtins.exec`` and ``subprocess.Popen`` (through REDUCE with pickle
protocols 0-5, INST, OBJ, NEWOBJ, NEWOBJ_EX and EXT1/2/4 codes, also with the code already
in ``copyreg``'s cache) into each of the five pickles in turn, and a persistent id into each
metadata pickle, and checks that reading refuses the file and nothing ran; it also aims
BUILD at the allowed globals and checks that the reader is unchanged.

A refused global, persistent id or opcode raises :class:`pickle.UnpicklingError` naming the
file, the pickle ("magic number", "protocol version", "system info", "state dict" or
"storage keys") and what was refused; any other malformed file raises :class:`ValueError`
naming the file.
"""

import collections
import copyreg
import io
import pickle
import pickletools
import reprlib
import struct
from typing import NamedTuple

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
_STATE_DICT, _STORAGE_KEYS = "state dict", "storage keys"
_EXTENSION_OPCODES = {"EXT1", "EXT2", "EXT4"}
_ZIP_MAGIC = b"PK\x03\x04"


# The records the state-dict unpickler builds are immutable (tuple subclasses without __dict__
# or __setstate__), so a BUILD opcode aimed at one fails.
class _StorageType(NamedTuple):
    name: str


class _StorageRef(NamedTuple):
    key: str


class _Tensor(NamedTuple):
    storage: object
    offset: object
    size: object
    stride: object


def _rebuild_tensor_v2(storage, storage_offset, size, stride, *args):
    return _Tensor(storage, storage_offset, size, stride)  # checked in _tensor_to_numpy


def _rebuild_parameter(data, *args):
    return data


_STATE_DICT_FUNCTIONS = {
    ("torch._utils", "_rebuild_tensor_v2"): _rebuild_tensor_v2,
    ("torch._utils", "_rebuild_parameter"): _rebuild_parameter,
}


class _Refused(pickle.UnpicklingError):
    """A refused global, persistent id or opcode (passes through the malformed-file wrapper)."""


def _short(value):
    return reprlib.repr(value)


class _RestrictedUnpickler(pickle.Unpickler):
    """Unpickles one of the five pickles; ``storages`` (key -> (dtype, numel)) is filled by the state dict."""

    def __init__(self, stream, path, position, storages):
        super().__init__(stream, encoding="latin1")
        self.path, self.position, self.storages = path, position, storages

    def find_class(self, module, name):
        refused = f"{module}.{name}"[:200]
        if self.position != _STATE_DICT:
            raise _Refused(
                f"Refusing to load {refused} from the {self.position} pickle of {self.path}: this pickle holds only "
                "plain data (ints, strings, tuples, lists, dicts), never a global; the file is not a torch file "
                "or was tampered with."
            )
        if (module, name) == ("collections", "OrderedDict"):
            return collections.OrderedDict  # a C type: immutable, so BUILD cannot change it
        if (module, name) in _STATE_DICT_FUNCTIONS:
            function = _STATE_DICT_FUNCTIONS[(module, name)]
            return lambda *args: function(*args)  # fresh per reference: a BUILD aimed at it changes nothing shared
        if module == "torch" and name in _STORAGE_DTYPES:
            return _StorageType(name)
        raise _Refused(
            f"Refusing to load {refused} from the state dict pickle of {self.path}: a legacy torch state dict holds "
            f"only tensors and ordered dicts (allowed: collections.OrderedDict, torch._utils._rebuild_tensor_v2, "
            f"torch._utils._rebuild_parameter, torch.<Type>Storage for {', '.join(_STORAGE_DTYPES)})."
        )

    def persistent_load(self, saved_id):
        if self.position != _STATE_DICT:
            raise _Refused(
                f"Refusing persistent id {_short(saved_id)} in the {self.position} pickle of {self.path}: only the "
                "state dict refers to storages."
            )
        return _storage_reference(saved_id, self.storages)


def _storage_reference(saved_id, storages):
    """The storage a persistent id ``("storage", torch.<Type>Storage, key, location, numel[, None])`` names."""
    form = "a storage is ('storage', torch.<Type>Storage, key, location, numel[, None])"
    if type(saved_id) is not tuple or len(saved_id) not in (5, 6) or saved_id[0] != "storage":
        raise ValueError(f"unexpected persistent id {_short(saved_id)}; {form}.")
    _kind, storage_type, key, _location, numel, *view = saved_id
    if type(storage_type) is not _StorageType:
        raise ValueError(f"persistent id {_short(saved_id)} names no torch storage type; {form}.")
    if type(key) is not str:
        raise ValueError(f"persistent id {_short(saved_id)} has a storage key that is not a string; {form}.")
    if type(numel) is not int or numel < 0:
        raise ValueError(f"persistent id {_short(saved_id)} has an element count that is not an int >= 0; {form}.")
    if view and view[0] is not None:
        raise ValueError(
            f"persistent id {_short(saved_id)} is a storage view (torch < 1.0 files), which this reader does not "
            "handle; load and re-save the file with torch."
        )
    entry = (np.dtype(_STORAGE_DTYPES[storage_type.name]), numel)
    if storages.setdefault(key, entry) != entry:
        raise ValueError(f"storage {key!r} is declared twice, as {storages[key]} and as {entry}.")
    return _StorageRef(key)


def _load_pickle(stream, path, position, storages=None):
    """Scan the next pickle's opcodes (running nothing), then unpickle it restricted."""
    start = stream.tell()
    try:
        for opcode, arg, offset in pickletools.genops(stream):
            if opcode.name in _EXTENSION_OPCODES:
                named = copyreg._inverted_registry.get(arg)
                raise _Refused(
                    f"Refusing extension code {arg} ({'.'.join(named) if named else 'unregistered'}, opcode "
                    f"{opcode.name} at byte {offset}) in the {position} pickle of {path}: the unpickler would take "
                    "it from copyreg's cache without asking which globals are allowed; torch never writes one."
                )
    except _Refused:
        raise
    except ValueError as error:  # genops: unknown opcode, truncated argument, no STOP
        raise ValueError(f"{path}: the {position} pickle (from byte {start}) is malformed: {error}") from error
    end = stream.tell()
    stream.seek(start)
    try:
        value = _RestrictedUnpickler(stream, path, position, storages).load()
    except _Refused:
        raise
    except Exception as error:  # noqa: BLE001 - any other failure of a hostile or damaged pickle is a bad file
        raise ValueError(
            f"{path}: the {position} pickle (from byte {start}) is malformed: {type(error).__name__}: {error}"
        ) from error
    if stream.tell() != end:
        raise ValueError(f"{path}: the {position} pickle (from byte {start}) does not end where its STOP opcode is.")
    return value


def _read_storages(stream, path, keys, storages):
    """key -> numpy array, for the storage bytes that follow the pickles."""
    if type(keys) is not list or any(type(key) is not str for key in keys):
        raise ValueError(f"{path}: the storage keys pickle holds {_short(keys)}, not a list of key strings.")
    if len(set(keys)) != len(keys) or set(keys) != set(storages):
        raise ValueError(
            f"{path}: the storage keys {_short(keys)} do not list each storage of the state dict "
            f"({_short(sorted(storages))}) exactly once."
        )
    arrays = {}
    for key in keys:
        dtype, declared = storages[key]
        header = stream.read(8)
        if len(header) != 8:
            raise ValueError(f"{path} is truncated (storage {key} is missing).")
        (numel,) = struct.unpack("<q", header)
        if numel != declared:
            raise ValueError(f"{path}: storage {key} holds {numel} elements, but the state dict declares {declared}.")
        raw = stream.read(numel * dtype.itemsize)
        if len(raw) != numel * dtype.itemsize:
            raise ValueError(f"{path} is truncated (storage {key} is incomplete).")
        arrays[key] = np.frombuffer(raw, dtype=dtype.newbyteorder("<")).astype(dtype)
    return arrays


def _is_index(value):
    return type(value) is int and value >= 0


def _tensor_to_numpy(path, name, tensor, arrays):
    """The array a rebuilt tensor views, after checking the view stays inside its storage."""
    storage, offset, size, stride = tensor
    if type(storage) is not _StorageRef:
        raise ValueError(f"{path}: tensor {name!r} is built on {_short(storage)}, not on a storage.")
    data = arrays[storage.key]  # every key was checked against the storage keys list
    if (
        not _is_index(offset)
        or type(size) not in (tuple, list)
        or type(stride) not in (tuple, list)
        or len(size) != len(stride)
        or not all(_is_index(value) for value in (*size, *stride))
    ):
        raise ValueError(
            f"{path}: tensor {name!r} has offset {_short(offset)}, size {_short(size)} and stride {_short(stride)}; "
            "they must be ints >= 0, with as many strides as sizes."
        )
    last = offset + sum((length - 1) * step for length, step in zip(size, stride))
    if 0 not in size and last >= data.size:
        raise ValueError(
            f"{path}: tensor {name!r} (offset {offset}, size {tuple(size)}, stride {tuple(stride)}) reaches element "
            f"{last} of a storage of {data.size} elements."
        )
    if not size:
        return data[offset].copy()
    if 0 in size:
        return np.zeros(size, data.dtype)
    # A dimension of length 1 never moves, whatever its stride (which may be any int >= 0 and too large for numpy).
    strides = [step * data.itemsize if length > 1 else 0 for length, step in zip(size, stride)]
    view = np.lib.stride_tricks.as_strided(data[offset:], shape=tuple(size), strides=strides, writeable=False)
    return np.ascontiguousarray(view)


def read_torch_legacy_state_dict(path):
    """name -> numpy array of a legacy-format ``.pth`` state dict (see the module docstring for what is refused)."""
    with open(path, "rb") as handle:
        data = handle.read()
    if data[:4] == _ZIP_MAGIC:
        raise ValueError(
            f"{path} is a zip archive: files written by torch >= 1.6 are, and this reader handles only the legacy "
            "format; re-save with torch.save(..., _use_new_zipfile_serialization=False)."
        )
    stream = io.BytesIO(data)
    magic_number = _load_pickle(stream, path, "magic number")
    if type(magic_number) is not int or magic_number != _MAGIC_NUMBER:
        raise ValueError(
            f"{path} is not a legacy-format torch file (magic number {_short(magic_number)}, expected "
            f"{_MAGIC_NUMBER:#x}); files written by torch >= 1.6 are zip archives, which this reader does not handle."
        )
    version = _load_pickle(stream, path, "protocol version")
    if type(version) is not int or version != _PROTOCOL_VERSION:
        raise ValueError(
            f"{path}: unsupported torch legacy protocol version {_short(version)} (this reader handles "
            f"{_PROTOCOL_VERSION})."
        )
    system_info = _load_pickle(stream, path, "system info")
    if type(system_info) is not dict:
        raise ValueError(f"{path}: the system info pickle holds {_short(system_info)}, not a dict.")
    if system_info.get("little_endian", True) is not True:
        raise ValueError(
            f"{path} was written on a big-endian machine (system info {_short(system_info)}); this reader handles "
            "only little-endian files."
        )
    storages = {}
    state = _load_pickle(stream, path, _STATE_DICT, storages)
    if not isinstance(state, dict):
        raise ValueError(f"{path} holds a {type(state).__name__}, not a state dict.")
    if any(type(name) is not str for name in state):
        raise ValueError(f"{path}: the state dict has keys {_short(list(state))}; a state dict's keys are strings.")
    arrays = _read_storages(stream, path, _load_pickle(stream, path, _STORAGE_KEYS), storages)
    return collections.OrderedDict(
        (name, _tensor_to_numpy(path, name, value, arrays)) for name, value in state.items() if type(value) is _Tensor
    )
