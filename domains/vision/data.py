"""Vision datasets: Fashion-MNIST (IDX files), scikit-learn digits, and users' own image folders.

Every dataset here is a ``torch.utils.data.Dataset`` whose items are ``(image float [C,H,W], int label)`` and which
has ``classes``. The two small in-memory datasets also offer ``tensors()`` -> ``(images [N,C,H,W], labels [N])`` so
that a training loop can slice batches from two tensors instead of collating Python items.

Sources (see ``datasets/*.md`` for the cards):

- Fashion-MNIST: Debian package ``dataset-fashion-mnist`` (``/usr/share/datasets/fashion-mnist``), any folder holding
  the four official IDX files, or ``download=True`` (official URLs, SHA-256 verified, via ``zoo.hub.download``).
- digits: scikit-learn's ``load_digits`` (ships with scikit-learn, no download).
- ImageFolder: ``root/<class>/<image>`` trees of the user's own images, read with PIL.

Only torch and numpy are imported at module level; ``zoo.hub``, ``zoo.errors``, PIL and scikit-learn are imported
inside the functions that need them.
"""
from __future__ import annotations

import difflib
import gzip
import math
import os
import struct
import zlib
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Tuple, Union

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import Dataset

__all__ = [
    "read_idx",
    "FashionMNIST",
    "Digits",
    "ImageFolder",
    "read_image",
    "build_dataset",
    "random_crop_flip",
    "DATASETS",
    "IMG_EXTENSIONS",
]

PathLike = Union[str, os.PathLike]
SizeLike = Union[int, Sequence[int]]

# ---------------------------------------------------------------------------------------------------------------
# IDX reader
# ---------------------------------------------------------------------------------------------------------------

# IDX type code -> (numpy big-endian dtype, torch dtype)
_IDX_DTYPES: Dict[int, Tuple[str, torch.dtype]] = {
    0x08: (">u1", torch.uint8),
    0x09: (">i1", torch.int8),
    0x0B: (">i2", torch.int16),
    0x0C: (">i4", torch.int32),
    0x0D: (">f4", torch.float32),
    0x0E: (">f8", torch.float64),
}
_GZIP_MAGIC = b"\x1f\x8b"
_MAX_IDX_NDIM = 16
_IDX_CHUNK = 1 << 24


def _read_exact(f, n: int) -> bytes:
    buf = f.read(n)
    return buf if buf is not None else b""


def read_idx(path: PathLike) -> torch.Tensor:
    """Read an IDX file (the MNIST / Fashion-MNIST format), gzip-compressed or plain.

    Compression is detected from the first two bytes (``1f 8b``), not from the file name. The header is validated
    (``00 00 <type> <ndim>``, then ``ndim`` big-endian uint32 sizes) and the payload must have exactly
    ``prod(sizes) * itemsize`` bytes. Any problem raises ``ValueError`` naming the file and what is wrong.

    Returns a tensor of the stored dtype (``uint8`` for images and labels) and shape ``sizes``.
    """
    path = Path(path)
    with open(path, "rb") as raw:
        compressed = raw.read(2) == _GZIP_MAGIC
    opener = gzip.open if compressed else open
    what = "gzip-compressed IDX file" if compressed else "IDX file"
    try:
        with opener(path, "rb") as f:
            header = _read_exact(f, 4)
            if len(header) < 4:
                raise ValueError(f"{path}: not an IDX file: only {len(header)} bytes, the header needs 4")
            zero, code, ndim = struct.unpack(">HBB", header)
            if zero != 0:
                raise ValueError(
                    f"{path}: bad magic number 0x{header.hex()}: an IDX file starts with 0x0000, a type code and "
                    f"the number of dimensions")
            if code not in _IDX_DTYPES:
                known = ", ".join(f"0x{c:02x}" for c in _IDX_DTYPES)
                raise ValueError(f"{path}: bad magic number 0x{header.hex()}: unknown IDX type code 0x{code:02x} "
                                 f"(known: {known})")
            if not 1 <= ndim <= _MAX_IDX_NDIM:
                raise ValueError(f"{path}: bad magic number 0x{header.hex()}: {ndim} dimensions "
                                 f"(expected 1..{_MAX_IDX_NDIM})")
            dim_bytes = _read_exact(f, 4 * ndim)
            if len(dim_bytes) < 4 * ndim:
                raise ValueError(f"{path}: truncated header: expected {4 * ndim} bytes of dimension sizes for "
                                 f"{ndim} dimensions, found {len(dim_bytes)}")
            dims = struct.unpack(f">{ndim}I", dim_bytes)
            np_dtype, torch_dtype = _IDX_DTYPES[code]
            itemsize = np.dtype(np_dtype).itemsize
            expected = math.prod(dims) * itemsize      # exact: a hostile header must not wrap around
            kind = "pixels" if code == 0x08 and ndim >= 3 else "data"
            # read in chunks rather than allocating what the header claims: a header may promise terabytes
            payload = bytearray()
            while len(payload) < expected:
                chunk = f.read(min(expected - len(payload), _IDX_CHUNK))
                if not chunk:
                    break
                payload += chunk
            got = len(payload)
            if got < expected:
                raise ValueError(f"{path}: truncated: expected {expected} bytes of {kind} for shape "
                                 f"{list(dims)}, found {got}")
            extra = len(f.read(1 << 16))
            if extra:
                raise ValueError(f"{path}: size mismatch: {extra if extra < (1 << 16) else 'at least %d' % extra} "
                                 f"bytes after the {expected} bytes of {kind} declared by the header "
                                 f"(shape {list(dims)})")
    except (EOFError, zlib.error, gzip.BadGzipFile) as e:
        raise ValueError(f"{path}: corrupt or truncated {what}: {e}") from e

    arr = np.frombuffer(payload, dtype=np_dtype).reshape(dims)
    if arr.dtype.byteorder == ">" and arr.dtype.itemsize > 1:
        arr = arr.astype(arr.dtype.newbyteorder("="))
    return torch.from_numpy(arr).to(torch_dtype)


