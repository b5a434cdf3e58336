"""Tests of domains/vision/data.py on real data (Debian dataset-fashion-mnist, scikit-learn digits) and on small
image trees and corrupt files written to tmp."""
from __future__ import annotations

import functools
import gzip
import hashlib
import http.server
import re
import shutil
import struct
import threading
from pathlib import Path

import numpy as np
import pytest
import torch

from domains.vision import data as D
from zoo.errors import ChecksumError, DatasetNotFoundError

pytestmark = pytest.mark.debian_data("dataset-fashion-mnist")

DEBIAN = Path("/usr/share/datasets/fashion-mnist")
FILES = ["train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz",
         "t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz"]
# gzip mtimes of the upstream files; Debian keeps the deflate streams but normalises the header
UPSTREAM_MTIME = {"train": 1504176606, "t10k": 1504176627}


def upstream_bytes(name: str) -> bytes:
    """The official .gz file, rebuilt from the Debian copy by restoring the upstream gzip header
    (FNAME flag + original name, upstream mtime, XFL 0, OS 3 Unix) in front of Debian's deflate stream."""
    deb = (DEBIAN / name).read_bytes()
    assert deb[:4] == b"\x1f\x8b\x08\x00", "Debian header changed: expected no optional gzip fields"
    mtime = UPSTREAM_MTIME[name.split("-")[0]]
    header = b"\x1f\x8b\x08\x08" + struct.pack("<I", mtime) + b"\x00\x03" + name[:-3].encode() + b"\x00"
    return header + deb[10:]


@pytest.fixture
def isolated(monkeypatch, tmp_path):
    """No system folder, no $ZOO_DATA, an empty zoo cache under tmp."""
    monkeypatch.setattr(D, "FASHION_MNIST_SYSTEM_DIRS", [])
    monkeypatch.delenv("ZOO_DATA", raising=False)
    monkeypatch.delenv("ZOO_OFFLINE", raising=False)
    monkeypatch.setenv("ZOO_HOME", str(tmp_path / "zoo_home"))
    return tmp_path


# ------------------------------------------------------------------------------------------------ read_idx

def test_debian_copy_is_installed():
    for name in FILES:
        assert (DEBIAN / name).is_file(), f"missing {DEBIAN / name}: apt-get install dataset-fashion-mnist"


