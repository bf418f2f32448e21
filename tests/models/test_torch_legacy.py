"""The legacy torch reader: valid files read bit-identically; hostile or damaged ones raise one ValueError.

Every payload below is checked to be live (plain ``pickle.loads`` runs it and creates the marker file), then put
into each of the five pickles of an otherwise valid file; reading must raise ``TorchPickleRefused`` (a ValueError
and a ``pickle.UnpicklingError``) naming the file, the pickle and the refused global, and the marker must not
appear. Every other malformed file (BUILD or SETITEM aimed where torch never aims them, impossible shapes, views
outside their storage or larger than the file, absurd storage sizes, trailing or missing bytes, non-regular files,
a few hundred seeded byte mutations) must raise a one-line ValueError naming the file, within a memory bound.
"""

import _pickle
import builtins
import contextlib
import copyreg
import io
import json
import os
import pickle
import pickletools
import re
import struct
import subprocess
import threading
import time
import tracemalloc

import numpy as np
import pytest
from helpers import quiet_env, run_python
from models.test_efficientnet_lite import fake_torch, write_legacy_state_dict  # noqa: F401  (fake_torch: fixture)

from tf_langdml.models import torch_legacy
from tf_langdml.models.torch_legacy import TorchPickleRefused, read_torch_legacy_state_dict

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
def valid_file(tmp_path, fake_torch):  # noqa: F811  (pytest fixture argument)
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


def assert_refused(path, match):
    """Reading ``path`` raises one ValueError, on one line, naming the file and matching ``match``."""
    with pytest.raises(ValueError) as raised:
        read_torch_legacy_state_dict(path)
    message = str(raised.value)
    assert str(path) in message and "\n" not in message, message
    assert re.search(match, message), message
    return raised.value


def traced_peak(read):
    """(what ``read()`` returned, the peak bytes Python allocated meanwhile, by tracemalloc); exceptions propagate."""
    tracemalloc.start()
    try:
        outcome = read()
        return outcome, tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()


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
    assert isinstance(raised, TorchPickleRefused), raised
    assert isinstance(raised, pickle.UnpicklingError) and isinstance(raised, ValueError)
    message = str(raised)
    assert "\n" not in message, message
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
    expected = f"Refusing persistent id '0' in the {position} pickle of {evil}: only the state dict refers to storages;"
    with pytest.raises(TorchPickleRefused, match=re.escape(expected)):
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


ORDERED_DICT = b"ccollections\nOrderedDict\n"


def text(value):
    """BINUNICODE pushing ``value``."""
    return b"X" + struct.pack("<I", len(value.encode())) + value.encode()


def tuple_of(values):
    """Opcodes pushing a tuple of ints (no memo entries, so they can go anywhere in a pickle)."""
    return b"(" + b"".join(pickle.dumps(value, protocol=2)[2:-1] for value in values) + b"t"


def tensor_opcodes(offset=0, size=(1,), stride=(1,)):
    """Opcodes pushing a tensor on the valid file's storage '0' (BASE: 24 float32 elements), as torch writes it."""
    storage = b"(" + text("storage") + b"ctorch\nFloatStorage\n" + text("0") + text("cpu") + b"K\x18tQ"
    args = storage + pickle.dumps(offset, protocol=2)[2:-1] + tuple_of(size) + tuple_of(stride) + b"\x89" + ORDERED_DICT
    return b"ctorch._utils\n_rebuild_tensor_v2\n(" + args + b")RtR"


def with_state_suffix(path, valid_file, suffix):
    """valid_file with ``suffix`` run on the finished state dict (the top of the stack) before its STOP."""
    pickles, tail = split_legacy_file(valid_file)
    assert pickles[3].endswith(b"u.")  # the last SETITEMS leaves the state dict on top of the stack
    pickles[3] = pickles[3][:-1] + suffix + b"."
    path.write_bytes(b"".join(pickles) + tail)
    return path