# ---------------------------------------------------------------------------------------------------------------
# Shared in-memory base
# ---------------------------------------------------------------------------------------------------------------

def _pair(size: Optional[SizeLike]) -> Optional[Tuple[int, int]]:
    if size is None:
        return None
    if isinstance(size, int):
        if size <= 0:
            raise ValueError(f"img_size must be positive, got {size}")
        return (size, size)
    size = tuple(int(s) for s in size)
    if len(size) != 2 or min(size) <= 0:
        raise ValueError(f"img_size must be an int or (H, W) of positive ints, got {size}")
    return size  # type: ignore[return-value]


def _check_limit(limit: Any) -> Optional[int]:
    """``limit`` as a non-negative int (None: no limit)."""
    if limit is None:
        return None
    if isinstance(limit, bool) or not isinstance(limit, (int, np.integer)):
        raise TypeError(f"limit must be an int (the number of examples to keep) or None, got {limit!r}")
    if limit < 0:
        raise ValueError(f"limit must be >= 0, got {limit}")
    return int(limit)


def _check_split(split: str, name: str, splits: Sequence[str] = ("train", "test")) -> str:
    if split not in splits:
        raise ValueError(f"{name}: unknown split {split!r}; expected one of {list(splits)}")
    return split


class _InMemoryImages(Dataset):
    """Grey images held as uint8 ``[N,H,W]`` plus long labels; converted to float on access.

    ``img_size`` / ``in_chans`` optionally resize (bilinear, antialiased) and repeat the grey channel, so that the
    same data can feed a model built for another input shape."""

    classes: List[str] = []
    mean: float = 0.0
    std: float = 1.0

    def _setup(self, images: torch.Tensor, labels: torch.Tensor, normalize: bool,
               img_size: Optional[SizeLike], in_chans: Optional[int]) -> None:
        """``images``: uint8 ``[N,H,W]`` (0..255) or float ``[N,H,W]`` already in [0,1]."""
        if images.dim() != 3 or not (images.dtype == torch.uint8 or images.is_floating_point()):
            raise ValueError(f"expected uint8 or float images [N,H,W], got {images.dtype} {list(images.shape)}")
        if labels.shape != (images.shape[0],):
            raise ValueError(f"{images.shape[0]} images but labels of shape {list(labels.shape)}")
        self.images = images.contiguous()
        self.labels = labels.to(torch.long)
        self._scale = 255.0 if images.dtype == torch.uint8 else 1.0
        self.normalize = bool(normalize)
        self.img_size = _pair(img_size) or tuple(images.shape[1:])
        if in_chans is None:
            in_chans = 1
        if in_chans not in (1, 3):
            raise ValueError(f"in_chans must be 1 or 3, got {in_chans}")
        self.in_chans = int(in_chans)

    def __len__(self) -> int:
        return self.images.shape[0]

    def _convert(self, x: torch.Tensor) -> torch.Tensor:
        """uint8 ``[B,H,W]`` -> float ``[B,C,h,w]``, in [0,1] or normalised."""
        x = x.unsqueeze(1).to(torch.float32)
        x = x / self._scale if self._scale != 1.0 else x.clone()
        if tuple(x.shape[-2:]) != tuple(self.img_size):
            x = F.interpolate(x, size=self.img_size, mode="bilinear", align_corners=False, antialias=True)
            x = x.clamp_(0.0, 1.0)
        if self.normalize:
            x = x.sub_(self.mean).div_(self.std)
        if self.in_chans == 3:
            x = x.expand(-1, 3, -1, -1).contiguous()
        return x

    def __getitem__(self, index: int) -> Tuple[torch.Tensor, int]:
        x = self._convert(self.images[index].unsqueeze(0))
        return x[0], int(self.labels[index])

    def tensors(self, chunk: int = 8192) -> Tuple[torch.Tensor, torch.Tensor]:
        """All images as one float tensor ``[N,C,H,W]`` (normalised if ``normalize``) and labels ``long [N]``."""
        n = len(self)
        out = torch.empty((n, self.in_chans, *self.img_size), dtype=torch.float32)
        for i in range(0, n, chunk):
            out[i:i + chunk] = self._convert(self.images[i:i + chunk])
        return out, self.labels.clone()

    @property
    def num_classes(self) -> int:
        return len(self.classes)


