"""The legacy torch reader: valid files read bit-identically; hostile ones are refused before anything runs.

Every payload below is checked to be live (plain ``pickle.loads`` runs it and creates the marker file), then put
into each of the five pickles of an otherwise valid file; reading must raise ``pickle.UnpicklingError`` naming the
file, the pickle and the refused global, and the marker must not appear.
"""

import builtins
import contextlib
import copyreg
import io
import os
import pickle
import pickletools
import re
import subprocess
import time

import _pickle
import numpy as np
import pytest

from models.test_efficientnet_lite import fake_torch, write_legacy_state_dict  # noqa: F401  (fake_torch: fixture)
from tf_langdml.models import torch_legacy
from tf_langdml.models.torch_legacy import read_torch_legacy_state_dict

POSITIONS = ("magic number", "protocol version", "system info", "state dict", "storage keys")
BASE = np.arange(24, dtype=np.float32) * 1.5 - 7.25
COUNT = np.array([7, -3, 2**40], np.int64)
TENSORS = {  # name -> (storage array, offset, size, stride), as in write_legacy_state_dict
    "matrix": (BASE, 0, (4, 6), (6, 1)),
    "transposed": (BASE, 0, (6, 4), (1, 6)),  # a non-contiguous view of the same storage
    "tail": (BASE, 20, (4,), (1,)),  # an offset into the storage
    "column": (BASE, 5, (4, 1), (6, 1)),
    "counts": (COUNT, 0, (3,), (1,)),
    "count": (COUNT, 1, (), ()),
}
EXPECTED = {
    "matrix": BASE.reshape(4, 6),
    "transposed": BASE.reshape(4, 6).T,
    "tail": BASE[20:],
    "column": BASE.reshape(4, 6)[:, 5:6],
    "counts": COUNT,
    "count": COUNT[1],
}
EXTENSION_CODES = {"EXT1": 0x7A, "EXT2": 0x7A7A, "EXT4": 0x7A7A7A}


@pytest.fixture
def valid_file(tmp_path, fake_torch):  # noqa: F811
    path = tmp_path / "valid.pth"
    write_legacy_state_dict(path, TENSORS, fake_torch)
    return path


def split_legacy_file(path):
    """The five pickles (bytes) and the storage bytes after them; pickletools only lists opcodes, nothing runs."""
    data, pickles = path.read_bytes(), []
    stream = io.BytesIO(data)
    for _ in POSITIONS:
        start = stream.tell()
        for _opcode in pickletools.genops(stream):
            pass
        pickles.append(data[start : stream.tell()])
    return pickles, data[stream.tell() :]


def write_with(path, valid_file, position, payload):
    """valid_file with the pickle at ``position`` replaced by ``payload``."""
    pickles, tail = split_legacy_file(valid_file)
    pickles[POSITIONS.index(position)] = payload
    path.write_bytes(b"".join(pickles) + tail)
    return path


def assert_reads_exactly(path):
    state = read_torch_legacy_state_dict(path)
    assert list(state) == list(EXPECTED)
    for name, expected in EXPECTED.items():
        assert state[name].dtype == expected.dtype and state[name].shape == np.shape(expected), name
        assert state[name].tobytes() == np.ascontiguousarray(expected).tobytes(), name
    return state


class Reduce:
    """Pickles as ``function(*args)``: REDUCE, with GLOBAL (protocols 0-3) or STACK_GLOBAL (4-5)."""

    def __init__(self, function, *args):
        self.function, self.args = function, args

    def __reduce__(self):
        return (self.function, self.args)


def protocol0_string(text):
    return f"S{text!r}\n".encode()


def tuple_body(value, protocol=2):
    """Opcodes that push ``value`` (a pickle without its PROTO and STOP)."""
    return pickle.dumps(value, protocol=protocol)[2:-1]


