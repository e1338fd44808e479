"""Data set loaders: scikit-learn's digits offline, MNIST, Fashion-MNIST and CIFAR-10 with checksums.

Every loader returns ``(X, y)`` as NumPy arrays: ``X`` is ``float32`` in ``[0, 1]`` with the images'
shape (``(n, 8, 8)`` for digits, ``(n, 28, 28)`` for MNIST and Fashion-MNIST, ``(n, 3, 32, 32)`` for
CIFAR-10, channels first as torch expects) and ``y`` is ``int64``.

Downloads go to a cache directory (``$COURSELIB_DATA`` or ``~/.cache/courselib``) with atomic writes:
an archive is written to a temporary file, its MD5 is checked against the published value, and only
then is it renamed into place, so an interrupted or corrupt download never leaves a bad cache entry.

``root=`` reads files already on disk (for example the real MNIST test set in ``../shared/data/mnist``).
A local copy may have been recompressed, so there the archive's MD5 is not required; instead the
format is checked: IDX magic numbers, dimensions, counts and sizes, CIFAR-10 pickle keys and shapes.

The one in-memory cache of the module is explicit: :func:`digits_split`, the course's digits split, is read
once per process (``functools.lru_cache`` on a pure loader) and handed out as read-only arrays, so no
caller can change what the next one gets; :func:`load_dataset` returns fresh, writable copies of it.
"""

from __future__ import annotations

import functools
import gzip
import hashlib
import os
import pickle
import shutil
import tarfile
import tempfile
import urllib.request
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from sklearn.datasets import load_digits
from sklearn.model_selection import train_test_split

__all__ = [
    "DatasetError",
    "load_dataset",
    "digits_split",
    "read_idx",
    "read_cifar10_batch",
    "train_test_split_arrays",
    "upsample",
    "DATASETS",
]


class DatasetError(ValueError):
    """A data file is missing, truncated, corrupt or not in the expected format."""


@dataclass(frozen=True)
class _Remote:
    filename: str
    md5: str


_MNIST_URLS = ("https://ossci-datasets.s3.amazonaws.com/mnist/", "https://storage.googleapis.com/cvdf-datasets/mnist/")
_FASHION_URLS = ("http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/",)
_CIFAR_URLS = ("https://www.cs.toronto.edu/~kriz/",)

#: Published files and their MD5 checksums.
DATASETS = {
    "mnist": {
        "urls": _MNIST_URLS,
        "train": (
            _Remote("train-images-idx3-ubyte.gz", "f68b3c2dcbeaaa9fbdd348bbdeb94873"),
            _Remote("train-labels-idx1-ubyte.gz", "d53e105ee54ea40749a09fcbcd1e9432"),
        ),
        "test": (
            _Remote("t10k-images-idx3-ubyte.gz", "9fb629c4189551a2d022fa330f9573f3"),
            _Remote("t10k-labels-idx1-ubyte.gz", "ec29112dd5afa0611ce80d1b7f02629c"),
        ),
        "counts": {"train": 60000, "test": 10000},
    },
    "fashion-mnist": {
        "urls": _FASHION_URLS,
        "train": (
            _Remote("train-images-idx3-ubyte.gz", "8d4fb7e6c68d591d4c3dfef9ec88bf0d"),
            _Remote("train-labels-idx1-ubyte.gz", "25c81989df183df01b3e8a0aad5dffbe"),
        ),
        "test": (
            _Remote("t10k-images-idx3-ubyte.gz", "bef4ecab320f06d8554ea6380940ec79"),
            _Remote("t10k-labels-idx1-ubyte.gz", "bb300cfdad3c16e7a12a480ee83cd310"),
        ),
        "counts": {"train": 60000, "test": 10000},
    },
    "cifar10": {
        "urls": _CIFAR_URLS,
        "archive": _Remote("cifar-10-python.tar.gz", "c58f30108f718f92721af3b95e74349a"),
        "train": tuple(f"data_batch_{i}" for i in range(1, 6)),
        "test": ("test_batch",),
        "counts": {"train": 50000, "test": 10000},
    },
}

#: The digits split: stratified, 30% test, seed 0 (1,257 train / 540 test images).
DIGITS_TEST_SIZE = 0.3
DIGITS_SEED = 0


# ----------------------------------------------------------------------------- helpers


def default_cache_dir() -> Path:
    """``$COURSELIB_DATA`` if set, else ``~/.cache/courselib``."""
    return Path(os.environ.get("COURSELIB_DATA", Path.home() / ".cache" / "courselib"))