@pytest.mark.parametrize("prefix,n", [("train", 60000), ("t10k", 10000)])
def test_read_idx_real_files(prefix, n):
    images = D.read_idx(DEBIAN / f"{prefix}-images-idx3-ubyte.gz")
    labels = D.read_idx(DEBIAN / f"{prefix}-labels-idx1-ubyte.gz")
    assert images.dtype == torch.uint8 and labels.dtype == torch.uint8
    assert tuple(images.shape) == (n, 28, 28)
    assert tuple(labels.shape) == (n,)
    assert int(labels.min()) == 0 and int(labels.max()) == 9
    # a known property of Fashion-MNIST: perfectly balanced classes
    assert torch.bincount(labels.long(), minlength=10).tolist() == [n // 10] * 10
    assert int(images.max()) == 255 and int(images.min()) == 0


def test_read_idx_plain_equals_gzip(tmp_path):
    src = DEBIAN / "t10k-labels-idx1-ubyte.gz"
    plain = tmp_path / "labels.idx"  # no .gz suffix: detection is by magic bytes
    plain.write_bytes(gzip.decompress(src.read_bytes()))
    assert torch.equal(D.read_idx(plain), D.read_idx(src))
    # and a gzip file with a misleading name is still decompressed
    odd = tmp_path / "labels.bin"
    shutil.copy(src, odd)
    assert torch.equal(D.read_idx(odd), D.read_idx(src))


def test_read_idx_other_dtypes_and_endianness(tmp_path):
    arr = np.arange(-6, 6, dtype=">i4").reshape(3, 4)
    p = tmp_path / "ints.idx"
    p.write_bytes(struct.pack(">HBB", 0, 0x0C, 2) + struct.pack(">II", 3, 4) + arr.tobytes())
    t = D.read_idx(p)
    assert t.dtype == torch.int32 and t.tolist() == arr.astype(np.int32).tolist()
    f = np.array([1.5, -2.25], dtype=">f4")
    p.write_bytes(struct.pack(">HBB", 0, 0x0D, 1) + struct.pack(">I", 2) + f.tobytes())
    assert D.read_idx(p).tolist() == [1.5, -2.25]


def test_read_idx_truncated_payload(tmp_path):
    raw = gzip.decompress((DEBIAN / "train-images-idx3-ubyte.gz").read_bytes())
    bad = tmp_path / "train-images-idx3-ubyte.gz"
    bad.write_bytes(gzip.compress(raw[:16 + 1000]))  # valid gzip, IDX payload cut short
    with pytest.raises(ValueError) as ei:
        D.read_idx(bad)
    msg = str(ei.value)
    assert str(bad) in msg
    assert "truncated" in msg and "47040000" in msg and "found 1000" in msg


def test_read_idx_truncated_gzip_stream(tmp_path):
    data = (DEBIAN / "t10k-labels-idx1-ubyte.gz").read_bytes()
    bad = tmp_path / "t10k-labels-idx1-ubyte.gz"
    bad.write_bytes(data[: len(data) // 2])  # the gzip stream itself ends early
    with pytest.raises(ValueError) as ei:
        D.read_idx(bad)
    assert str(bad) in str(ei.value)
    assert "truncated" in str(ei.value)


def test_read_idx_trailing_bytes(tmp_path):
    raw = gzip.decompress((DEBIAN / "t10k-labels-idx1-ubyte.gz").read_bytes())
    bad = tmp_path / "labels"
    bad.write_bytes(raw + b"\x00\x01\x02")
    with pytest.raises(ValueError, match="3 bytes after the 10000 bytes") as ei:
        D.read_idx(bad)
    assert str(bad) in str(ei.value)


@pytest.mark.parametrize("header,needle", [
    (b"\x08\x03\x00\x00" + b"\x00" * 12, "bad magic"),          # little-endian-looking / not 0x0000
    (b"\x00\x00\x07\x01" + b"\x00\x00\x00\x01" + b"\x00", "unknown IDX type code 0x07"),
    (b"\x00\x00\x08\x00", "0 dimensions"),
    (b"\x00\x00\x08\x03\x00\x00", "truncated header"),
    (b"\x00\x00", "not an IDX file"),
])
def test_read_idx_bad_header(tmp_path, header, needle):
    bad = tmp_path / "bad.idx"
    bad.write_bytes(header)
    with pytest.raises(ValueError, match=needle) as ei:
        D.read_idx(bad)
    assert str(bad) in str(ei.value)


# ------------------------------------------------------------------------------------------------ FashionMNIST

def test_fashion_mnist_from_debian(monkeypatch):
    monkeypatch.delenv("ZOO_DATA", raising=False)
    train = D.FashionMNIST(split="train", normalize=False)
    assert len(train) == 60000
    assert train.images.dtype == torch.uint8 and tuple(train.images.shape) == (60000, 28, 28)
    assert Path(train.images_path).parent == DEBIAN
    assert train.classes == ["T-shirt/top", "Trouser", "Pullover", "Dress", "Coat",
                             "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot"]
    x, y = train[0]
    assert x.dtype == torch.float32 and tuple(x.shape) == (1, 28, 28)
    assert 0.0 <= float(x.min()) and float(x.max()) <= 1.0
    assert isinstance(y, int) and y == 9  # the first training image is an ankle boot
    assert torch.equal(x[0], train.images[0].float() / 255)
    test = D.FashionMNIST(split="test", limit=50)
    assert len(test) == 50
    assert [test[i][1] for i in range(5)] == [9, 2, 1, 1, 6]


def test_fashion_mnist_normalisation_and_tensors():
    ds = D.FashionMNIST(split="train")  # normalize=True by default
    x, y = ds.tensors()
    assert x.dtype == torch.float32 and tuple(x.shape) == (60000, 1, 28, 28)
    assert y.dtype == torch.long and tuple(y.shape) == (60000,)
    # the pinned statistics are those of the train split: normalised data has mean ~0, std ~1
    assert abs(float(x.mean())) < 1e-3
    assert abs(float(x.std()) - 1.0) < 1e-3
    xi, yi = ds[123]
    assert torch.allclose(xi, x[123]) and yi == int(y[123])
    assert torch.allclose(xi, (ds.images[123].float() / 255 - 0.2860) / 0.3530)


def test_fashion_mnist_resize_and_channels():
    ds = D.FashionMNIST(split="test", limit=4, img_size=32, in_chans=3)
    x, _ = ds[0]
    assert tuple(x.shape) == (3, 32, 32)
    assert torch.equal(x[0], x[2])
    assert tuple(ds.tensors()[0].shape) == (4, 3, 32, 32)


def test_fashion_mnist_root_and_zoo_data(isolated, monkeypatch):
    root = isolated / "mine"
    root.mkdir()
    for name in FILES[2:]:
        shutil.copy(DEBIAN / name, root / name)
    ds = D.FashionMNIST(root=root, split="test", limit=3)
    assert Path(ds.images_path).parent == root
    # uncompressed files under $ZOO_DATA/fashion-mnist are found too
    zd = isolated / "zoo_data" / "fashion-mnist"
    zd.mkdir(parents=True)
    for name in FILES[2:]:
        (zd / name[:-3]).write_bytes(gzip.decompress((DEBIAN / name).read_bytes()))
    monkeypatch.setenv("ZOO_DATA", str(isolated / "zoo_data"))
    ds2 = D.FashionMNIST(split="test", limit=3)
    assert Path(ds2.images_path) == zd / "t10k-images-idx3-ubyte"
    assert torch.equal(ds.images, ds2.images)


def test_fashion_mnist_not_found_message(isolated):
    empty = isolated / "empty"
    empty.mkdir()
    with pytest.raises(DatasetNotFoundError) as ei:
        D.FashionMNIST(root=empty, split="train")
    msg = str(ei.value)
    assert isinstance(ei.value, FileNotFoundError)
    assert "apt-get install dataset-fashion-mnist" in msg
    assert "download=True" in msg and "data.download=true" in msg
    assert str(empty) in msg  # lists the places searched: a given root alone
    searched = msg.split("Searched:")[1].split("To get it")[0]
    assert str(isolated / "zoo_home" / "datasets" / "fashion-mnist") not in searched
    assert "searched alone" in msg
    # without a root: $ZOO_DATA, the system folders (none here) and the zoo cache
    with pytest.raises(DatasetNotFoundError) as ei:
        D.FashionMNIST(split="train")
    searched = str(ei.value).split("Searched:")[1].split("To get it")[0]
    assert str(isolated / "zoo_home" / "datasets" / "fashion-mnist") in searched
    assert "/usr/share/datasets/fashion-mnist" not in searched


def test_fashion_mnist_corrupt_local_file_is_named(isolated):
    root = isolated / "corrupt"
    root.mkdir()
    shutil.copy(DEBIAN / "t10k-labels-idx1-ubyte.gz", root)
    data = (DEBIAN / "t10k-images-idx3-ubyte.gz").read_bytes()
    (root / "t10k-images-idx3-ubyte.gz").write_bytes(data[:100000])
    with pytest.raises(ValueError, match="t10k-images-idx3-ubyte.gz"):
        D.FashionMNIST(root=root, split="test")


def test_fashion_mnist_bad_split():
    with pytest.raises(ValueError, match="unknown split 'valid'"):
        D.FashionMNIST(split="valid")


class _QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *args):  # keep pytest output clean
        pass


@pytest.fixture
def serve(tmp_path):
    """serve(directory) -> base URL of a loopback HTTP server for that folder."""
    servers = []

    def start(directory: Path) -> str:
        handler = functools.partial(_QuietHandler, directory=str(directory))
        server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
        thread = threading.Thread(target=server.serve_forever, daemon=True)
        thread.start()
        servers.append((server, thread))
        return f"http://127.0.0.1:{server.server_address[1]}/"

    yield start
    for server, thread in servers:
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_fashion_mnist_download_from_loopback(isolated, monkeypatch, serve):
    site = isolated / "site"
    site.mkdir()
    for name in FILES[2:]:
        (site / name).write_bytes(upstream_bytes(name))  # the official files, checked against the real pins
    monkeypatch.setattr(D, "FASHION_MNIST_BASE_URL", serve(site))
    empty = isolated / "empty"
    empty.mkdir()
    with pytest.raises(DatasetNotFoundError):
        D.FashionMNIST(root=empty, split="test")  # download=False: nothing fetched
    cache = isolated / "zoo_home" / "datasets" / "fashion-mnist"
    assert not (cache / "t10k-images-idx3-ubyte.gz").exists()

    ds = D.FashionMNIST(root=empty, split="test", download=True, normalize=False)
    for name in FILES[2:]:
        got = cache / name
        assert got.is_file()
        assert _sha256(got) == D.FASHION_MNIST_FILES[name]["sha256"]
    assert not (cache / "train-images-idx3-ubyte.gz").exists()  # only the requested split
    assert Path(ds.images_path) == cache / "t10k-images-idx3-ubyte.gz"
    ref = D.read_idx(DEBIAN / "t10k-images-idx3-ubyte.gz")
    assert len(ds) == 10000
    assert torch.equal(ds.images[0], ref[0])
    assert torch.equal(ds[0][0][0], ref[0].float() / 255)
    assert torch.equal(ds.labels, D.read_idx(DEBIAN / "t10k-labels-idx1-ubyte.gz").long())
    # afterwards the cache is found without download=True
    again = D.FashionMNIST(split="test", limit=1, normalize=False)
    assert Path(again.images_path) == cache / "t10k-images-idx3-ubyte.gz"


def test_fashion_mnist_download_rejects_wrong_checksum(isolated, monkeypatch, serve):
    # the Debian copies (same pixels, other gzip header) do not match the upstream pins and must be rejected
    monkeypatch.setattr(D, "FASHION_MNIST_BASE_URL", serve(DEBIAN))
    assert _sha256(DEBIAN / "t10k-images-idx3-ubyte.gz") != \
        D.FASHION_MNIST_FILES["t10k-images-idx3-ubyte.gz"]["sha256"]
    with pytest.raises(ChecksumError, match="sha256 mismatch"):
        D.FashionMNIST(split="test", download=True)
    cache = isolated / "zoo_home" / "datasets" / "fashion-mnist"
    assert not (cache / "t10k-images-idx3-ubyte.gz").exists()


@pytest.mark.parametrize("name", FILES)
def test_pinned_checksums_match_upstream_files(name):
    data = upstream_bytes(name)
    entry = D.FASHION_MNIST_FILES[name]
    # the rebuilt file is the official one: its MD5 is the one published upstream...
    assert hashlib.md5(data).hexdigest() == entry["md5"]
    # ...so the pinned SHA-256 is the official file's
    assert hashlib.sha256(data).hexdigest() == entry["sha256"]
    assert gzip.decompress(data) == gzip.decompress((DEBIAN / name).read_bytes())


def test_pinned_md5_are_the_published_ones():
    published = {"train-images-idx3-ubyte.gz": "8d4fb7e6c68d591d4c3dfef9ec88bf0d",
                 "train-labels-idx1-ubyte.gz": "25c81989df183df01b3e8a0aad5dffbe",
                 "t10k-images-idx3-ubyte.gz": "bef4ecab320f06d8554ea6380940ec79",
                 "t10k-labels-idx1-ubyte.gz": "bb300cfdad3c16e7a12a480ee83cd310"}
    assert {k: v["md5"] for k, v in D.FASHION_MNIST_FILES.items()} == published


# ------------------------------------------------------------------------------------------------ Digits

def test_digits():
    train, test = D.Digits(split="train"), D.Digits(split="test")
    assert len(train) + len(test) == 1797
    assert (len(train), len(test)) == (D.DATASETS["digits"]["sizes"]["train"], D.DATASETS["digits"]["sizes"]["test"])
    x, y = train[0]
    assert tuple(x.shape) == (1, 8, 8) and x.dtype == torch.float32 and isinstance(y, int)
    xs, ys = train.tensors()
    assert tuple(xs.shape) == (len(train), 1, 8, 8) and ys.dtype == torch.long
    assert float(xs.min()) == 0.0 and float(xs.max()) == 1.0
    assert set(ys.tolist()) == set(range(10)) and train.classes == [str(i) for i in range(10)]
    # deterministic split; train + test together are exactly the 1,797 images (compared as a multiset of sums)
    assert torch.equal(D.Digits(split="test").tensors()[0], test.tensors()[0])
    from sklearn.datasets import load_digits
    all_x = torch.from_numpy(load_digits().images / 16.0).float()
    sums = sorted(all_x.sum((1, 2)).tolist())
    assert sorted(xs[:, 0].sum((1, 2)).tolist() + test.tensors()[0][:, 0].sum((1, 2)).tolist()) == \
        pytest.approx(sums)
    xn, _ = D.Digits(split="train", normalize=True).tensors()
    assert abs(float(xn.mean())) < 1e-3 and abs(float(xn.std()) - 1) < 1e-3


# ------------------------------------------------------------------------------------------------ ImageFolder

def _make_tree(root: Path) -> None:
    from PIL import Image
    rng = np.random.default_rng(0)
    for cls, mode in (("cat", "L"), ("dog", "RGB")):
        d = root / cls
        d.mkdir(parents=True)
        for i in range(3):
            shape = (10 + i, 17) if mode == "L" else (9, 14 + i, 3)  # rectangular, sizes vary
            arr = rng.integers(0, 256, size=shape, dtype=np.uint8)
            Image.fromarray(arr, mode=mode).save(d / f"img{i}.png")
    (root / "dog" / "notes.txt").write_text("not an image")


def test_image_folder(tmp_path):
    _make_tree(tmp_path)
    ds = D.ImageFolder(tmp_path, img_size=(12, 20), in_chans=3)
    assert ds.classes == ["cat", "dog"] and ds.class_to_idx == {"cat": 0, "dog": 1}
    assert len(ds) == 6
    assert [t for _, t in ds.samples] == [0, 0, 0, 1, 1, 1]
    x, y = ds[0]
    assert tuple(x.shape) == (3, 12, 20) and y == 0
    # grey source converted to RGB: three equal channels before normalisation
    raw = x * ds._std_t + ds._mean_t
    assert torch.allclose(raw[0], raw[1], atol=1e-5) and torch.allclose(raw[1], raw[2], atol=1e-5)
    xs, ys = ds.tensors()
    assert tuple(xs.shape) == (6, 3, 12, 20) and ys.tolist() == [0, 0, 0, 1, 1, 1]

    grey = D.ImageFolder(tmp_path, img_size=16, in_chans=1)
    gx, gy = grey[4]
    assert tuple(gx.shape) == (1, 16, 16) and gy == 1
    assert float(gx.min()) >= -1.0 and float(gx.max()) <= 1.0  # mean/std 0.5 -> [-1, 1]


def test_image_folder_no_resize_keeps_pixels(tmp_path):
    from PIL import Image
    (tmp_path / "a").mkdir()
    arr = np.arange(12 * 7, dtype=np.uint8).reshape(12, 7)
    Image.fromarray(arr, mode="L").save(tmp_path / "a" / "x.PNG")  # upper-case extension
    ds = D.ImageFolder(tmp_path, img_size=(12, 7), in_chans=1, mean=[0.0], std=[1.0])
    assert torch.allclose(ds[0][0][0], torch.from_numpy(arr).float() / 255)


def test_image_folder_errors(tmp_path):
    missing = tmp_path / "nope"
    with pytest.raises(DatasetNotFoundError, match="nope") as ei:
        D.ImageFolder(missing)
    assert str(missing) in str(ei.value)

    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(DatasetNotFoundError, match="no class folders") as ei:
        D.ImageFolder(empty)
    assert str(empty) in str(ei.value) and ".png" in str(ei.value) and ".webp" in str(ei.value)

    noimg = tmp_path / "noimg"
    (noimg / "cls").mkdir(parents=True)
    (noimg / "cls" / "readme.txt").write_text("x")
    with pytest.raises(DatasetNotFoundError, match="no images") as ei:
        D.ImageFolder(noimg)
    assert str(noimg) in str(ei.value) and ".jpeg" in str(ei.value)

    corrupt = tmp_path / "corrupt"
    _make_tree(corrupt)
    bad = corrupt / "dog" / "img1.png"
    bad.write_bytes(b"\x89PNG\r\n\x1a\n this is not a png")
    ds = D.ImageFolder(corrupt, img_size=8)
    with pytest.raises(ValueError) as ei:
        ds[4]
    assert str(bad) in str(ei.value)
    ds[3]  # the others still load


# ------------------------------------------------------------------------------------------------ factory

def test_build_dataset(tmp_path):
    ds = D.build_dataset("fashion-mnist", "test", limit=10)
    assert isinstance(ds, D.FashionMNIST) and len(ds) == 10
    assert isinstance(D.build_dataset("digits", "train"), D.Digits)
    _make_tree(tmp_path / "train")
    _make_tree(tmp_path / "test")
    (tmp_path / "test" / "cat" / "img0.png").unlink()
    f = D.build_dataset("image_folder", "test", root=tmp_path, img_size=8, in_chans=1)
    assert isinstance(f, D.ImageFolder) and len(f) == 5 and f.root == tmp_path / "test"
    assert tuple(f[0][0].shape) == (1, 8, 8)
    g = D.build_dataset("image_folder", "val", root=tmp_path / "train", img_size=8)
    assert g.root == tmp_path / "train" and len(g) == 6


def test_build_dataset_unknown_name():
    with pytest.raises(ValueError) as ei:
        D.build_dataset("fashion_mnst", "train")
    msg = str(ei.value)
    assert "did you mean 'fashion_mnist'" in msg
    for known in ("digits", "fashion_mnist", "image_folder"):
        assert known in msg
    with pytest.raises(ValueError, match="did you mean 'digits'"):
        D.build_dataset("digit", "train")


def test_datasets_metadata():
    assert D.DATASETS["fashion_mnist"]["num_classes"] == 10
    assert D.DATASETS["fashion_mnist"]["in_chans"] == 1
    assert D.DATASETS["fashion_mnist"]["img_size"] == (28, 28)
    assert (D.DATASETS["digits"]["num_classes"], D.DATASETS["digits"]["in_chans"],
            D.DATASETS["digits"]["img_size"]) == (10, 1, (8, 8))


# ------------------------------------------------------------------------------------------------ augmentation

def test_random_crop_flip():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(16, 3, 10, 12)
    y = D.random_crop_flip(x, padding=2, generator=g)
    assert y.shape == x.shape and y.dtype == x.dtype
    assert not torch.equal(y, x)
    assert torch.equal(D.random_crop_flip(x, padding=0, p_flip=1.0), torch.flip(x, dims=[-1]))
    assert torch.equal(D.random_crop_flip(x, padding=0, p_flip=0.0), x)
    # each output is a shifted window of the zero-padded input (possibly flipped)
    xp = torch.nn.functional.pad(x, (2, 2, 2, 2))
    y = D.random_crop_flip(x, padding=2, p_flip=0.0, generator=g)
    for b in range(16):
        windows = [xp[b, :, i:i + 10, j:j + 12] for i in range(5) for j in range(5)]
        assert any(torch.equal(y[b], w) for w in windows)
    offsets = {next(k for k, w in enumerate([xp[b, :, i:i + 10, j:j + 12] for i in range(5) for j in range(5)])
                    if torch.equal(y[b], w)) for b in range(16)}
    assert len(offsets) > 1  # per-sample offsets, not one for the batch
    with pytest.raises(ValueError, match=r"\[B,C,H,W\]"):
        D.random_crop_flip(torch.zeros(3, 4, 4))


# ------------------------------------------------------------------------------------------------ hostile images

def _ramp16(h: int = 16, w: int = 16) -> np.ndarray:
    """Every 16-bit grey level from 0 to 65535 in even steps (0, 257, 514, ... hit the 8-bit levels exactly)."""
    return np.round(np.linspace(0, 65535, h * w)).astype(np.uint16).reshape(h, w)


@pytest.mark.parametrize("in_chans", [1, 3])
def test_image_folder_16bit_png_is_scaled_by_its_bit_depth(tmp_path, in_chans):
    from PIL import Image
    (tmp_path / "a").mkdir()
    ramp = _ramp16()
    Image.fromarray(ramp).save(tmp_path / "a" / "x.png")
    with Image.open(tmp_path / "a" / "x.png") as im:
        assert im.mode.startswith("I")                                  # a real 16-bit PNG
    ds = D.ImageFolder(tmp_path, img_size=ramp.shape, in_chans=in_chans, mean=[0.0], std=[1.0])
    x = ds[0][0]
    # PNG spec (sample depth scaling): v_8 = round(v_16 * 255 / 65535) = round(v_16 / 257)
    want = torch.from_numpy(np.round(ramp.astype(np.float64) / 257.0)).float() / 255.0
    assert x.shape == (in_chans, *ramp.shape)
    for c in range(in_chans):
        torch.testing.assert_close(x[c], want, atol=1e-6, rtol=0)
    assert float((x == 1.0).float().mean()) < 0.01                     # not clipped to white


@pytest.mark.parametrize("mode,dtype", [("I", np.int32), ("F", np.float32)])
def test_image_folder_refuses_32bit_int_and_float_images(tmp_path, mode, dtype):
    from PIL import Image
    (tmp_path / "a").mkdir()
    path = tmp_path / "a" / "x.tif"
    Image.fromarray(np.arange(64, dtype=dtype).reshape(8, 8) * 1000).save(path)
    with Image.open(path) as im:
        assert im.mode == mode
    (tmp_path / "a" / "ok.png").write_bytes(b"")       # ImageFolder lists files by extension; only x.tif is read
    ds = D.ImageFolder(tmp_path, img_size=8, in_chans=1)
    with pytest.raises(ValueError, match=re.escape(str(path)) + f".*mode {mode}"):
        ds.load(path)


@pytest.mark.parametrize("limit,as_error", [(1000, False), (6000, True)])
def test_image_folder_decompression_bomb_names_the_file(tmp_path, monkeypatch, limit, as_error):
    import warnings

    from PIL import Image
    (tmp_path / "a").mkdir()
    path = tmp_path / "a" / "big.png"
    Image.new("L", (100, 100)).save(path)                               # 10,000 pixels
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", limit)
    ds = D.ImageFolder(tmp_path, img_size=8, in_chans=1)
    with warnings.catch_warnings():
        if as_error:                                                    # PIL warns between 1x and 2x the limit
            warnings.simplefilter("error", Image.DecompressionBombWarning)
        with pytest.raises(ValueError, match=re.escape(str(path)) + r".*10000 pixels.*" + str(limit)
                           + r".*MAX_IMAGE_PIXELS"):
            ds[0]


def test_fashion_mnist_root_without_the_files_does_not_fall_back(tmp_path, monkeypatch):
    # the Debian copy is installed, but an explicit root must be the one used
    monkeypatch.delenv("ZOO_DATA", raising=False)
    assert (DEBIAN / "t10k-images-idx3-ubyte.gz").is_file()
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(DatasetNotFoundError) as ei:
        D.FashionMNIST(root=empty, split="test", limit=5)
    msg = str(ei.value)
    assert str(empty) in msg and "t10k-images-idx3-ubyte.gz" in msg and "t10k-labels-idx1-ubyte.gz" in msg
    with pytest.raises(DatasetNotFoundError, match=re.escape(str(empty))):
        D.build_dataset("fashion_mnist", split="test", root=empty)
    assert len(D.FashionMNIST(split="test", limit=5)) == 5             # no root: the system copy serves


def test_read_idx_header_larger_than_the_data(tmp_path):
    # sizes whose product overflows int64 (2**93 bytes), and a plausible-looking 1 TiB claim: both must be reported
    # as truncated without allocating what the header claims
    for dims in ((2 ** 31, 2 ** 31, 2 ** 31), (2 ** 16, 2 ** 12, 2 ** 12)):
        for gz in (False, True):
            raw = struct.pack(">HBB", 0, 8, 3) + struct.pack(">3I", *dims) + bytes(10)
            path = tmp_path / f"claim{dims[0]}{'.gz' if gz else ''}"
            path.write_bytes(gzip.compress(raw) if gz else raw)
            with pytest.raises(ValueError, match=re.escape(str(path)) + r".*truncated.*found 10"):
                D.read_idx(path)


def test_fashion_mnist_without_images_is_an_error(tmp_path):
    root = tmp_path / "zero"
    root.mkdir()
    (root / "t10k-images-idx3-ubyte").write_bytes(struct.pack(">HBB3I", 0, 8, 3, 0, 28, 28))
    (root / "t10k-labels-idx1-ubyte").write_bytes(struct.pack(">HBBI", 0, 8, 1, 0))
    with pytest.raises(ValueError, match=re.escape(str(root / "t10k-images-idx3-ubyte")) + ".*no images"):
        D.FashionMNIST(root=root, split="test")