# ---------------------------------------------------------------------------------------------------------------
# Fashion-MNIST
# ---------------------------------------------------------------------------------------------------------------

FASHION_MNIST_BASE_URL = "http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/"
FASHION_MNIST_SYSTEM_DIRS: List[str] = ["/usr/share/datasets/fashion-mnist"]
FASHION_MNIST_CLASSES = ["T-shirt/top", "Trouser", "Pullover", "Dress", "Coat",
                         "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot"]
FASHION_MNIST_MEAN = 0.2860
FASHION_MNIST_STD = 0.3530

# Official files (zalandoresearch/fashion-mnist, served from the S3 bucket above): SHA-256 pinned for downloads, MD5
# as published in the upstream README. The Debian package ships the same deflate streams behind a normalised gzip
# header (no stored file name, 2020 mtime), so its .gz bytes and checksums differ from these; restoring the upstream
# header (name + mtime 1504176606 for train, 1504176627 for t10k, XFL 0, OS 3) reproduces the upstream MD5 and these
# SHA-256 exactly (tests/vision/test_data.py checks it). Local copies are validated by read_idx instead.
FASHION_MNIST_FILES: Dict[str, Dict[str, str]] = {
    "train-images-idx3-ubyte.gz": {
        "sha256": "3aede38d61863908ad78613f6a32ed271626dd12800ba2636569512369268a84",
        "md5": "8d4fb7e6c68d591d4c3dfef9ec88bf0d",
    },
    "train-labels-idx1-ubyte.gz": {
        "sha256": "a04f17134ac03560a47e3764e11b92fc97de4d1bfaf8ba1a3aa29af54cc90845",
        "md5": "25c81989df183df01b3e8a0aad5dffbe",
    },
    "t10k-images-idx3-ubyte.gz": {
        "sha256": "346e55b948d973a97e58d2351dde16a484bd415d4595297633bb08f03db6a073",
        "md5": "bef4ecab320f06d8554ea6380940ec79",
    },
    "t10k-labels-idx1-ubyte.gz": {
        "sha256": "67da17c76eaffca5446c3361aaab5c3cd6d1c2608764d35dfb1850b086bf8dd5",
        "md5": "bb300cfdad3c16e7a12a480ee83cd310",
    },
}
_FASHION_SPLIT_PREFIX = {"train": "train", "test": "t10k"}


def _fashion_mnist_names(split: str) -> Tuple[str, str]:
    p = _FASHION_SPLIT_PREFIX[split]
    return f"{p}-images-idx3-ubyte.gz", f"{p}-labels-idx1-ubyte.gz"


def _fashion_mnist_cache_dir() -> Path:
    from zoo.hub import cache_dir
    return Path(cache_dir("datasets")) / "fashion-mnist"


