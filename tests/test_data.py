"""courselib.data: digits split, IDX and CIFAR readers, MD5-checked atomic downloads, bad files."""

from __future__ import annotations

import gzip
import hashlib
import pickle
import struct

import numpy as np
import pytest

from courselib import data
from courselib.data import DatasetError, load_dataset, read_idx


def write_idx(path, array: np.ndarray, gz: bool = True) -> None:
    code = {np.uint8: 0x08, np.int32: 0x0C}[array.dtype.type]
    payload = struct.pack(">HBB", 0, code, array.ndim) + b"".join(struct.pack(">i", s) for s in array.shape)
    payload += array.astype(array.dtype.newbyteorder(">")).tobytes()
    path.write_bytes(gzip.compress(payload) if gz else payload)


def fake_mnist(folder, n=10000, gz=True, seed=0):
    rng = np.random.default_rng(seed)
    imgs = rng.integers(0, 256, size=(n, 28, 28), dtype=np.uint8)
    lbls = rng.integers(0, 10, size=n).astype(np.uint8)
    suffix = ".gz" if gz else ""
    write_idx(folder / f"t10k-images-idx3-ubyte{suffix}", imgs, gz)
    write_idx(folder / f"t10k-labels-idx1-ubyte{suffix}", lbls, gz)
    return imgs, lbls


# ------------------------------------------------------------------ digits


def test_digits_split_is_fixed_stratified_and_scaled():
    Xtr, ytr = load_dataset("digits", "train")
    Xte, yte = load_dataset("digits", "test")
    assert Xtr.shape == (1257, 8, 8) and Xte.shape == (540, 8, 8)
    assert Xtr.dtype == np.float32 and ytr.dtype == np.int64
    assert 0.0 <= Xtr.min() and Xtr.max() <= 1.0 and Xtr.max() == 1.0
    # stratified: class proportions within one image of each other
    p_tr, p_te = np.bincount(ytr) / len(ytr), np.bincount(yte) / len(yte)
    assert np.abs(p_tr - p_te).max() < 0.01
    # fixed: a second call gives the same split; together they are all of scikit-learn's digits
    Xtr2, _ = load_dataset("digits", "train")
    np.testing.assert_array_equal(Xtr, Xtr2)
    from sklearn.datasets import load_digits

    assert len(ytr) + len(yte) == len(load_digits().target)


def test_digits_split_is_one_cached_read_only_split_shared_by_the_explorers():
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    from courselib import itq

    split = data.digits_split()
    assert all(a is b for a, b in zip(split, data.digits_split()))  # cached: the same arrays
    assert not any(a.flags.writeable for a in split)
    with pytest.raises(ValueError, match="read-only"):
        split[0][0, 0, 0] = 1.0
    # the answer key: scikit-learn's digits / 16, split stratified 70/30 with seed 0
    d = load_digits()
    key = train_test_split(d.images / 16.0, d.target, test_size=0.3, random_state=0, stratify=d.target)
    for got, want in zip(split, key):
        np.testing.assert_allclose(got, want, rtol=0, atol=1e-7)
    # load_dataset hands out writable copies: changing one changes neither the cache nor the next caller's
    Xtr, ytr = load_dataset("digits", "train")
    assert Xtr.flags.writeable and not np.shares_memory(Xtr, split[0])
    Xtr[:] = 0.0
    ytr[:] = 0
    np.testing.assert_array_equal(load_dataset("digits", "train")[0], split[0])
    np.testing.assert_array_equal(load_dataset("digits", "test")[1], split[3])
    # the ITQ explorer reads the same split, in the same order, flattened
    flat = itq._digits()
    np.testing.assert_array_equal(flat[0], split[0].reshape(len(split[0]), -1))
    np.testing.assert_array_equal(flat[3], split[3])


def test_digits_upsampled_to_28():
    X, y = load_dataset("digits", "test", image_size=28)
    assert X.shape == (540, 28, 28) and X.dtype == np.float32
    assert 0.0 <= X.min() and X.max() <= 1.0


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(name="imagenet"), "unknown data set"),
        (dict(name="digits", split="validation"), "split must be"),
        (dict(name="digits", image_size=0), "image_size"),
    ],
)
def test_bad_arguments(kwargs, match):
    with pytest.raises(ValueError, match=match):
        load_dataset(**kwargs)


