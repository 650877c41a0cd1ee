"""The torch-free .pt reader: hand-made archives (no torch needed) and real torch.save files."""

from __future__ import annotations

import importlib
import struct
import sys
import zipfile

import numpy as np
import pytest

from testbed.errors import ImportFormatError
from testbed.model import torch_checkpoint
from testbed.model.torch_checkpoint import read_state_dict


def _str(text: str) -> bytes:
    raw = text.encode()
    return b"X" + struct.pack("<I", len(raw)) + raw  # BINUNICODE


def _int(value: int) -> bytes:
    return b"J" + struct.pack("<i", value)  # BININT


def _tuple(*items: bytes) -> bytes:
    return b"(" + b"".join(items) + b"t"  # MARK … TUPLE


def tensor_pickle(name: str, key: str, numel: int, offset: int, size, stride, storage="FloatStorage") -> bytes:
    """Protocol-2 opcodes of {name: _rebuild_tensor_v2(storage, offset, size, stride, False, OrderedDict())}."""
    persistent_id = _tuple(_str("storage"), f"ctorch\n{storage}\n".encode(), _str(key), _str("cpu"), _int(numel))
    args = _tuple(persistent_id + b"Q", _int(offset), _tuple(*map(_int, size)), _tuple(*map(_int, stride)),
                  b"\x89", b"ccollections\nOrderedDict\n)R")
    return b"\x80\x02}" + _str(name) + b"ctorch._utils\n_rebuild_tensor_v2\n" + args + b"Rs."


def handmade(path, pickle_bytes: bytes, storages: dict[str, bytes], byteorder: str | None = "little"):
    with zipfile.ZipFile(path, "w") as zf:
        zf.writestr("archive/data.pkl", pickle_bytes)
        if byteorder is not None:
            zf.writestr("archive/byteorder", byteorder)
        for key, raw in storages.items():
            zf.writestr(f"archive/data/{key}", raw)
    return path


def test_handmade_strided_view(tmp_path):
    storage = np.arange(24, dtype="<f4")
    # the transpose of columns 1..3 of a 4×6 matrix: offset 1, size (3, 4), stride (1, 6)
    path = handmade(tmp_path / "a.pt", tensor_pickle("w", "0", 24, 1, (3, 4), (1, 6)), {"0": storage.tobytes()})
    out = read_state_dict(path)
    np.testing.assert_array_equal(out["w"], storage.reshape(4, 6)[:, 1:4].T)
    assert out["w"].flags.c_contiguous and out["w"].dtype == np.float32


def test_handmade_big_endian_and_missing_byteorder(tmp_path):
    values = np.array([1.5, -2.0, 3.25], dtype=np.float64)
    big = handmade(tmp_path / "b.pt", tensor_pickle("x", "7", 3, 0, (3,), (1,), "DoubleStorage"),
                   {"7": values.astype(">f8").tobytes()}, "big")
    np.testing.assert_array_equal(read_state_dict(big)["x"], values)
    old = handmade(tmp_path / "o.pt", tensor_pickle("x", "7", 3, 0, (3,), (1,), "DoubleStorage"),
                   {"7": values.astype("<f8").tobytes()}, None)  # before torch 1.10: no byteorder record
    np.testing.assert_array_equal(read_state_dict(old)["x"], values)


def test_reader_needs_no_torch(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "torch", None)  # any `import torch` now raises ImportError
    module = importlib.reload(torch_checkpoint)
    path = handmade(tmp_path / "a.pt", tensor_pickle("w", "0", 4, 0, (2, 2), (2, 1)),
                    {"0": np.arange(4, dtype="<f4").tobytes()})
    np.testing.assert_array_equal(module.read_state_dict(path)["w"], [[0, 1], [2, 3]])


def test_refuses_code_in_pickle(tmp_path):
    evil = b"\x80\x02cos\nsystem\n" + _tuple(_str("echo pwned")) + b"R."
    with pytest.raises(ImportFormatError, match=r"pickles 'os.system', which this reader does not load"):
        read_state_dict(handmade(tmp_path / "e.pt", evil, {}))