def fashion_mnist_search_dirs(root: Optional[PathLike] = None) -> List[Path]:
    """Folders searched for the Fashion-MNIST files, in order.

    With ``root``: only ``root``, ``root/fashion-mnist`` and ``root/FashionMNIST/raw`` -- a folder the user names
    is the one used, never silently replaced by another copy. Without: ``$ZOO_DATA/fashion-mnist``, the system
    folders (Debian package), the zoo dataset cache."""
    dirs: List[Path] = []
    if root is not None:
        root = Path(root).expanduser()
        return [root, root / "fashion-mnist", root / "FashionMNIST" / "raw"]
    zoo_data = os.environ.get("ZOO_DATA")
    if zoo_data:
        dirs.append(Path(zoo_data).expanduser() / "fashion-mnist")
    dirs += [Path(d) for d in FASHION_MNIST_SYSTEM_DIRS]
    try:
        dirs.append(_fashion_mnist_cache_dir())
    except (OSError, RuntimeError):  # unwritable cache (zoo.errors.WeightsError): nothing cached there anyway
        pass
    out: List[Path] = []
    for d in dirs:
        if d not in out:
            out.append(d)
    return out


def _find_file(d: Path, gz_name: str) -> Optional[Path]:
    for name in (gz_name, gz_name[:-3]):  # compressed or plain
        p = d / name
        if p.is_file():
            return p
    return None


class FashionMNIST(_InMemoryImages):
    """Fashion-MNIST (Zalando, MIT): 28x28 grey clothing images, 10 classes, 60,000 train / 10,000 test.

    Items are ``(float [1,28,28], int label)``: pixels in [0,1], or normalised with mean 0.2860 / std 0.3530 when
    ``normalize`` (the default). The split is held in memory as uint8 (``self.images [N,28,28]``).

    Files are looked for in :func:`fashion_mnist_search_dirs`: in ``root`` alone when it is given (a folder without
    them raises `DatasetNotFoundError` naming it and the files expected there), else in ``$ZOO_DATA/fashion-mnist``,
    ``/usr/share/datasets/fashion-mnist`` and the zoo cache; ``download=True`` fetches the official files into the
    zoo cache when none is found. ``limit`` keeps the first ``limit`` examples.
    """

    classes = list(FASHION_MNIST_CLASSES)
    mean = FASHION_MNIST_MEAN
    std = FASHION_MNIST_STD

    def __init__(self, root: Optional[PathLike] = None, split: str = "train", download: bool = False,
                 normalize: bool = True, limit: Optional[int] = None, img_size: Optional[SizeLike] = None,
                 in_chans: Optional[int] = None):
        self.split = _check_split(split, "FashionMNIST")
        limit = _check_limit(limit)
        images_path, labels_path = self._locate(root, download)
        self.images_path, self.labels_path = images_path, labels_path
        images = read_idx(images_path)
        labels = read_idx(labels_path)
        if images.dtype != torch.uint8 or images.dim() != 3 or tuple(images.shape[1:]) != (28, 28):
            raise ValueError(f"{images_path}: expected uint8 images of shape [N,28,28], "
                             f"got {images.dtype} {list(images.shape)}")
        if labels.dtype != torch.uint8 or labels.dim() != 1:
            raise ValueError(f"{labels_path}: expected uint8 labels of shape [N], "
                             f"got {labels.dtype} {list(labels.shape)}")
        if labels.shape[0] != images.shape[0]:
            raise ValueError(f"{images_path} holds {images.shape[0]} images but {labels_path} holds "
                             f"{labels.shape[0]} labels")
        if images.shape[0] == 0:
            raise ValueError(f"{images_path}: the header declares 0 images: the file holds no images")
        if labels.numel() and int(labels.max()) >= len(self.classes):
            raise ValueError(f"{labels_path}: label {int(labels.max())} out of range 0..{len(self.classes) - 1}")
        if limit is not None:
            images, labels = images[:limit], labels[:limit]
        self._setup(images, labels, normalize, img_size, in_chans)

    def _locate(self, root: Optional[PathLike], download: bool) -> Tuple[Path, Path]:
        img_name, lbl_name = _fashion_mnist_names(self.split)
        searched = fashion_mnist_search_dirs(root)
        for d in searched:
            img, lbl = _find_file(d, img_name), _find_file(d, lbl_name)
            if img is not None and lbl is not None:
                return img, lbl
        if download:
            return self._download(img_name, lbl_name)
        from zoo.errors import DatasetNotFoundError
        places = "\n".join(f"  - {d}" for d in searched)
        alone = ("" if root is None else "A given root is searched alone (config: `data.root`); leave it unset to "
                 "search $ZOO_DATA, the system folders and the zoo cache.\n")
        raise DatasetNotFoundError(
            f"Fashion-MNIST ({self.split} split) not found: need {img_name} and {lbl_name} (or their uncompressed "
            f"forms) in one folder. Searched:\n{places}\n{alone}"
            "To get it: `apt-get install dataset-fashion-mnist` (Debian/Ubuntu, installs it in "
            "/usr/share/datasets/fashion-mnist), or pass `download=True` (config: `data.download=true`) to fetch "
            f"the official files from {FASHION_MNIST_BASE_URL}, or point `root` / $ZOO_DATA at a folder holding "
            "them.")

    @staticmethod
    def _download(*names: str) -> Tuple[Path, ...]:
        from zoo.hub import download
        cache = _fashion_mnist_cache_dir()
        cache.mkdir(parents=True, exist_ok=True)
        out = []
        for name in names:
            url = FASHION_MNIST_BASE_URL.rstrip("/") + "/" + name
            out.append(Path(download(url, sha256=FASHION_MNIST_FILES[name]["sha256"], filename=name,
                                     cache=cache)))
        return tuple(out)