@contextlib.contextmanager
def system_as_extension(code, prime_cache=False):
    """posix.system registered under a copyreg extension code; removed (with its cache entry) afterwards."""
    copyreg.add_extension(os.system.__module__, "system", code)
    try:
        if prime_cache:  # some other unpickling in the process resolved the code: the C unpickler caches it
            assert pickle.loads(pickle.dumps(os.system, protocol=2)) is os.system
        yield
    finally:
        copyreg.remove_extension(os.system.__module__, "system", code)


PAYLOADS = [f"system/protocol{protocol}" for protocol in range(6)] + [
    "eval",
    "exec",
    "Popen",
    "INST",
    "OBJ",
    "EXT1",
    "EXT2",
    "EXT4",
    "EXT2/cached",
]
CLASS_PAYLOADS = ["NEWOBJ", "NEWOBJ_EX"]  # build a class without calling it: refused, but not live


@contextlib.contextmanager
def payload(kind, marker):
    """(pickle bytes, the global the reader must name) for a payload that creates ``marker`` when it runs."""
    command, system = f"touch {marker}", f"{os.system.__module__}.system"
    code = f"open({str(marker)!r}, 'w').close()"
    if kind.startswith("system/protocol"):
        yield pickle.dumps(Reduce(os.system, command), protocol=int(kind[-1])), system
    elif kind == "eval":
        yield pickle.dumps(Reduce(builtins.eval, code), protocol=3), "builtins.eval"
    elif kind == "exec":
        yield pickle.dumps(Reduce(builtins.exec, code), protocol=5), "builtins.exec"
    elif kind == "Popen":
        yield pickle.dumps(Reduce(subprocess.Popen, ["touch", str(marker)]), protocol=4), "subprocess.Popen"
    elif kind == "INST":  # the C unpickler calls an INST/OBJ "class" that is not a type
        yield b"(" + protocol0_string(command) + b"ios\nsystem\n.", "os.system"
    elif kind == "OBJ":
        yield b"(cos\nsystem\n" + protocol0_string(command) + b"o.", "os.system"
    elif kind == "NEWOBJ":
        args = tuple_body((["touch", str(marker)],))
        yield b"\x80\x02csubprocess\nPopen\n" + args + pickle.NEWOBJ + b".", "subprocess.Popen"
    elif kind == "NEWOBJ_EX":
        args, kwargs = tuple_body((["touch", str(marker)],), 4), tuple_body({"shell": False}, 4)
        yield b"\x80\x04csubprocess\nPopen\n" + args + kwargs + pickle.NEWOBJ_EX + b".", "subprocess.Popen"
    elif kind.startswith("EXT"):
        opcode = kind.split("/")[0]
        with system_as_extension(EXTENSION_CODES[opcode], prime_cache=kind.endswith("cached")):
            data = pickle.dumps(Reduce(os.system, command), protocol=2)
            assert opcode in {op.name for op, _arg, _pos in pickletools.genops(data)}
            yield data, f"extension code {EXTENSION_CODES[opcode]} ({system}"
    else:
        raise AssertionError(kind)


def nothing_ran(marker, kind):
    if kind == "Popen":  # a started child would create the marker a moment later
        time.sleep(0.5)
    return not marker.exists()


def test_the_unpickler_is_the_c_one():
    # The EXT and cache findings below are about the C unpickler, which the reader subclasses.
    assert torch_legacy._RestrictedUnpickler.__mro__[1] is pickle.Unpickler is _pickle.Unpickler


@pytest.mark.parametrize("kind", PAYLOADS)
def test_the_payloads_are_live(tmp_path, kind):
    """Control: unrestricted pickle.loads runs each payload, so the refusal tests below would notice it running."""
    marker = tmp_path / "marker"
    with payload(kind, marker) as (data, _refused):
        result = pickle.loads(data)
    if isinstance(result, subprocess.Popen):
        assert result.wait() == 0
    assert marker.exists()