def test_build_cannot_change_what_the_reader_shares(tmp_path, valid_file):
    """BUILD sets attributes (or calls __setstate__) on an object already built: each allowed global is a fresh
    stand-in that refuses BUILD or an immutable record, so a file cannot change the reader for the next file."""
    defaults = pickle.dumps((None, {"__defaults__": (7,)}), protocol=0)[:-1]  # the slot state, without STOP
    attempts = {
        b"ctorch._utils\n_rebuild_parameter\n" + defaults + b"b.": r"aims BUILD with \(None, .* at torch\._utils\._r",
        b"ccollections\nOrderedDict\n(N(S'fromkeys'\nI1\ndtb.": "aims BUILD with .* at collections.OrderedDict",
        b"ctorch\nFloatStorage\n(N(S'name'\nS'LongStorage'\ndtb.": "AttributeError",
    }
    for number, (data, match) in enumerate(attempts.items()):
        assert_refused(write_with(tmp_path / f"evil{number}.pth", valid_file, "state dict", data), match)
    assert torch_legacy._rebuild_parameter.__defaults__ is None
    assert not hasattr(torch_legacy._rebuild_parameter, "__setstate__")
    assert_reads_exactly(valid_file)


BUILD_AND_SETITEM = {  # name -> (opcodes run on the finished state dict, what the error says)
    # The tester's file: `items` planted on the state dict made the old reader return {}.
    "items planted on the state dict": (b"}" + text("items") + ORDERED_DICT + b"sb", r"aims BUILD with \{'items'"),
    "_metadata and more": (b"}" + text("_metadata") + b"N" + b"s" + text("values") + b"Nsb", "aims BUILD with"),
    "_metadata twice": (b"}" + text("_metadata") + b"Nsb}" + text("_metadata") + b"Nsb", "on the state dict, once"),
    "slot state": (b"N}" + text("_metadata") + b"Ns\x86b", r"aims BUILD with \(None, \{'_metadata'"),
    "_metadata on another ordered dict": (
        text("extra") + ORDERED_DICT + b")R}" + text("_metadata") + b"Nsbs",
        "an ordered dict other than the state dict carries",
    ),
    "a key set twice": (text("matrix") + b"Ns", "sets key 'matrix' of an ordered dict twice"),
    "OrderedDict with arguments": (text("extra") + ORDERED_DICT + b"(]tRs", "calls collections.OrderedDict with arg"),
    "BUILD on a tensor": (text("extra") + tensor_opcodes() + b"}" + text("x") + b"Nsbs", "AttributeError"),
    "BUILD on a storage reference": (
        text("extra")
        + b"("
        + text("storage")
        + b"ctorch\nFloatStorage\n"
        + text("0")
        + text("cpu")
        + b"K\x18tQ"
        + b"}"
        + text("x")
        + b"Nsbs",
        "AttributeError",
    ),
    "BUILD on a plain dict": (text("extra") + b"}}" + text("x") + b"Nsbs", "AttributeError"),
    "BUILD on a rebuild function": (
        text("extra") + b"ctorch._utils\n_rebuild_tensor_v2\n}" + text("__defaults__") + b"Nsbs",
        "aims BUILD with .* at torch._utils._rebuild_tensor_v2",
    ),
    "SETITEM on a tensor": (text("extra") + tensor_opcodes() + text("x") + b"Nss", "TypeError"),
    "SETITEM on a global": (text("extra") + ORDERED_DICT + text("x") + b"Nss", "TypeError"),
    "SETITEM on a storage type": (text("extra") + b"ctorch\nFloatStorage\n" + text("x") + b"Nss", "TypeError"),
    "a parameter of no tensor": (
        text("extra") + b"ctorch._utils\n_rebuild_parameter\n(N\x89" + ORDERED_DICT + b")RtRs",
        "rebuilds a parameter from None",
    ),
}


@pytest.mark.parametrize("case", BUILD_AND_SETITEM)
def test_build_or_setitem_where_torch_never_aims_them_is_refused(tmp_path, valid_file, case):
    suffix, match = BUILD_AND_SETITEM[case]
    assert_refused(with_state_suffix(tmp_path / "evil.pth", valid_file, suffix), match)


def test_torch_metadata_on_the_state_dict_and_extra_tensors_read(tmp_path, valid_file):
    """Controls for the refusals above: what torch writes (its `_metadata` BUILD, a parameter) still reads."""
    metadata = b"}" + text("_metadata") + ORDERED_DICT + b")R" + text("") + b"}" + text("version") + b"K\x01sssb"
    parameter = b"ctorch._utils\n_rebuild_parameter\n(" + tensor_opcodes(3, (2,), (5,)) + b"\x88" + ORDERED_DICT
    suffix = metadata + text("parameter") + parameter + b")RtRs"
    state = read_torch_legacy_state_dict(with_state_suffix(tmp_path / "torch.pth", valid_file, suffix))
    assert list(state) == [*EXPECTED, "parameter"]
    np.testing.assert_array_equal(state["parameter"], BASE[[3, 8]])