# ---------------------------------------------------------------------------------------------------------------
# scikit-learn digits
# ---------------------------------------------------------------------------------------------------------------

DIGITS_SEED = 0
DIGITS_TEST_FRACTION = 0.2


class Digits(_InMemoryImages):
    """scikit-learn's 8x8 handwritten digits (1,797 images, 10 classes; UCI optdigits test set, CC BY 4.0).

    A fixed seeded permutation (seed 0) puts 359 images (20%) in ``test`` and 1,438 in ``train``. Items are
    ``(float [1,8,8] in [0,1], int label)``; ``normalize=True`` additionally standardises with the train-split
    pixel mean/std. ``root`` / ``download`` are accepted for API symmetry and ignored (the data ships with
    scikit-learn)."""

    classes = [str(i) for i in range(10)]
    mean = 0.3056  # train-split pixel statistics (seed-0 split)
    std = 0.3761

    def __init__(self, root: Optional[PathLike] = None, split: str = "train", download: bool = False,
                 normalize: bool = False, limit: Optional[int] = None, img_size: Optional[SizeLike] = None,
                 in_chans: Optional[int] = None):
        self.split = _check_split(split, "Digits")
        limit = _check_limit(limit)
        try:
            from sklearn.datasets import load_digits
        except ImportError as e:  # pragma: no cover - depends on the environment
            raise ImportError("the digits dataset needs scikit-learn: pip install scikit-learn") from e
        bunch = load_digits()
        data = np.asarray(bunch.images, dtype=np.float64)  # [1797,8,8], integers 0..16
        target = np.asarray(bunch.target, dtype=np.int64)
        perm = torch.randperm(len(data), generator=torch.Generator().manual_seed(DIGITS_SEED)).numpy()
        n_test = int(round(len(data) * DIGITS_TEST_FRACTION))
        idx = perm[:n_test] if split == "test" else perm[n_test:]
        idx = np.sort(idx)
        pixels = torch.from_numpy(data[idx] / 16.0).to(torch.float32)  # exact: k/16
        labels = torch.from_numpy(target[idx])
        if limit is not None:
            pixels, labels = pixels[:limit], labels[:limit]
        self._setup(pixels, labels, normalize, img_size, in_chans)


# ---------------------------------------------------------------------------------------------------------------
# ImageFolder (users' own images)
# ---------------------------------------------------------------------------------------------------------------

IMG_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".webp")
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
_MODES_16BIT = ("I;16", "I;16L", "I;16B", "I;16N")