def _md5(path: Path) -> str:
    h = hashlib.md5()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _download(urls: tuple[str, ...], remote: _Remote, dest_dir: Path) -> Path:
    """Download ``remote`` into ``dest_dir`` atomically and verify its MD5; return the final path."""
    dest_dir.mkdir(parents=True, exist_ok=True)
    final = dest_dir / remote.filename
    if final.exists():
        if _md5(final) == remote.md5:
            return final
        final.unlink()  # a bad entry (should not happen, but never trust it)
    errors = []
    for base in urls:
        fd, tmp = tempfile.mkstemp(dir=dest_dir, prefix=f".{remote.filename}.", suffix=".part")
        os.close(fd)
        try:
            with urllib.request.urlopen(base + remote.filename, timeout=60) as resp, open(tmp, "wb") as out:
                while chunk := resp.read(1 << 20):
                    out.write(chunk)
            got = _md5(Path(tmp))
            if got != remote.md5:
                raise DatasetError(f"MD5 mismatch for {remote.filename}: expected {remote.md5}, got {got}")
            os.replace(tmp, final)
            return final
        except Exception as exc:
            errors.append(f"{base}{remote.filename}: {exc}")
        finally:
            if os.path.exists(tmp):
                os.unlink(tmp)
    raise DatasetError(
        "could not download "
        + remote.filename
        + ":\n  "
        + "\n  ".join(errors)
        + "\nWith no network, pass root= a folder that holds the files."
    )


def _open_maybe_gzip(path: Path) -> bytes:
    raw = path.read_bytes()
    if raw[:2] == b"\x1f\x8b":
        try:
            return gzip.decompress(raw)
        except (OSError, EOFError, gzip.BadGzipFile) as exc:
            raise DatasetError(f"{path}: corrupt or truncated gzip file ({exc})") from exc
    return raw


_IDX_DTYPES = {0x08: np.uint8, 0x09: np.int8, 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}


def read_idx(path: str | os.PathLike) -> np.ndarray:
    """Read an IDX file (gzipped or not) and check its header against its size.

    The IDX format (LeCun et al.) starts with a magic number ``0x0000TTDD`` (``TT`` the element type,
    ``DD`` the number of dimensions), then ``DD`` big-endian ``int32`` sizes, then the data.

    Raises
    ------
    DatasetError
        If the file is missing, the magic number is wrong, or the payload is shorter or longer than
        the header announces.
    """
    path = Path(path)
    if not path.exists():
        raise DatasetError(f"{path}: no such file")
    data = _open_maybe_gzip(path)
    if len(data) < 4:
        raise DatasetError(f"{path}: too short to be an IDX file ({len(data)} bytes)")
    zero, dtype_code, ndim = int.from_bytes(data[:2], "big"), data[2], data[3]
    if zero != 0 or dtype_code not in _IDX_DTYPES or not 1 <= ndim <= 4:
        raise DatasetError(f"{path}: bad IDX magic number {data[:4].hex()}")
    header = 4 + 4 * ndim
    if len(data) < header:
        raise DatasetError(f"{path}: truncated IDX header")
    shape = tuple(int.from_bytes(data[4 + 4 * i : 8 + 4 * i], "big") for i in range(ndim))
    dtype = np.dtype(_IDX_DTYPES[dtype_code])
    expected = int(np.prod(shape)) * dtype.itemsize
    if len(data) - header != expected:
        raise DatasetError(
            f"{path}: IDX header announces shape {shape} ({expected} bytes of data) "
            f"but the file holds {len(data) - header} bytes (truncated or corrupt)"
        )
    return np.frombuffer(data, dtype=dtype, offset=header).reshape(shape).astype(dtype.newbyteorder("="))


def read_cifar10_batch(path: str | os.PathLike) -> tuple[np.ndarray, np.ndarray]:
    """Read one CIFAR-10 python batch (a pickle with ``data`` (n, 3072) uint8 and ``labels``).

    The batches come from the official archive, which is MD5-checked before extraction.
    """
    path = Path(path)
    if not path.exists():
        raise DatasetError(f"{path}: no such file")
    try:
        with open(path, "rb") as fh:
            batch = pickle.load(fh, encoding="bytes")
    except Exception as exc:
        raise DatasetError(f"{path}: not a readable CIFAR-10 batch ({exc})") from exc
    if not isinstance(batch, dict):
        raise DatasetError(f"{path}: not a CIFAR-10 batch (a {type(batch).__name__}, not a dict)")
    data = batch.get(b"data", batch.get("data"))
    labels = batch.get(b"labels", batch.get("labels"))
    if data is None or labels is None:
        raise DatasetError(f"{path}: CIFAR-10 batch without 'data'/'labels' keys")
    data = np.asarray(data)
    labels = np.asarray(labels, dtype=np.int64)
    if data.dtype != np.uint8 or data.ndim != 2 or data.shape[1] != 3072 or len(labels) != len(data):
        raise DatasetError(
            f"{path}: CIFAR-10 batch has data {data.dtype}{data.shape} and {len(labels)} labels; "
            "expected uint8 (n, 3072) and n labels"
        )
    if labels.size and (labels.min() < 0 or labels.max() > 9):
        raise DatasetError(f"{path}: CIFAR-10 labels outside 0..9")
    return data.reshape(-1, 3, 32, 32), labels