@pytest.mark.parametrize(
    "position,value,match",
    [
        ("magic number", 42, "magic number 42, expected 0x1950a86a20f9469cfc6c"),
        ("magic number", [0x1950A86A20F9469CFC6C], r"magic number \[\d+\], expected"),
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
        # str() of these ints raises (past 4300 digits), and a megabyte of bytes is no message.
        pytest.param("magic number", 1 << 80_000, "magic number <int of 80001 bits>, expected", id="long-magic"),
        pytest.param(
            "system info",
            {"little_endian": False, "n": -(1 << 20_000)},
            r"'n': <int of 20001 bits>\}\); this",
            id="long-int-in-system-info",
        ),
        pytest.param(
            "system info",
            {"little_endian": b"\x00" * 10**6},
            r"\{'little_endian': b'\\x00\\x00\\x0\.\.\.0\\x00\\x00\\x00'\}\); this",
            id="long-bytes-in-system-info",
        ),
    ],
)
def test_malformed_metadata_is_a_clear_value_error(tmp_path, valid_file, position, value, match):
    data = pickle.dumps(value, protocol=3)  # 3: bytes need no global
    path = write_with(tmp_path / "bad.pth", valid_file, position, data)
    assert_refused(path, f"^{re.escape(str(path))}: not a legacy torch weights file: .*{match}.*; re-download it")


@pytest.mark.parametrize(
    "position,data,match",
    [
        ("system info", b"\x80\x02}q\x00\xff.", "system info pickle .* is malformed: .*unknown"),
        ("state dict", b"\x80\x02))R.", "state dict pickle .* is malformed: TypeError"),  # calls a tuple
        ("state dict", b"\x80\x02K\x01K\x02a.", "state dict pickle .* is malformed"),  # append to an int
        ("storage keys", b"\x80\x02X\xff\xff\xff\x00abc.", "storage keys pickle .* is malformed"),  # truncated
        # A declared length is checked against the file before the unpickler would allocate it (here 4 EiB).
        ("system info", b"\x80\x04\x8e" + (2**62).to_bytes(8, "little") + b".", "expected 4611686018427387904 bytes"),
        ("system info", b"\x80\x02X\x02\x00\x00\x00\xc4.", "system info pickle .* is malformed: .*utf-8"),
    ],
)
def test_malformed_pickles_are_a_clear_value_error(tmp_path, valid_file, position, data, match):
    assert_refused(write_with(tmp_path / "bad.pth", valid_file, position, data), match)


@pytest.mark.parametrize(
    "data,match",
    [
        # The C unpickler would allocate a memo table of twice the index (here 32 GiB) before failing.
        (b"\x80\x02Nr\xff\xff\xff\x7f.", r"Refusing memo index 2147483647 \(LONG_BINPUT at byte \d+\)"),
        (b"\x80\x02Nq\x01.", r"Refusing memo index 1 \(BINPUT at byte \d+\) .*: .* only 0 are stored before it"),
        (b"Np99999999999\n.", r"Refusing memo index 99999999999 \(PUT at byte \d+\)"),
        (b"\x80\x04\x8f.", r"Refusing opcode EMPTY_SET at byte \d+ "),
        (b"\x80\x04(K\x01\x91.", r"Refusing opcode FROZENSET at byte \d+ "),
        (b"\x80\x04\x8f(K\x01\x90.", "Refusing opcode EMPTY_SET"),
        (pickle.dumps({1: 2}, protocol=2), r"Refusing a dict key that is not a string \(SETITEM at byte \d+\)"),
        (pickle.dumps({"a": 1, (): 2}, protocol=0), r"Refusing a dict key that is not a string \(SETITEM"),
        (b"\x80\x02}(X\x01\x00\x00\x00aNNNu.", r"Refusing a dict key that is not a string \(SETITEMS"),
        (b"\x80\x02(X\x01\x00\x00\x00aNK\x01Nd.", r"Refusing a dict key that is not a string \(DICT"),
    ],
)
@pytest.mark.parametrize("position", POSITIONS)
def test_memo_indices_out_of_order_sets_and_other_dict_keys_are_refused_before_unpickling(
    tmp_path, valid_file, position, data, match
):
    error = assert_refused(write_with(tmp_path / "bad.pth", valid_file, position, data), match)
    assert isinstance(error, TorchPickleRefused) and f"in the {position} pickle of " in str(error)