def read_image(path: PathLike, mode: str = "RGB") -> "PIL.Image.Image":
    """Read an image file into memory as an 8-bit ``"RGB"`` or ``"L"`` PIL image.

    16-bit grey images (PIL modes ``I;16*``, and ``I`` from a PNG, whose samples have at most 16 bits) are scaled
    to 8 bits as ``round(v * 255 / 65535) = round(v / 257)``, the PNG specification's sample-depth rescaling: full
    scale maps to full scale, and an 8-bit image widened by byte replication (``v * 257``) reads back exactly.
    (``v >> 8`` truncates instead, up to one level low.) PIL's own conversion clips them to 0..255, which turns
    almost every pixel white. 32-bit integer (``I``) and float (``F``) images carry no known range and are refused.

    Raises ``ValueError`` naming the file for an unreadable, truncated or oversized image (PIL's decompression-bomb
    guard, ``PIL.Image.MAX_IMAGE_PIXELS``); a missing file raises ``FileNotFoundError``.
    """
    from PIL import Image
    if mode not in ("RGB", "L"):
        raise ValueError(f"read_image: mode must be 'RGB' or 'L', got {mode!r}")
    path = Path(path)
    try:
        with Image.open(path) as im:
            src_mode = im.mode
            if src_mode in _MODES_16BIT or (src_mode == "I" and im.format == "PNG"):
                v = np.asarray(im).astype(np.int64)
                out = Image.fromarray(((v.clip(0, 65535) + 128) // 257).astype(np.uint8)).convert(mode)
            elif src_mode in ("I", "F") or src_mode.startswith(("I;", "F;")):
                out = None
            else:
                out = im.convert(mode)         # a loaded copy: the file is closed on return
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as e:
        limit = Image.MAX_IMAGE_PIXELS
        raise ValueError(f"cannot read image {path}: {e} (PIL.Image.MAX_IMAGE_PIXELS = {limit}: PIL warns above "
                         f"it and refuses above twice it, to guard against decompression bombs); if you trust the "
                         f"file, raise the limit: `PIL.Image.MAX_IMAGE_PIXELS = <pixels>`") from e
    except FileNotFoundError:
        raise
    except (OSError, ValueError, SyntaxError) as e:  # PIL.UnidentifiedImageError is an OSError; so is a truncation
        raise ValueError(f"cannot read image {path}: {e}") from e
    if out is None:
        kind = "floating-point" if src_mode.startswith("F") else "32-bit integer"
        raise ValueError(f"cannot read image {path}: mode {src_mode} ({kind} samples) has no known range to scale "
                         f"to 8 bits; save it as an 8- or 16-bit image")
    return out


class ImageFolder(Dataset):
    """The user's own images in ``root/<class>/<image>`` (any depth below the class folder).

    Class folders are sorted by name (``classes[i]`` is label ``i``); accepted extensions are ``IMG_EXTENSIONS``
    (case-insensitive). Images are read with PIL when accessed, converted to RGB (``in_chans=3``) or grey
    (``in_chans=1``), resized to ``img_size`` (bilinear) and normalised with ``mean``/``std`` (defaults: ImageNet
    for 3 channels, 0.5/0.5 for 1). Items are ``(float [C,H,W], int label)``.
    """

    def __init__(self, root: PathLike, img_size: SizeLike = 224, in_chans: int = 3,
                 mean: Optional[Sequence[float]] = None, std: Optional[Sequence[float]] = None,
                 limit: Optional[int] = None):
        from zoo.errors import DatasetNotFoundError
        self.root = Path(root).expanduser()
        if in_chans not in (1, 3):
            raise ValueError(f"in_chans must be 1 or 3, got {in_chans}")
        self.in_chans = int(in_chans)
        self.img_size = _pair(img_size)
        limit = _check_limit(limit)
        exts = ", ".join(IMG_EXTENSIONS)
        if not self.root.is_dir():
            what = "is not a folder" if self.root.exists() else "does not exist"
            raise DatasetNotFoundError(f"ImageFolder root {self.root} {what}; expected root/<class>/<image> with "
                                       f"images ending in {exts}")
        class_dirs = sorted(p for p in self.root.iterdir() if p.is_dir() and not p.name.startswith("."))
        if not class_dirs:
            raise DatasetNotFoundError(f"ImageFolder root {self.root} has no class folders; expected "
                                       f"root/<class>/<image> with images ending in {exts}")
        self.classes = [p.name for p in class_dirs]
        self.class_to_idx = {c: i for i, c in enumerate(self.classes)}
        self.samples: List[Tuple[Path, int]] = []
        empty = []
        for i, d in enumerate(class_dirs):
            files = sorted(p for p in d.rglob("*")
                           if p.is_file() and p.suffix.lower() in IMG_EXTENSIONS
                           and not any(part.startswith(".") for part in p.relative_to(d).parts))
            if not files:
                empty.append(d.name)
            self.samples += [(p, i) for p in files]
        if not self.samples:
            raise DatasetNotFoundError(f"ImageFolder root {self.root} has class folders {self.classes} but no "
                                       f"images ending in {exts}")
        if empty:
            raise DatasetNotFoundError(f"ImageFolder root {self.root}: class folder(s) {empty} hold no images "
                                       f"ending in {exts}; remove them or add images")
        if limit is not None:
            self.samples = self.samples[:limit]
        self.targets = [t for _, t in self.samples]
        if mean is None:
            mean = IMAGENET_MEAN if self.in_chans == 3 else (0.5,)
        if std is None:
            std = IMAGENET_STD if self.in_chans == 3 else (0.5,)
        mean, std = tuple(float(m) for m in mean), tuple(float(s) for s in std)
        if len(mean) == 1:
            mean = mean * self.in_chans
        if len(std) == 1:
            std = std * self.in_chans
        if len(mean) != self.in_chans or len(std) != self.in_chans:
            raise ValueError(f"mean/std need 1 or {self.in_chans} values, got {mean} / {std}")
        if min(std) <= 0:
            raise ValueError(f"std must be positive, got {std}")
        self.mean, self.std = mean, std
        self._mean_t = torch.tensor(mean, dtype=torch.float32).view(-1, 1, 1)
        self._std_t = torch.tensor(std, dtype=torch.float32).view(-1, 1, 1)

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    def __len__(self) -> int:
        return len(self.samples)

    def load(self, path: PathLike) -> torch.Tensor:
        """Read one image file -> float ``[C,H,W]`` (converted, resized, normalised)."""
        from PIL import Image
        im = read_image(path, "RGB" if self.in_chans == 3 else "L")
        if self.img_size is not None and im.size != (self.img_size[1], self.img_size[0]):
            im = im.resize((self.img_size[1], self.img_size[0]), Image.BILINEAR)
        arr = np.asarray(im, dtype=np.uint8).copy()
        x = torch.from_numpy(arr)
        x = x.unsqueeze(0) if x.dim() == 2 else x.permute(2, 0, 1)
        x = x.to(torch.float32).div_(255.0)
        return (x - self._mean_t) / self._std_t

    def __getitem__(self, index: int) -> Tuple[torch.Tensor, int]:
        path, target = self.samples[index]
        return self.load(path), target

    def tensors(self) -> Tuple[torch.Tensor, torch.Tensor]:
        """All images stacked ``[N,C,H,W]`` and labels ``long [N]`` (needs a fixed ``img_size``)."""
        if self.img_size is None:
            raise ValueError("ImageFolder.tensors() needs a fixed img_size")
        xs = [self.load(p) for p, _ in self.samples]
        return torch.stack(xs), torch.tensor(self.targets, dtype=torch.long)


# ---------------------------------------------------------------------------------------------------------------
# Augmentation
# ---------------------------------------------------------------------------------------------------------------

def random_crop_flip(x: torch.Tensor, padding: int = 2, p_flip: float = 0.5,
                     generator: Optional[torch.Generator] = None) -> torch.Tensor:
    """Batched augmentation on ``[B,C,H,W]`` (any device): a random ``H x W`` crop of the zero-padded image (each
    sample its own offset), then a horizontal flip with probability ``p_flip`` per sample.

    Zero padding is applied to the tensor as given, so on normalised inputs the border is the value 0 of the
    normalised space (the mean). ``padding=0, p_flip=0`` returns ``x`` unchanged; ``padding=0, p_flip=1`` equals
    ``torch.flip(x, dims=[-1])``."""
    if x.dim() != 4:
        raise ValueError(f"random_crop_flip expects [B,C,H,W], got shape {list(x.shape)}")
    if padding < 0:
        raise ValueError(f"padding must be >= 0, got {padding}")
    if not 0.0 <= p_flip <= 1.0:
        raise ValueError(f"p_flip must be in [0, 1], got {p_flip}")
    B, C, H, W = x.shape
    dev = x.device
    gen_dev = generator.device if generator is not None else torch.device("cpu")
    if padding > 0:
        xp = F.pad(x, (padding, padding, padding, padding))
        oy = torch.randint(0, 2 * padding + 1, (B,), generator=generator, device=gen_dev).to(dev)
        ox = torch.randint(0, 2 * padding + 1, (B,), generator=generator, device=gen_dev).to(dev)
        rows = (oy[:, None] + torch.arange(H, device=dev)[None, :])  # [B,H]
        cols = (ox[:, None] + torch.arange(W, device=dev)[None, :])  # [B,W]
        b = torch.arange(B, device=dev)[:, None, None]
        out = xp.permute(0, 2, 3, 1)[b, rows[:, :, None], cols[:, None, :]]  # [B,H,W,C]
        out = out.permute(0, 3, 1, 2).contiguous()
    else:
        out = x
    if p_flip > 0:
        flip = torch.rand(B, generator=generator, device=gen_dev).to(dev) < p_flip
        out = torch.where(flip[:, None, None, None], out.flip(-1), out)
    elif out is x:
        out = x.clone()
    return out


# ---------------------------------------------------------------------------------------------------------------
# Factory
# ---------------------------------------------------------------------------------------------------------------

DATASETS: Dict[str, Dict[str, Any]] = {
    "fashion_mnist": {
        "num_classes": 10, "in_chans": 1, "img_size": (28, 28), "splits": ("train", "test"),
        "sizes": {"train": 60000, "test": 10000}, "classes": list(FASHION_MNIST_CLASSES),
        "mean": (FASHION_MNIST_MEAN,), "std": (FASHION_MNIST_STD,), "licence": "MIT",
        "card": "datasets/fashion_mnist.md",
    },
    "digits": {
        "num_classes": 10, "in_chans": 1, "img_size": (8, 8), "splits": ("train", "test"),
        "sizes": {"train": 1438, "test": 359}, "classes": [str(i) for i in range(10)],
        "mean": (0.3056,), "std": (0.3761,), "licence": "CC BY 4.0", "card": "datasets/digits.md",
    },
    "image_folder": {
        "num_classes": None, "in_chans": 3, "img_size": (224, 224), "splits": None,
        "licence": "the user's own", "card": "datasets/image_folder.md",
    },
}
_ALIASES = {"fashionmnist": "fashion_mnist", "fmnist": "fashion_mnist", "imagefolder": "image_folder",
            "folder": "image_folder"}


def _canonical_name(name: str) -> str:
    key = str(name).strip().lower().replace("-", "_")
    key = _ALIASES.get(key.replace("_", ""), key) if key not in DATASETS else key
    if key not in DATASETS:
        close = difflib.get_close_matches(key, list(DATASETS) + list(_ALIASES), n=3, cutoff=0.4)
        close = list(dict.fromkeys(_ALIASES.get(c, c) for c in close))
        hint = f"; did you mean {close[0]!r}?" if close else ""
        raise ValueError(f"unknown dataset {name!r}{hint} Known datasets: {sorted(DATASETS)}")
    return key


def build_dataset(name: str, split: str = "train", root: Optional[PathLike] = None, download: bool = False,
                  img_size: Optional[SizeLike] = None, in_chans: Optional[int] = None, limit: Optional[int] = None,
                  **kw: Any) -> Dataset:
    """Build a vision dataset by name: ``"fashion_mnist"``, ``"digits"`` or ``"image_folder"``.

    For ``image_folder`` the split's subfolder ``root/<split>`` is used when it exists, else ``root`` itself.
    ``img_size`` / ``in_chans`` resize / repeat channels of the built-in datasets when they differ from the native
    shape (see ``DATASETS``). Extra keywords go to the dataset class (e.g. ``normalize``, ``mean``, ``std``)."""
    key = _canonical_name(name)
    if key == "fashion_mnist":
        return FashionMNIST(root=root, split=split, download=download, limit=limit, img_size=img_size,
                            in_chans=in_chans, **kw)
    if key == "digits":
        return Digits(root=root, split=split, download=download, limit=limit, img_size=img_size,
                      in_chans=in_chans, **kw)
    if root is None:
        raise ValueError("image_folder needs root=<folder with one sub-folder per class>")
    folder = Path(root).expanduser()
    if split and (folder / split).is_dir():
        folder = folder / split
    return ImageFolder(folder, img_size=img_size if img_size is not None else 224,
                       in_chans=in_chans if in_chans is not None else 3, limit=limit, **kw)