def upsample(X: np.ndarray, size: int = 28) -> np.ndarray:
    """Resize a batch of images ``(n, H, W)`` or ``(n, C, H, W)`` to ``size x size`` (bilinear, torch)."""
    X = np.asarray(X, dtype=np.float32)
    if X.ndim not in (3, 4):
        raise ValueError(f"expected images of shape (n, H, W) or (n, C, H, W), got {X.shape}")
    t = torch.from_numpy(X if X.ndim == 4 else X[:, None])
    out = F.interpolate(t, size=(size, size), mode="bilinear", align_corners=False).clamp_(0, 1).numpy()
    return out if X.ndim == 4 else out[:, 0]


def train_test_split_arrays(X, y, *, test_size: float = 0.3, seed: int = 0):
    """Stratified split of ``(X, y)`` with a fixed seed: ``X_train, X_test, y_train, y_test``."""
    return train_test_split(X, y, test_size=test_size, random_state=seed, stratify=y)


# ----------------------------------------------------------------------------- loaders


def _check_split(split: str) -> None:
    if split not in ("train", "test"):
        raise ValueError(f"split must be 'train' or 'test', got {split!r}")


@functools.lru_cache(maxsize=1)
def _read_digits_split() -> tuple[np.ndarray, ...]:
    """The pure loader behind :func:`digits_split` (cached; ``_read_digits_split.cache_clear()`` forgets it)."""
    d = load_digits()
    X = (d.images / 16.0).astype(np.float32)
    y = d.target.astype(np.int64)
    parts = tuple(
        np.ascontiguousarray(a) for a in train_test_split_arrays(X, y, test_size=DIGITS_TEST_SIZE, seed=DIGITS_SEED)
    )
    for a in parts:
        a.flags.writeable = False
    return parts


def digits_split() -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """The course's digits split: ``X_train, X_test, y_train, y_test`` (scikit-learn's order), read-only.

    scikit-learn's bundled 8x8 digits scaled to ``[0, 1]``, split stratified 70/30 with seed 0
    (``DIGITS_TEST_SIZE``, ``DIGITS_SEED``): 1,257 training and 540 test images. This is the split
    :func:`load_dataset` returns for ``"digits"`` (as writable copies); the explorer callbacks of
    :mod:`courselib.binary_codes` and :mod:`courselib.itq` read it directly.

    Cached: the split is computed once per process (``functools.lru_cache`` on a pure loader) and every
    call returns the same arrays. They are read-only, so the cache cannot be changed through them: copy
    one (``X_train.copy()``) to modify it.

    Returns
    -------
    X_train, X_test : ndarray of float32, shape (n, 8, 8), read-only
    y_train, y_test : ndarray of int64, shape (n,), read-only

    Examples
    --------
    >>> X_train, X_test, y_train, y_test = digits_split()
    >>> X_train.shape, X_test.shape, X_train.flags.writeable
    ((1257, 8, 8), (540, 8, 8), False)
    """
    X_tr, X_te, y_tr, y_te = _read_digits_split()
    return X_tr, X_te, y_tr, y_te


def _load_digits(split: str):
    X_tr, X_te, y_tr, y_te = digits_split()
    return (X_tr.copy(), y_tr.copy()) if split == "train" else (X_te.copy(), y_te.copy())


def _find(root: Path, filename: str) -> Path:
    """A file in ``root``, gzipped or not (``x.gz`` or ``x``)."""
    for cand in (root / filename, root / filename.removesuffix(".gz")):
        if cand.exists():
            return cand
    raise DatasetError(f"{root}: neither {filename} nor {filename.removesuffix('.gz')} is there")