@pytest.mark.parametrize(
    "data,match",
    [
        (b"\x80\x02}}.", "leaves 1 more objects and 0 marks on the stack at its STOP"),
        (b"\x80\x02(}.", "leaves 0 more objects and 1 marks on the stack at its STOP"),
        (b"\x80\x02]Ne.", "APPENDS at byte \\d+ pops to a MARK that was never set"),
        (b"\x80\x02Na.", "APPEND at byte \\d+ takes more objects than the stack holds"),
        (b"\x80\x02](Na.", "APPEND at byte \\d+ takes more objects than the stack holds"),  # not below its MARK
    ],
)
def test_a_pickle_must_leave_exactly_one_object_on_its_stack(tmp_path, valid_file, data, match):
    assert_refused(write_with(tmp_path / "bad.pth", valid_file, "system info", data), f"system info pickle .*{match}")


def nested(depth):
    value = None
    for _ in range(depth):
        value = (value,)
    return value


@pytest.mark.parametrize("protocol", range(6))
def test_plain_data_of_any_shape_passes_the_stack_check(tmp_path, valid_file, protocol):
    """Controls for the stack check: shared references (memo), every container, scalars and 99 levels of nesting
    (the system info dict holds it: 100 deep) pickled by Python's own pickler read back equal."""
    shared, raw = [1, 2], (b"xy", b"") if protocol >= 3 else ()  # protocols 0-2 write bytes through a global
    extra = {
        "shared": [shared, shared, (shared, shared)],
        "scalars": (1.5, "\u00e9\u4e2d", None, True, 2**70, -3, *raw),
        "empty": ([], {}, (), ""),
        "nested": nested(98),
        "dicts": {"k": {"j": [{"i": ()}]}},
        "long": list(range(2000)),
    }
    pickles, tail = split_legacy_file(valid_file)
    pickles[2] = pickle.dumps({"little_endian": True, **extra}, protocol=protocol)
    path = tmp_path / "plain.pth"
    path.write_bytes(b"".join(pickles) + tail)
    assert_reads_exactly(path)
    pickles[2] = pickle.dumps({"little_endian": True, "nested": nested(100)}, protocol=protocol)
    path.write_bytes(b"".join(pickles) + tail)
    assert_refused(path, "Refusing an object nested 101 deep .* in the system info pickle of")


@pytest.mark.parametrize("position", ["system info", "state dict"])
def test_a_million_nested_tuples_are_refused_before_python_hashes_them(tmp_path, valid_file, position):
    """A dict key of 10**6 nested 1-tuples: plain pickle.loads crashes the interpreter (SIGSEGV, measured here) as
    it hashes the key; the reader refuses it while listing opcodes. Read in a subprocess, so a crash fails only
    this test."""
    data = b"\x80\x02}N" + b"\x85" * 10**6 + b"Ns."
    write_with(tmp_path / "0.pth", valid_file, position, data)
    (outcome,) = read_in_subprocess(tmp_path, 1)
    assert list(outcome) == ["ValueError"], outcome
    assert "Refusing an object nested 101 deep (TUPLE1 at byte" in outcome["ValueError"]


def test_dict_keys_of_equal_hash_are_refused_before_the_quadratic_build(tmp_path, valid_file):
    """Ints that are multiples of 2**61 - 1 all hash to 0: plain pickle.loads took 10.5 s for 30,000 of them as
    dict keys (389 KB, measured here; quadratic, so a 4 MB file takes about 18 minutes). The reader refuses the
    first key that is not a string while listing opcodes, before any dict is built."""
    keys = b"".join(pickle.dumps(number * (2**61 - 1), protocol=2)[2:-1] + b"N" for number in range(1, 30_001))
    path = write_with(tmp_path / "collide.pth", valid_file, "system info", b"\x80\x02}(" + keys + b"u.")
    started = time.monotonic()
    assert_refused(path, r"Refusing a dict key that is not a string \(SETITEMS at byte \d+\) in the system info")
    assert time.monotonic() - started < 2  # the scan is linear: ~0.1 s here