@pytest.mark.parametrize("kind", PAYLOADS + CLASS_PAYLOADS)
@pytest.mark.parametrize("position", POSITIONS)
def test_a_payload_in_any_of_the_five_pickles_is_refused_and_nothing_runs(tmp_path, valid_file, position, kind):
    marker, evil = tmp_path / "marker", tmp_path / "evil.pth"
    with payload(kind, marker) as (data, refused):
        write_with(evil, valid_file, position, data)
        cached = dict(copyreg._extension_cache)
        try:
            read_torch_legacy_state_dict(evil)
        except Exception as error:  # noqa: BLE001 - checked below, after checking that nothing ran
            raised = error
        else:
            raised = None
        assert copyreg._extension_cache == cached  # the reader resolved no extension code
    assert nothing_ran(marker, kind), f"the payload ran (then the reader raised {raised!r})"
    assert isinstance(raised, pickle.UnpicklingError), raised
    message = str(raised)
    assert f"the {position} pickle of {evil}" in message, message
    assert refused in message and "Refusing" in message, message


@pytest.mark.parametrize("protocol", [0, 2, 5])
@pytest.mark.parametrize("position", [p for p in POSITIONS if p != "state dict"])
def test_a_persistent_id_in_a_metadata_pickle_is_refused(tmp_path, valid_file, position, protocol):
    class Pickler(pickle.Pickler):
        def persistent_id(self, obj):
            return "0" if obj is storage else None

    storage, buffer = object(), io.BytesIO()
    Pickler(buffer, protocol=protocol).dump([storage])
    evil = write_with(tmp_path / "evil.pth", valid_file, position, buffer.getvalue())
    expected = f"Refusing persistent id '0' in the {position} pickle of {evil}: only the state dict refers to storages."
    with pytest.raises(pickle.UnpicklingError, match=re.escape(expected)):
        read_torch_legacy_state_dict(evil)


def test_the_c_unpickler_asks_find_class_about_an_extension_code_only_until_it_is_cached():
    """Why the reader refuses EXT1/2/4 opcodes before unpickling: find_class alone does not see a cached code."""
    calls = []

    class Recording(pickle.Unpickler):
        def find_class(self, module, name):
            calls.append((module, name))
            raise pickle.UnpicklingError("refused")

    with system_as_extension(EXTENSION_CODES["EXT2"]):
        data = pickle.dumps(os.system, protocol=2)
        assert [op.name for op, _arg, _pos in pickletools.genops(data)] == ["PROTO", "EXT2", "STOP"]
        with pytest.raises(pickle.UnpicklingError, match="refused"):
            Recording(io.BytesIO(data)).load()
        assert calls == [(os.system.__module__, "system")]
        assert pickle.loads(data) is os.system  # now copyreg._extension_cache holds os.system
        assert Recording(io.BytesIO(data)).load() is os.system and calls == [(os.system.__module__, "system")]


def test_a_valid_file_reads_bit_identically(valid_file):
    state = assert_reads_exactly(valid_file)
    assert state["count"] == -3 and state["counts"][2] == 2**40
    assert state["transposed"].flags.c_contiguous and state["transposed"][5, 3] == BASE[3 * 6 + 5]


@pytest.mark.parametrize("protocol", range(6))
def test_metadata_pickled_with_any_protocol_reads(tmp_path, valid_file, protocol):
    pickles, tail = split_legacy_file(valid_file)
    system_info = {"protocol_version": 1001, "little_endian": True, "type_sizes": {"short": 2, "int": 4, "long": 8}}
    metadata = [0x1950A86A20F9469CFC6C, 1001, system_info]
    keys = pickle.loads(pickles[4])
    pickles = [pickle.dumps(value, protocol) for value in metadata] + [pickles[3], pickle.dumps(keys, protocol)]
    path = tmp_path / "resaved.pth"
    path.write_bytes(b"".join(pickles) + tail)
    assert_reads_exactly(path)


