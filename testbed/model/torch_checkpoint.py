"""Read a PyTorch ``.pt`` state_dict as numpy arrays, without importing torch.

``torch.save`` (zip format, torch ≥ 1.6) writes a zip holding, under one top-level folder
``<archive>/``:

- ``data.pkl``: a pickle of the saved object. Each tensor is pickled as a call to
  ``torch._utils._rebuild_tensor_v2(storage, storage_offset, size, stride, requires_grad, hooks)``
  (wrapped in ``torch._utils._rebuild_parameter(tensor, requires_grad, hooks)`` for an
  ``nn.Parameter``), and each storage is a persistent id
  ``('storage', torch.<Type>Storage, key, location, numel)``;
- ``data/<key>``: the storage's raw elements, in the byte order named by ``byteorder``
  (``little`` when absent: files written before torch 1.10 have none).

Offsets, sizes and strides count elements, not bytes; several tensors may share a storage
(views). Unpickling (testbed.model.safe_pickle) runs only an allow-list of callables: ``collections.OrderedDict``, the two
rebuild functions above and the ``torch.*Storage`` types in `STORAGE_DTYPES`. Anything else —
a pickled ``nn.Module``, an optimizer class, arbitrary code — is refused with an
`ImportFormatError` naming the class, so reading an untrusted checkpoint cannot execute code.
"""

from __future__ import annotations

import math
import pickle
import zipfile
from collections import OrderedDict
from pathlib import Path
from typing import Any, Mapping

import numpy as np

from testbed.errors import ImportFormatError
from testbed.model.safe_pickle import AllowListUnpickler

# torch storage type -> element type as stored. numpy has no bfloat16: its 16 bits are the top
# half of a float32, so bfloat16 storages are widened to float32 exactly.
MAX_ELEMENTS = 1 << 28  # per tensor (1 GiB of float32): far beyond any π² network's layer
STORAGE_DTYPES: dict[str, str] = {
    "BFloat16Storage": "u2",
    "DoubleStorage": "f8",
    "FloatStorage": "f4",
    "HalfStorage": "f2",
    "LongStorage": "i8",
    "IntStorage": "i4",
    "ShortStorage": "i2",
    "CharStorage": "i1",
    "ByteStorage": "u1",
    "BoolStorage": "?",
}

# Where training scripts commonly nest the weights inside a larger checkpoint dict.
NESTED_KEYS = ("state_dict", "model_state_dict", "model", "net")