@pytest.mark.parametrize(
    "saved_id,match",
    [
        (["storage"], "unexpected persistent id"),
        (("storage", "FloatStorage", "0", "cpu", 24), "names no torch storage type"),
        (("storage", "torch.FloatStorage", 0, "cpu", 24), "key that is not a string"),
        (("storage", "torch.FloatStorage", "0", "cpu", -1), "element count that is not an int64 >= 0"),
        (("storage", "torch.FloatStorage", "0", "cpu", 2**63), "element count that is not an int64 >= 0"),
        (("storage", "torch.FloatStorage", "0", "cpu", 24, ("0", 0, 24)), "storage view"),
        (("module", "torch.FloatStorage", "0", "cpu", 24), "unexpected persistent id"),
    ],
)
def test_a_malformed_persistent_id_in_the_state_dict_is_a_clear_value_error(
    tmp_path,
    valid_file,
    fake_torch,  # noqa: F811  (pytest fixture argument)
    saved_id,
    match,
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
    assert_refused(path, f"^{re.escape(str(path))}: not a legacy torch weights file: the state dict pickle .*{match}")


INT_RANGE = r"ints in \[0, 2\*\*63\), with as many strides as sizes and at most 32 of each"


@pytest.mark.parametrize(
    "spec,match",
    [
        ((BASE, 21, (4,), (1,)), "reaches element 24 of a storage of 24 elements"),
        ((BASE, 0, (4, 7), (6, 1)), "reaches element 24 of a storage of 24 elements"),
        ((BASE, 24, (), ()), "reaches element 24"),
        ((BASE, 0, (3, 2), (2**62, 1)), f"reaches element {2**63 + 1} "),  # past int64, still refused by value
        ((BASE, 0, (2, 2), (1,)), INT_RANGE),
        ((BASE, -1, (4,), (1,)), INT_RANGE),
        ((BASE, 23, (2,), (-1,)), INT_RANGE),  # a negative stride
        ((BASE, 0, (-1,), (1,)), INT_RANGE),  # a negative size
        ((BASE, 0, (4,), (1.5,)), INT_RANGE),
        ((BASE, 0, (0, 2**70), (1, 1)), INT_RANGE),  # the tester's shape: numpy's error named no file
        ((BASE, 2**63, (0,), (1,)), INT_RANGE),
        ((BASE, 0, (1,) * 33, (0,) * 33), INT_RANGE),
        ((BASE, 0, (0, 2**62, 4), (1, 1, 1)), r"impossible size \(0, 4611686018427387904, 4\)"),  # numpy refuses it
        ((BASE, 0, (2**32, 2**32), (0, 0)), "impossible size .* overflows int64"),  # 2**64 elements of one
        # The tester's zero-stride view: 2**40 elements of 4 bytes (4 TiB) viewing one element.
        ((BASE, 0, (2**21, 2**19), (0, 0)), r"needs 4398046511104 bytes, and the tensors read before it leave \d+"),
        ((BASE, 0, (2**20,), (0,)), "needs 4194304 bytes"),  # 4 MiB from one element of a ~1.2 KB file
    ],
)
def test_an_impossible_or_oversized_tensor_is_a_clear_value_error(tmp_path, fake_torch, spec, match):  # noqa: F811  (pytest fixture argument)
    path = tmp_path / "bad.pth"
    write_legacy_state_dict(path, {"ok": (BASE, 0, (24,), (1,)), "bad": spec}, fake_torch)
    _, peak = traced_peak(
        lambda: assert_refused(
            path, f"^{re.escape(str(path))}: not a legacy torch weights file: tensor 'bad' .*{match}"
        )
    )
    # Refused before allocating: the file, the pickles' objects (< 100 bytes per file byte) and the error.
    assert peak < 100 * path.stat().st_size, peak


@pytest.mark.parametrize(
    "spec,expected",
    [
        ((BASE, 6, (1, 6), (2**63 - 1, 1)), BASE[None, 6:12]),  # a length-1 dimension may have any int64 stride
        ((BASE, 3, (2, 3), (0, 1)), np.broadcast_to(BASE[3:6], (2, 3))),  # a zero stride inside the size bound
        ((BASE, 2**63 - 1, (0, 2**40), (1, 1)), np.zeros((0, 2**40), np.float32)),  # empty: any offset, no bytes
        ((BASE, 23, (), ()), BASE[23]),
    ],
)
def test_views_torch_can_write_read(tmp_path, fake_torch, spec, expected):  # noqa: F811  (pytest fixture argument)
    path = tmp_path / "state.pth"
    write_legacy_state_dict(path, {"view": spec}, fake_torch)
    view = read_torch_legacy_state_dict(path)["view"]
    assert view.shape == expected.shape and view.dtype == np.float32 and view.flags.c_contiguous
    assert view.tobytes() == np.ascontiguousarray(expected).tobytes()


class ClaimedStorage:
    """A storage for write_legacy_state_dict whose element count (in the persistent id and the header) is a claim."""

    def __init__(self, array, claimed):
        self.array, self.dtype, self.size = array, array.dtype, claimed

    def astype(self, dtype):
        return self.array.astype(dtype)


@pytest.mark.parametrize("claimed", [25, 2**40, 2**60, 2**63 - 1])
def test_a_storage_larger_than_the_file_is_refused_before_allocating(tmp_path, fake_torch, claimed):  # noqa: F811  (pytest fixture argument)
    path = tmp_path / "huge.pth"
    write_legacy_state_dict(path, {"weight": (ClaimedStorage(BASE, claimed), 0, (24,), (1,))}, fake_torch)
    _, peak = traced_peak(
        lambda: assert_refused(
            path, rf"truncated \(storage 0 is incomplete: {claimed} elements of 4 bytes, 96 bytes left\)"
        )
    )
    assert peak < 100 * path.stat().st_size, peak


def test_damaged_storage_bytes_are_a_clear_value_error(tmp_path, valid_file):
    pickles, tail = split_legacy_file(valid_file)
    end = valid_file.stat().st_size
    cases = {
        "truncated": (tail[:-1], r"truncated \(storage 1 is incomplete: 3 elements of 8 bytes, 23 bytes left\)"),
        "no storages": (b"", r"truncated \(storage 0 is missing at byte"),
        "count": ((23).to_bytes(8, "little") + tail[8:], "storage 0 holds 23 elements, but the state dict declares 24"),
        "negative": ((-1).to_bytes(8, "little", signed=True) + tail[8:], "storage 0 holds -1 elements"),
        "one trailing byte": (tail + b"\0", f"1 bytes follow the last storage \\(which ends at byte {end}\\)"),
        "a storage too many": (tail + tail[:104], f"104 bytes follow the last storage \\(which ends at byte {end}\\)"),
    }
    for name, (new_tail, match) in cases.items():
        path = tmp_path / f"{name}.pth"
        path.write_bytes(b"".join(pickles) + new_tail)
        assert_refused(path, match)


def test_every_truncation_of_a_valid_file_is_a_clear_value_error(tmp_path, valid_file):
    data, path = valid_file.read_bytes(), tmp_path / "cut.pth"
    for cut in range(len(data)):
        path.write_bytes(data[:cut])
        assert_refused(path, "truncated|malformed")


def test_a_zip_archive_or_an_empty_file_is_a_clear_value_error(tmp_path):
    path = tmp_path / "new.pth"
    path.write_bytes(b"PK\x03\x04" + b"\0" * 100)
    assert_refused(path, "is a zip archive: files written by torch >= 1.6")
    path.write_bytes(b"")
    assert_refused(path, "the magic number pickle .* is malformed: pickle exhausted before")


def test_a_fifo_a_device_or_a_directory_is_refused_without_reading(tmp_path):
    """A FIFO with no writer would block open() and read(); /dev/zero would never end: neither is a weights file."""
    fifo = tmp_path / "weights.pth"
    os.mkfifo(fifo)
    outcome = []
    reader = threading.Thread(
        target=lambda: outcome.append(pytest.raises(ValueError, read_torch_legacy_state_dict, fifo))
    )
    reader.start()
    reader.join(timeout=10)
    if reader.is_alive():  # unblock the reader so the test run can end, then fail
        with open(fifo, "wb"):
            pass
        pytest.fail("reading a FIFO with no writer blocked")
    assert "not a regular file" in str(outcome[0].value) and str(fifo) in str(outcome[0].value)
    assert_refused("/dev/zero", "/dev/zero: not a legacy torch weights file: it is not a regular file")
    assert_refused(tmp_path, "it is not a regular file")


def test_memory_is_the_file_and_the_arrays_at_most_twice_its_size(tmp_path, fake_torch):  # noqa: F811  (pytest fixture argument)
    """Peak traced memory of a read: the file's bytes once, the returned copies (at most 2 x the file, else
    refused) and the unpickled metadata (< 100 bytes per pickle byte, tried below); the storages are not copied."""
    storage = np.arange(2**20, dtype=np.float32)  # 4 MiB
    tensors = {"weight": (storage, 0, (1024, 1024), (1024, 1)), "transposed": (storage, 0, (1024, 1024), (1, 1024))}
    path = tmp_path / "shared.pth"
    write_legacy_state_dict(path, tensors, fake_torch)
    size = path.stat().st_size
    pickle_bytes = size - 8 - storage.nbytes
    state, peak = traced_peak(lambda: read_torch_legacy_state_dict(path))
    np.testing.assert_array_equal(state["transposed"], storage.reshape(1024, 1024).T)
    assert sum(array.nbytes for array in state.values()) == 2 * storage.nbytes <= 2 * size
    assert peak <= size + 2 * storage.nbytes + 100 * pickle_bytes, (peak, size)
    # A third view of the whole storage would take the arrays past twice the file's size.
    write_legacy_state_dict(path, {**tensors, "again": tensors["weight"]}, fake_torch)
    assert_refused(path, f"tensor 'again' .* needs {storage.nbytes} bytes, and the tensors read before it leave")


FLOOD_COUNT = 5_000
FLOODS = {  # the costliest objects one to four opcode bytes can make (sets are refused)
    "empty dicts": b"\x80\x02(" + b"}" * FLOOD_COUNT + b"l.",
    "empty dicts, no list": b"\x80\x02" + b"}" * FLOOD_COUNT + b".",
    "empty lists": b"\x80\x02(" + b"]" * FLOOD_COUNT + b"l.",
    "one-item dicts": b"\x80\x02(" + b"}X\x00\x00\x00\x00Ns" * (FLOOD_COUNT // 2) + b"l.",
    "1-tuples nested 99 deep": b"\x80\x02(" + (b"N" + b"\x85" * 99) * (FLOOD_COUNT // 100) + b"l.",
    "memoized dicts": b"\x80\x04(" + b"}\x94" * FLOOD_COUNT + b"l.",
    "ordered dicts": b"\x80\x02ccollections\nOrderedDict\nq\x00)q\x01(" + b"h\x00h\x01R" * FLOOD_COUNT + b"l.",
    "4-byte ints": b"\x80\x02(" + b"J\x00\x00\x01\x00" * FLOOD_COUNT + b"l.",
}


@pytest.mark.parametrize("flood", FLOODS)
@pytest.mark.parametrize("position", ["system info", "state dict"])
def test_the_unpickled_metadata_costs_under_100_bytes_per_pickle_byte(tmp_path, valid_file, position, flood):
    path = write_with(tmp_path / "flood.pth", valid_file, position, FLOODS[flood])

    def refused():
        with pytest.raises(ValueError):  # each one is refused, some before and some after unpickling
            read_torch_legacy_state_dict(path)

    _, peak = traced_peak(refused)
    assert peak <= 100 * len(FLOODS[flood]), peak / len(FLOODS[flood])


READ_WORKER = r"""
import importlib.util, json, os, resource, sys

module_path, folder, count = sys.argv[1], sys.argv[2], int(sys.argv[3])
spec = importlib.util.spec_from_file_location("torch_legacy", module_path)  # no tf_langdml/TensorFlow import
torch_legacy = importlib.util.module_from_spec(spec)
spec.loader.exec_module(torch_legacy)
with open("/proc/self/status") as status:
    mapped = next(int(line.split()[1]) * 1024 for line in status if line.startswith("VmSize:"))
limit = mapped + 256 * 2**20  # a 4 TiB or 32 GiB request fails at once instead of swapping
resource.setrlimit(resource.RLIMIT_AS, (limit, limit))
for case in range(count):
    path = os.path.join(folder, f"{case}.pth")
    try:
        state = torch_legacy.read_torch_legacy_state_dict(path)
        outcome = {"loaded": {
            name: [str(array.dtype), list(array.shape), array.tobytes().hex()] for name, array in state.items()
        }}
    except ValueError as error:
        outcome = {"ValueError": str(error)}
    except BaseException as error:  # recorded per case: one bad case must not hide the others
        outcome = {"other": f"{type(error).__name__}: {str(error)[:300]}"}
    print(json.dumps(outcome), flush=True)
"""


def read_in_subprocess(folder, count):
    """The outcome of reading ``folder/<case>.pth`` for each case, in a fresh process under an address-space limit
    (TensorFlow not imported); one dict per case: {"loaded": ...}, {"ValueError": message} or {"other": ...}."""
    result = run_python(
        READ_WORKER, torch_legacy.__file__, folder, str(count), timeout=120, env=quiet_env(OPENBLAS_NUM_THREADS="1")
    )
    outcomes = [json.loads(line) for line in result.stdout.splitlines()]
    assert len(outcomes) == count, result.stderr[-2000:]
    return outcomes


def mutate(data, rng):
    """One seeded damage: a replaced byte (random or a boundary value), a replaced int64, a cut, an insert, a delete."""
    data, kind = bytearray(data), rng.random()
    position = rng.randrange(len(data))
    if kind < 0.5:
        data[position] = rng.randrange(256)
    elif kind < 0.7:
        data[position] = rng.choice([0x00, 0x01, 0x7F, 0x80, 0xFF])
    elif kind < 0.8:
        value = rng.choice([-1, 0, 2**31, 2**40, 2**62, 2**63 - 1])
        data[position : position + 8] = value.to_bytes(8, "little", signed=True)
    elif kind < 0.87:
        del data[position:]
    elif kind < 0.94:
        data[position:position] = bytes([rng.randrange(256)])
    else:
        del data[position]
    return bytes(data)


def test_seeded_byte_mutations_load_correctly_or_raise_the_value_error(tmp_path, valid_file):
    """300 mutations of a valid file, read in a subprocess under an address-space limit: each one loads or raises
    the ValueError naming it; nothing else (no MemoryError, no other type, no crash)."""
    import random

    data, rng = valid_file.read_bytes(), random.Random(25)
    pickles, tail = split_legacy_file(valid_file)
    storage_start = len(data) - len(tail)
    mutants = [data] + [mutate(data, rng) for _ in range(300)]  # case 0: the control, unmutated
    for case, mutant in enumerate(mutants):
        (tmp_path / f"{case}.pth").write_bytes(mutant)
    started = time.monotonic()
    outcomes = read_in_subprocess(tmp_path, len(mutants))
    assert time.monotonic() - started < 30
    storage_values = {"float32": set(BASE.tolist()), "int64": set(COUNT.tolist())}
    assert {name: (value[0], tuple(value[1])) for name, value in outcomes[0]["loaded"].items()} == {
        name: (str(array.dtype), np.shape(array)) for name, array in EXPECTED.items()
    }
    loaded = 0
    for case, (mutant, outcome) in enumerate(zip(mutants, outcomes)):
        path = str(tmp_path / f"{case}.pth")
        assert set(outcome) <= {"loaded", "ValueError"}, (case, outcome)
        if "ValueError" in outcome:
            assert path in outcome["ValueError"] and "\n" not in outcome["ValueError"], (case, outcome)
            continue
        loaded += 1
        total = 0
        for name, (dtype, shape, hexed) in outcome["loaded"].items():
            array = np.frombuffer(bytes.fromhex(hexed), dtype=dtype).reshape(shape)
            total += array.nbytes
            if mutant[:storage_start] == data[:storage_start] and len(mutant) == len(data):
                # Only storage bytes changed: the same views of the changed storages.
                changed = np.frombuffer(mutant[storage_start + 8 : storage_start + 104], np.float32)
                counts = np.frombuffer(mutant[storage_start + 112 :], np.int64)
                storages = {id(BASE): changed, id(COUNT): counts}
                source, offset, size, stride = TENSORS[name]
                expected = np.lib.stride_tricks.as_strided(
                    storages[id(source)][offset:], size, [step * source.itemsize for step in stride]
                )
                assert array.tobytes() == np.ascontiguousarray(expected).tobytes(), (case, name)
            elif array.size:  # a changed pickle that still reads: every value comes from its storage
                assert set(array.ravel().tolist()) <= storage_values[dtype], (case, name)
        assert total <= 2 * len(mutant), case
    assert 0 < loaded < len(mutants)