# ------------------------------------------------------------------ IDX


@pytest.mark.parametrize("gz", [True, False])
def test_idx_round_trip(tmp_path, gz):
    imgs, lbls = fake_mnist(tmp_path, gz=gz)
    X, y = load_dataset("mnist", "test", root=tmp_path)
    assert X.shape == (10000, 28, 28) and X.dtype == np.float32
    np.testing.assert_array_equal((X * 255).round().astype(np.uint8), imgs)
    np.testing.assert_array_equal(y, lbls.astype(np.int64))


def test_idx_truncated_file_is_refused(tmp_path):
    fake_mnist(tmp_path, gz=False)
    p = tmp_path / "t10k-images-idx3-ubyte"
    p.write_bytes(p.read_bytes()[:-100])
    with pytest.raises(DatasetError, match="truncated or corrupt"):
        load_dataset("mnist", "test", root=tmp_path)


def test_idx_bad_magic_is_refused(tmp_path):
    fake_mnist(tmp_path, gz=False)
    p = tmp_path / "t10k-labels-idx1-ubyte"
    p.write_bytes(b"\x12\x34" + p.read_bytes()[2:])
    with pytest.raises(DatasetError, match="magic"):
        load_dataset("mnist", "test", root=tmp_path)


def test_corrupt_gzip_is_refused(tmp_path):
    fake_mnist(tmp_path, gz=True)
    p = tmp_path / "t10k-images-idx3-ubyte.gz"
    raw = p.read_bytes()
    p.write_bytes(raw[: len(raw) // 2])
    with pytest.raises(DatasetError, match="gzip"):
        load_dataset("mnist", "test", root=tmp_path)


def test_wrong_count_and_missing_files(tmp_path):
    fake_mnist(tmp_path, n=100)
    with pytest.raises(DatasetError, match="expected 10000 images"):
        load_dataset("mnist", "test", root=tmp_path)
    with pytest.raises(DatasetError, match="neither"):
        load_dataset("mnist", "train", root=tmp_path)
    with pytest.raises(DatasetError, match="not a folder"):
        load_dataset("mnist", "test", root=tmp_path / "nope")


def test_read_idx_int32(tmp_path):
    a = np.arange(-6, 6, dtype=np.int32).reshape(3, 4)
    write_idx(tmp_path / "x.idx", a, gz=False)
    np.testing.assert_array_equal(read_idx(tmp_path / "x.idx"), a)


# ------------------------------------------------------------------ real MNIST (../shared)

SHA256 = {
    "t10k-images-idx3-ubyte.gz": "0fa7898d509279e482958e8ce81c8e77db3f2f8254e26661ceb7762c4d494ce7",
    "t10k-labels-idx1-ubyte.gz": "ff7bcfd416de33731a308c3f266cc351222c34898ecbeaf847f06e48f7ec33f2",
}


def test_real_mnist_test_set(shared_mnist):
    for name, digest in SHA256.items():
        raw = gzip.decompress((shared_mnist / name).read_bytes())
        assert hashlib.sha256(raw).hexdigest() == digest
    X, y = load_dataset("mnist", split="test", root=shared_mnist)
    assert X.shape == (10000, 28, 28) and X.dtype == np.float32 and y.dtype == np.int64
    assert 0.0 <= X.min() and X.max() <= 1.0
    assert np.bincount(y, minlength=10).tolist() == [980, 1135, 1032, 1010, 982, 892, 958, 1028, 974, 1009]
    # the pixels are the raw bytes / 255
    raw = gzip.decompress((shared_mnist / "t10k-images-idx3-ubyte.gz").read_bytes())
    first = np.frombuffer(raw, dtype=np.uint8, offset=16, count=784).reshape(28, 28)
    np.testing.assert_array_equal((X[0] * 255).round().astype(np.uint8), first)


# ------------------------------------------------------------------ CIFAR-10


def _cifar_batch(path, n, seed):
    rng = np.random.default_rng(seed)
    d = {b"data": rng.integers(0, 256, size=(n, 3072), dtype=np.uint8), b"labels": rng.integers(0, 10, size=n).tolist()}
    with open(path, "wb") as fh:
        pickle.dump(d, fh)
    return d


def test_cifar_reader_and_shapes(tmp_path, monkeypatch):
    folder = tmp_path / "cifar-10-batches-py"
    folder.mkdir()
    d = _cifar_batch(folder / "test_batch", 10, 0)
    monkeypatch.setitem(data.DATASETS["cifar10"]["counts"], "test", 10)
    X, y = load_dataset("cifar10", "test", root=tmp_path)
    assert X.shape == (10, 3, 32, 32) and X.dtype == np.float32
    np.testing.assert_array_equal((X.reshape(10, -1) * 255).round().astype(np.uint8), d[b"data"])
    np.testing.assert_array_equal(y, d[b"labels"])


def test_cifar_bad_batch(tmp_path):
    p = tmp_path / "test_batch"
    p.write_bytes(b"not a pickle")
    with pytest.raises(DatasetError, match="not a readable CIFAR-10 batch"):
        data.read_cifar10_batch(p)
    with open(p, "wb") as fh:
        pickle.dump({b"data": np.zeros((2, 10), np.uint8), b"labels": [0, 1]}, fh)
    with pytest.raises(DatasetError, match="expected uint8"):
        data.read_cifar10_batch(p)


# ------------------------------------------------------------------ downloads


class _FakeResponse:
    def __init__(self, payload: bytes, fail_after: int | None = None):
        self.payload, self.pos, self.fail_after = payload, 0, fail_after

    def read(self, n):
        if self.fail_after is not None and self.pos >= self.fail_after:
            raise ConnectionResetError("connection dropped")
        chunk = self.payload[self.pos : self.pos + min(n, 1000)]
        self.pos += len(chunk)
        return chunk

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False


def test_download_verifies_md5_and_is_atomic(tmp_path, monkeypatch):
    payload = b"x" * 5000
    good = data._Remote("f.gz", hashlib.md5(payload).hexdigest())
    bad = data._Remote("g.gz", "0" * 32)
    monkeypatch.setattr(data.urllib.request, "urlopen", lambda url, timeout: _FakeResponse(payload))
    path = data._download(("http://mirror/",), good, tmp_path)
    assert path.read_bytes() == payload
    with pytest.raises(DatasetError, match="MD5 mismatch"):
        data._download(("http://mirror/",), bad, tmp_path)
    assert not (tmp_path / "g.gz").exists()
    # an interrupted download leaves nothing behind, not even a partial file
    monkeypatch.setattr(data.urllib.request, "urlopen", lambda url, timeout: _FakeResponse(payload, fail_after=2000))
    with pytest.raises(DatasetError, match="connection dropped"):
        data._download(("http://mirror/",), data._Remote("h.gz", good.md5), tmp_path)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["f.gz"]


def test_corrupt_cache_entry_is_replaced(tmp_path, monkeypatch):
    payload = b"y" * 3000
    remote = data._Remote("f.gz", hashlib.md5(payload).hexdigest())
    (tmp_path / "f.gz").write_bytes(b"garbage")
    monkeypatch.setattr(data.urllib.request, "urlopen", lambda url, timeout: _FakeResponse(payload))
    assert data._download(("http://mirror/",), remote, tmp_path).read_bytes() == payload


def test_mnist_download_path_uses_cache(tmp_path, monkeypatch):
    """load_dataset without root downloads the published files (mocked) into cache_dir and reads them."""
    src = tmp_path / "src"
    src.mkdir()
    imgs, lbls = fake_mnist(src)
    files = {p.name: p.read_bytes() for p in src.iterdir()}
    monkeypatch.setitem(
        data.DATASETS["mnist"],
        "test",
        tuple(
            data._Remote(r.filename, hashlib.md5(files[r.filename]).hexdigest()) for r in data.DATASETS["mnist"]["test"]
        ),
    )
    monkeypatch.setattr(
        data.urllib.request, "urlopen", lambda url, timeout: _FakeResponse(files[url.rsplit("/", 1)[1]])
    )
    X, y = load_dataset("mnist", "test", cache_dir=tmp_path / "cache")
    np.testing.assert_array_equal(y, lbls)
    assert (tmp_path / "cache" / "mnist" / "t10k-images-idx3-ubyte.gz").exists()
    with pytest.raises(DatasetError, match="not on disk"):
        load_dataset("fashion-mnist", "test", download=False)