def _load_idx_pair(name: str, split: str, root: Path | None, download: bool, cache_dir: Path | None):
    spec = DATASETS[name]
    img_remote, lbl_remote = spec[split]
    if root is not None:
        root = Path(root)
        if not root.is_dir():
            raise DatasetError(f"root={root} is not a folder")
        img_path, lbl_path = _find(root, img_remote.filename), _find(root, lbl_remote.filename)
    else:
        if not download:
            raise DatasetError(f"{name} is not on disk: pass root= or download=True")
        dest = Path(cache_dir or default_cache_dir()) / name
        img_path = _download(spec["urls"], img_remote, dest)
        lbl_path = _download(spec["urls"], lbl_remote, dest)
    images, labels = read_idx(img_path), read_idx(lbl_path)
    if images.ndim != 3 or images.shape[1:] != (28, 28) or images.dtype != np.uint8:
        raise DatasetError(f"{img_path}: expected uint8 images of shape (n, 28, 28), got {images.dtype}{images.shape}")
    if labels.ndim != 1 or labels.dtype != np.uint8:
        raise DatasetError(f"{lbl_path}: expected a 1-D uint8 label file, got {labels.dtype}{labels.shape}")
    if len(images) != len(labels):
        raise DatasetError(f"{name}: {len(images)} images but {len(labels)} labels")
    if len(images) != spec["counts"][split]:
        raise DatasetError(f"{name} {split}: expected {spec['counts'][split]} images, found {len(images)}")
    if labels.max() > 9:
        raise DatasetError(f"{lbl_path}: labels outside 0..9")
    return (images.astype(np.float32) / 255.0), labels.astype(np.int64)


def _load_cifar10(split: str, root: Path | None, download: bool, cache_dir: Path | None):
    spec = DATASETS["cifar10"]
    if root is not None:
        root = Path(root)
        folder = root / "cifar-10-batches-py" if (root / "cifar-10-batches-py").is_dir() else root
        if not folder.is_dir():
            raise DatasetError(f"root={root} is not a folder")
    else:
        if not download:
            raise DatasetError("cifar10 is not on disk: pass root= or download=True")
        dest = Path(cache_dir or default_cache_dir()) / "cifar10"
        folder = dest / "cifar-10-batches-py"
        if not (folder / "test_batch").exists():
            archive = _download(spec["urls"], spec["archive"], dest)
            tmpdir = Path(tempfile.mkdtemp(dir=dest, prefix=".extract."))
            try:
                with tarfile.open(archive, "r:gz") as tar:
                    tar.extractall(tmpdir, filter="data")
                os.replace(tmpdir / "cifar-10-batches-py", folder)
            finally:
                shutil.rmtree(tmpdir, ignore_errors=True)
    parts = [read_cifar10_batch(folder / b) for b in spec[split]]
    X = np.concatenate([p[0] for p in parts]).astype(np.float32) / 255.0
    y = np.concatenate([p[1] for p in parts])
    if len(X) != spec["counts"][split]:
        raise DatasetError(f"cifar10 {split}: expected {spec['counts'][split]} images, found {len(X)}")
    return X, y


def load_dataset(
    name: str,
    split: str = "train",
    root: str | os.PathLike | None = None,
    *,
    image_size: int | None = None,
    download: bool = True,
    cache_dir: str | os.PathLike | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Load a data set as ``(X, y)``.

    Parameters
    ----------
    name : {"digits", "mnist", "fashion-mnist", "cifar10"}
        ``"digits"`` is scikit-learn's bundled 8x8 digits (1,797 images; no network needed), split
        into a fixed stratified 70/30 train/test split with seed 0 (1,257 / 540 images).
    split : {"train", "test"}
    root : path, optional
        Read the files from this folder instead of the cache (IDX files gzipped or not; CIFAR-10
        python batches, in ``root`` or ``root/cifar-10-batches-py``). Their format is checked.
    image_size : int, optional
        Resize the images to ``image_size x image_size`` (bilinear), e.g. 28 to give digits MNIST's size.
    download : bool, default True
        Download missing files into the cache (MD5-checked, atomic).
    cache_dir : path, optional
        Where downloads go (default ``$COURSELIB_DATA`` or ``~/.cache/courselib``).

    Returns
    -------
    X : ndarray of float32 in [0, 1], shape (n, H, W) or (n, 3, H, W)
    y : ndarray of int64, shape (n,)

    Examples
    --------
    >>> X, y = load_dataset("digits", "test")
    >>> X.shape, X.dtype, y.dtype
    ((540, 8, 8), dtype('float32'), dtype('int64'))
    """
    _check_split(split)
    key = str(name).lower()
    if key == "digits":
        if root is not None:
            raise ValueError("digits ships with scikit-learn; root= is not used for it")
        X, y = _load_digits(split)
    elif key in ("mnist", "fashion-mnist"):
        X, y = _load_idx_pair(key, split, root, download, Path(cache_dir) if cache_dir else None)
    elif key == "cifar10":
        X, y = _load_cifar10(split, root, download, Path(cache_dir) if cache_dir else None)
    else:
        raise ValueError(f"unknown data set {name!r}; choose one of 'digits', 'mnist', 'fashion-mnist', 'cifar10'")
    if image_size is not None:
        if int(image_size) < 1:
            raise ValueError(f"image_size must be a positive integer, got {image_size}")
        X = upsample(X, int(image_size))
    return np.ascontiguousarray(X, dtype=np.float32), y.astype(np.int64)