class _StorageType:
    """Stands in for ``torch.<name>Storage`` while unpickling: only its element type matters."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.dtype = np.dtype(STORAGE_DTYPES[name])


class _Tensor:
    """A tensor awaiting materialisation: storage key, element type, offset, size, stride."""

    def __init__(self, storage: tuple[str, _StorageType], offset: int, size: tuple[int, ...],
                 stride: tuple[int, ...]) -> None:
        self.key, self.storage_type = storage
        self.offset, self.size, self.stride = int(offset), tuple(size), tuple(stride)


def _rebuild_tensor_v2(storage: Any, storage_offset: int, size: tuple[int, ...], stride: tuple[int, ...],
                       *_ignored: Any) -> _Tensor:
    # requires_grad, backward hooks and (optional) metadata do not change the values.
    return _Tensor(storage, storage_offset, size, stride)


def _rebuild_parameter(data: _Tensor, *_ignored: Any) -> _Tensor:
    return data


_ALLOWED = {
    ("collections", "OrderedDict"): OrderedDict,
    ("torch._utils", "_rebuild_tensor_v2"): _rebuild_tensor_v2,
    ("torch._utils", "_rebuild_parameter"): _rebuild_parameter,
}


class _RestrictedUnpickler(AllowListUnpickler):
    def __init__(self, file: Any, where: str) -> None:
        super().__init__(file, _ALLOWED, self._refuse)
        self.where = where

    def _refuse(self, module: str, name: str) -> ImportFormatError:
        return ImportFormatError(
            f"{self.where}: the checkpoint pickles '{module}.{name}', which this reader does not load; "
            "save the weights only, e.g. torch.save(model.state_dict(), path)")

    def find_class(self, module: str, name: str) -> Any:
        if module == "torch" and name in STORAGE_DTYPES:
            return _StorageType(name)
        return super().find_class(module, name)

    def persistent_load(self, pid: Any) -> tuple[str, _StorageType]:
        if not (isinstance(pid, tuple) and len(pid) == 5 and pid[0] == "storage"
                and isinstance(pid[1], _StorageType)):
            raise ImportFormatError(f"{self.where}: unsupported persistent id {pid!r}; "
                                    f"expected ('storage', torch.<Type>Storage, key, location, numel)")
        return str(pid[2]), pid[1]


def read_state_dict(path: str | Path) -> dict[str, np.ndarray]:
    """The tensors of a torch-saved state_dict at `path`, as name -> numpy array (C-contiguous copies).

    A checkpoint dict that nests the weights under one of `NESTED_KEYS` is unwrapped.
    """
    path = Path(path)
    if not path.is_file():
        raise ImportFormatError(f"{path}: no such checkpoint file")
    try:
        with zipfile.ZipFile(path) as archive:
            return _read_archive(archive, str(path))
    except zipfile.BadZipFile:
        raise ImportFormatError(f"{path}: not a zip-format torch checkpoint; re-save it with "
                                "torch.save(model.state_dict(), path) from torch ≥ 1.6") from None


def _read_archive(archive: zipfile.ZipFile, where: str) -> dict[str, np.ndarray]:
    pickles = [name for name in archive.namelist() if name.endswith("/data.pkl") and name.count("/") == 1]
    if len(pickles) != 1:
        raise ImportFormatError(f"{where}: expected exactly one '<archive>/data.pkl' in the zip, "
                                f"found {len(pickles)}; is this a torch.save file?")
    prefix = pickles[0][: -len("data.pkl")]
    byteorder = "little"
    if f"{prefix}byteorder" in archive.namelist():
        byteorder = archive.read(f"{prefix}byteorder").decode(errors="replace").strip()
        if byteorder not in ("little", "big"):
            raise ImportFormatError(f"{where}: byteorder record is {byteorder!r}; expected 'little' or 'big'")
    with archive.open(pickles[0]) as fh:
        try:
            obj = _RestrictedUnpickler(fh, where).load()
        except (pickle.UnpicklingError, EOFError, TypeError, ValueError, AttributeError) as exc:
            raise ImportFormatError(f"{where}: corrupt data.pkl: {exc}") from None
    tensors = _tensor_mapping(obj, where)
    storages: dict[str, np.ndarray] = {}
    out: dict[str, np.ndarray] = {}
    for name, tensor in tensors.items():
        if tensor.key not in storages:
            storages[tensor.key] = _storage(archive, prefix, tensor, byteorder, where)
        out[name] = _materialise(storages[tensor.key], tensor, f"{where}: tensor '{name}'")
    return out


def _tensor_mapping(obj: Any, where: str) -> Mapping[str, _Tensor]:
    if isinstance(obj, Mapping) and not all(isinstance(v, _Tensor) for v in obj.values()):
        nested = [key for key in NESTED_KEYS if isinstance(obj.get(key), Mapping)]
        if nested:
            obj = obj[nested[0]]
    if not isinstance(obj, Mapping) or not obj:
        raise ImportFormatError(f"{where}: the checkpoint holds a {type(obj).__name__}, not a state_dict "
                                f"(a non-empty mapping name -> tensor, possibly nested under one of {list(NESTED_KEYS)})")
    bad = [str(key) for key, value in obj.items() if not isinstance(value, _Tensor)]
    if bad:
        raise ImportFormatError(f"{where}: entries {bad[:5]} of the state_dict are not tensors")
    return {str(key): value for key, value in obj.items()}


def _storage(archive: zipfile.ZipFile, prefix: str, tensor: _Tensor, byteorder: str, where: str) -> np.ndarray:
    member = f"{prefix}data/{tensor.key}"
    try:
        info = archive.getinfo(member)
    except KeyError:
        raise ImportFormatError(f"{where}: storage '{member}' is missing from the zip") from None
    if info.file_size > MAX_ELEMENTS * 8:  # before inflating it (a zip may declare any size)
        raise ImportFormatError(f"{where}: storage '{member}' declares {info.file_size} bytes, more than any "
                                f"network's weights (at most {MAX_ELEMENTS} elements)")
    raw = archive.read(info)
    dtype = tensor.storage_type.dtype.newbyteorder("<" if byteorder == "little" else ">")
    if len(raw) % dtype.itemsize:
        raise ImportFormatError(f"{where}: storage '{member}' has {len(raw)} bytes, not a whole number "
                                f"of {tensor.storage_type.name} elements")
    elements = np.frombuffer(raw, dtype=dtype)
    if tensor.storage_type.name == "BFloat16Storage":
        return (elements.astype(np.uint32) << 16).view(np.float32)
    return elements


def _materialise(storage: np.ndarray, tensor: _Tensor, where: str) -> np.ndarray:
    if len(tensor.size) != len(tensor.stride) or any(s < 0 for s in tensor.size + tensor.stride) or tensor.offset < 0:
        raise ImportFormatError(f"{where}: bad geometry size={tensor.size} stride={tensor.stride} "
                                f"offset={tensor.offset}")
    count = math.prod(tensor.size)
    if count > MAX_ELEMENTS:  # a stride-0 view declares any size over a few bytes of storage
        raise ImportFormatError(f"{where}: size={tensor.size} is {count} elements; a weight tensor may hold at most "
                                f"{MAX_ELEMENTS}")
    # The last element read is offset + Σ (size_d − 1)·stride_d; it must lie inside the storage.
    last = tensor.offset + sum((n - 1) * s for n, s in zip(tensor.size, tensor.stride)) if all(tensor.size) else -1
    if last >= len(storage):
        raise ImportFormatError(f"{where}: size={tensor.size} stride={tensor.stride} offset={tensor.offset} "
                                f"reads past the end of its {len(storage)}-element storage")
    item = storage.itemsize
    view = np.lib.stride_tricks.as_strided(storage[tensor.offset:] if all(tensor.size) else storage[:0],
                                           shape=tensor.size, strides=tuple(s * item for s in tensor.stride),
                                           writeable=False)
    return np.array(view, dtype=storage.dtype.newbyteorder("="), order="C")