def test_build_cannot_change_what_the_reader_shares(tmp_path, valid_file):
    """BUILD sets attributes (or calls __setstate__) on an object already built: the allowed globals are either
    immutable or fresh per reference, so a file cannot change the reader for the next file."""
    defaults = pickle.dumps((None, {"__defaults__": (7,)}), protocol=0)[:-1]  # the slot state, without STOP
    attempts = {
        b"ctorch._utils\n_rebuild_parameter\n" + defaults + b"b.": "holds a function",
        b"ccollections\nOrderedDict\n(N(S'fromkeys'\nI1\ndtb.": "immutable type",
        b"ctorch\nFloatStorage\n(N(S'name'\nS'LongStorage'\ndtb.": "AttributeError",
    }
    for number, (data, match) in enumerate(attempts.items()):
        evil = write_with(tmp_path / f"evil{number}.pth", valid_file, "state dict", data)
        with pytest.raises(ValueError, match=match):
            read_torch_legacy_state_dict(evil)
    assert torch_legacy._rebuild_parameter.__defaults__ is None
    assert not hasattr(torch_legacy._rebuild_parameter, "__setstate__")
    assert_reads_exactly(valid_file)


@pytest.mark.parametrize(
    "position,value,match",
    [
        ("magic number", 42, "magic number 42, expected 0x1950a86a20f9469cfc6c"),
        ("magic number", [0x1950A86A20F9469CFC6C], "not a legacy-format torch file"),
        ("protocol version", 1000, "unsupported torch legacy protocol version 1000"),
        ("protocol version", "1001", "unsupported torch legacy protocol version '1001'"),
        ("system info", ["little_endian"], r"holds \['little_endian'\], not a dict"),
        ("system info", {"little_endian": False}, "big-endian"),
        ("storage keys", "0", "holds '0', not a list of key strings"),
        ("storage keys", {"0": 1}, "not a list of key strings"),
        ("storage keys", [0, 1], "not a list of key strings"),
        ("storage keys", ["0"], "do not list each storage"),
        ("storage keys", ["0", "1", "2"], "do not list each storage"),
        ("storage keys", ["0", "0", "1"], "do not list each storage"),
        ("state dict", [1, 2], "holds a list, not a state dict"),
    ],
)
def test_malformed_metadata_is_a_clear_value_error(tmp_path, valid_file, position, value, match):
    path = write_with(tmp_path / "bad.pth", valid_file, position, pickle.dumps(value, protocol=2))
    with pytest.raises(ValueError, match=match) as raised:
        read_torch_legacy_state_dict(path)
    assert str(path) in str(raised.value)


@pytest.mark.parametrize(
    "position,data,match",
    [
        ("system info", b"\x80\x02}q\x00\xff.", "system info pickle .* is malformed: .*unknown"),
        ("state dict", b"\x80\x02))R.", "state dict pickle .* is malformed: TypeError"),  # calls a tuple
        ("state dict", b"\x80\x02K\x01K\x02a.", "state dict pickle .* is malformed"),  # append to an int
        ("storage keys", b"\x80\x02X\xff\xff\xff\x00abc.", "storage keys pickle .* is malformed"),  # truncated
    ],
)
def test_malformed_pickles_are_a_clear_value_error(tmp_path, valid_file, position, data, match):
    path = write_with(tmp_path / "bad.pth", valid_file, position, data)
    with pytest.raises(ValueError, match=match) as raised:
        read_torch_legacy_state_dict(path)
    assert str(path) in str(raised.value)