@pytest.mark.parametrize("pickle_bytes,storages,match", [
    (tensor_pickle("w", "0", 4, 0, (2, 2), (2, 1)), {}, r"storage 'archive/data/0' is missing"),
    (tensor_pickle("w", "0", 4, 2, (2, 2), (2, 1)), {"0": bytes(16)}, "reads past the end of its 4-element storage"),
    (tensor_pickle("w", "0", 4, 0, (2, 2), (2, 1)), {"0": bytes(15)}, "not a whole number of FloatStorage elements"),
    (tensor_pickle("w", "0", 4, 0, (2,), (2, 1)), {"0": bytes(16)}, "bad geometry"),
    (tensor_pickle("w", "0", 4, 0, (2,), (1,), "ComplexFloatStorage"), {"0": bytes(32)},
     "pickles 'torch.ComplexFloatStorage'"),
    (b"\x80\x02]q\x00.", {}, "holds a list, not a state_dict"),
    (b"\x80\x02}q\x00" + _str("epoch") + _int(3) + b"s.", {}, r"entries \['epoch'\] of the state_dict are not tensors"),
    (b"\x80\x02}" + _str("w"), {}, "corrupt data.pkl"),
])
def test_malformed_archives(tmp_path, pickle_bytes, storages, match):
    with pytest.raises(ImportFormatError, match=match) as err:
        read_state_dict(handmade(tmp_path / "m.pt", pickle_bytes, storages))
    assert "\n" not in str(err.value)


def test_not_a_zip(tmp_path):
    (tmp_path / "legacy.pt").write_bytes(b"\x80\x02\x8a\nl\xfc\x9cF\xf9 j\xa8P\x19.")  # legacy torch magic
    with pytest.raises(ImportFormatError, match="not a zip-format torch checkpoint"):
        read_state_dict(tmp_path / "legacy.pt")
    with pytest.raises(ImportFormatError, match="no such checkpoint file"):
        read_state_dict(tmp_path / "missing.pt")


def test_zip_without_pickle(tmp_path):
    with zipfile.ZipFile(tmp_path / "z.pt", "w") as zf:
        zf.writestr("readme.txt", "hello")
    with pytest.raises(ImportFormatError, match="expected exactly one '<archive>/data.pkl'"):
        read_state_dict(tmp_path / "z.pt")


@pytest.mark.torch
def test_matches_torch_load_on_real_files(tmp_path):
    torch = pytest.importorskip("torch")
    base = torch.arange(48, dtype=torch.float32).reshape(6, 8)
    saved = {
        "view": base[1:5, 2:7].t(),          # offset + transposed strides into a shared storage
        "row": base[3],                       # same storage again
        "half": base.half(),
        "double": base.double()[::2, ::3],
        "long": torch.arange(5),
        "bool": torch.tensor([True, False, True]),
        "bf16": torch.tensor([1.5, -0.25, 3.0], dtype=torch.bfloat16),
        "scalar": torch.tensor(2.5),
        "empty": torch.zeros(0, 3),
        "param": torch.nn.Parameter(torch.ones(2, 2)),
    }
    torch.save(saved, tmp_path / "misc.pt")
    out = read_state_dict(tmp_path / "misc.pt")
    assert list(out) == list(saved)
    for name, tensor in saved.items():
        expected = tensor.detach().float().numpy() if name == "bf16" else tensor.detach().numpy()
        assert out[name].shape == expected.shape, name
        np.testing.assert_array_equal(out[name], expected, err_msg=name)
        assert out[name].dtype == expected.dtype, name


@pytest.mark.torch
def test_real_state_dict_and_nested_checkpoint(tmp_path):
    torch = pytest.importorskip("torch")
    model = torch.nn.Sequential(torch.nn.Linear(5, 4, bias=False), torch.nn.Linear(4, 3, bias=False))
    torch.save(model.state_dict(), tmp_path / "sd.pt")
    out = read_state_dict(tmp_path / "sd.pt")
    assert list(out) == ["0.weight", "1.weight"]
    for name, tensor in model.state_dict().items():
        np.testing.assert_array_equal(out[name], tensor.numpy())
    torch.save({"epoch": 7, "state_dict": model.state_dict()}, tmp_path / "ckpt.pt")
    assert list(read_state_dict(tmp_path / "ckpt.pt")) == ["0.weight", "1.weight"]


@pytest.mark.torch
def test_whole_module_is_refused(tmp_path):
    torch = pytest.importorskip("torch")
    torch.save(torch.nn.Linear(2, 2), tmp_path / "module.pt")
    with pytest.raises(ImportFormatError, match=r"pickles 'torch.nn.modules.linear.Linear'.*model.state_dict\(\)"):
        read_state_dict(tmp_path / "module.pt")