@pytest.mark.parametrize(
    "saved_id,match",
    [
        (["storage"], "unexpected persistent id"),
        (("storage", "FloatStorage", "0", "cpu", 24), "names no torch storage type"),
        (("storage", "torch.FloatStorage", 0, "cpu", 24), "key that is not a string"),
        (("storage", "torch.FloatStorage", "0", "cpu", -1), "element count that is not an int >= 0"),
        (("storage", "torch.FloatStorage", "0", "cpu", 24, ("0", 0, 24)), "storage view"),
        (("module", "torch.FloatStorage", "0", "cpu", 24), "unexpected persistent id"),
    ],
)
def test_a_malformed_persistent_id_in_the_state_dict_is_a_clear_value_error(
    tmp_path, valid_file, fake_torch, saved_id, match  # noqa: F811
):
    torch_module, _utils = fake_torch
    marker = object()

    class Pickler(pickle.Pickler):
        def persistent_id(self, obj):
            if obj is marker:
                return tuple(torch_module.FloatStorage if item == "torch.FloatStorage" else item for item in saved_id)
            return None

    buffer = io.BytesIO()
    Pickler(buffer, protocol=2).dump({"weight": marker})
    path = write_with(tmp_path / "bad.pth", valid_file, "state dict", buffer.getvalue())
    with pytest.raises(ValueError, match=match) as raised:
        read_torch_legacy_state_dict(path)
    assert f"{path}: the state dict pickle" in str(raised.value)


@pytest.mark.parametrize(
    "spec,match",
    [
        ((BASE, 21, (4,), (1,)), "reaches element 24 of a storage of 24 elements"),
        ((BASE, 0, (4, 7), (6, 1)), "reaches element 24 of a storage of 24 elements"),
        ((BASE, 24, (), ()), "reaches element 24"),
        ((BASE, 0, (2, 2), (1,)), "as many strides as sizes"),
        ((BASE, -1, (4,), (1,)), "ints >= 0"),
        ((BASE, 23, (2,), (-1,)), "ints >= 0"),
        ((BASE, 0, (4,), (1.5,)), "ints >= 0"),
    ],
)
def test_a_tensor_outside_its_storage_is_a_clear_value_error(tmp_path, fake_torch, spec, match):  # noqa: F811
    path = tmp_path / "bad.pth"
    write_legacy_state_dict(path, {"ok": (BASE, 0, (24,), (1,)), "bad": spec}, fake_torch)
    with pytest.raises(ValueError, match=match) as raised:
        read_torch_legacy_state_dict(path)
    assert f"{path}: tensor 'bad'" in str(raised.value)


def test_a_length_one_dimension_may_have_any_stride(tmp_path, fake_torch):  # noqa: F811
    path = tmp_path / "state.pth"
    write_legacy_state_dict(path, {"row": (BASE, 6, (1, 6), (2**70, 1))}, fake_torch)
    np.testing.assert_array_equal(read_torch_legacy_state_dict(path)["row"], BASE[None, 6:12])


def test_damaged_storage_bytes_are_a_clear_value_error(tmp_path, valid_file):
    pickles, tail = split_legacy_file(valid_file)
    cases = {
        "truncated": (tail[:-1], "truncated \\(storage 1 is incomplete\\)"),
        "no storages": (b"", "truncated \\(storage 0 is missing\\)"),
        "count": (tail[:0] + (23).to_bytes(8, "little") + tail[8:], "storage 0 holds 23 elements, but the state"),
        "negative": ((-1).to_bytes(8, "little", signed=True) + tail[8:], "storage 0 holds -1 elements"),
    }
    for name, (new_tail, match) in cases.items():
        path = tmp_path / f"{name}.pth"
        path.write_bytes(b"".join(pickles) + new_tail)
        with pytest.raises(ValueError, match=match):
            read_torch_legacy_state_dict(path)


def test_a_zip_archive_or_an_empty_file_is_a_clear_value_error(tmp_path):
    path = tmp_path / "new.pth"
    path.write_bytes(b"PK\x03\x04" + b"\0" * 100)
    with pytest.raises(ValueError, match="is a zip archive: files written by torch >= 1.6"):
        read_torch_legacy_state_dict(path)
    path.write_bytes(b"")
    with pytest.raises(ValueError, match="the magic number pickle .* is malformed: pickle exhausted before"):
        read_torch_legacy_state_dict(path)
