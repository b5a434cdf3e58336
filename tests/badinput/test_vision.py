"""Bad input for the vision domain: every registered vision model's forward and every vision loader (the datasets of
``DATASETS`` through ``build_dataset``, ``read_idx``, ``read_image``, ``ImageFolder``, ``CocoDetection``, ``collate``)
fed wrong types, out-of-range values, empty, truncated and corrupt files and paths that leave their folder.

Model cases are generated from ``zoo.list_models(domain="vision")`` and dataset cases from ``DATASETS``, so a new
model or dataset is covered as soon as it is registered. Files are small slices of the real data (Debian's
Fashion-MNIST, labelme's COCO example) or images written here.
"""
from __future__ import annotations

import functools
import gzip
import json
import shutil
import struct
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch

import zoo
from domains.vision import coco as C
from domains.vision import data as D
from zoo.errors import ConfigError, DatasetNotFoundError

from .matrix import Case, check_case, params

pytestmark = pytest.mark.debian_data("dataset-fashion-mnist", "labelme-examples")

FMNIST = Path("/usr/share/datasets/fashion-mnist")
IMG, LBL = "t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"
N_REAL = 16                                                       # images of the real test split used here

NOT_APPLICABLE = {
    "interrupted": "vision loaders and models only read: nothing is written that an interruption could leave "
                   "half-done (the one writer, download=True, is zoo.hub.download, whose interrupted transfers are "
                   "the hub area's cases)",
}


# ---- models -----------------------------------------------------------------------------------------------------

VIT_TINY = dict(img_size=32, patch_size=4, num_classes=5, embed_dim=48, num_heads=3, depth=1)
DETR_TINY = dict(backbone="tiny", backbone_kwargs=dict(channels=(8, 16)), num_classes=3, num_queries=2,
                 hidden_dim=32, nheads=2, enc_layers=1, dec_layers=1, dim_feedforward=32)


@functools.lru_cache(maxsize=None)
def tiny_model(name: str) -> torch.nn.Module:
    """The model at the smallest size its builder takes (ViT-layout families, else DETR-layout), in eval mode."""
    last = None
    for kw in (VIT_TINY, dict(VIT_TINY, depth=None), DETR_TINY):
        kw = {k: v for k, v in kw.items() if v is not None}
        try:
            return zoo.create(name, **kw).eval()
        except (TypeError, ConfigError) as e:        # an override this builder does not take
            if "keyword argument" not in str(e):
                raise
            last = e
    raise last


def _chans(m) -> int:
    return m.in_chans if hasattr(m, "in_chans") else m.backbone.in_chans


def _forward(name: str, make):
    m = tiny_model(name)
    with torch.no_grad():
        return m(make(_chans(m)))


def _model_cases(name: str):
    size = 32
    patch = getattr(tiny_model(name), "patch_size", None)
    cases = [
        Case(f"model-{name}-list", "wrong type", "a nested list instead of a tensor: TypeError saying to convert",
             lambda t, n=name: _forward(n, lambda c: torch.zeros(1, c, size, size).tolist()),
             TypeError, r"torch\.Tensor .* got list"),
        Case(f"model-{name}-numpy", "wrong type", "a numpy array instead of a tensor: TypeError saying to convert",
             lambda t, n=name: _forward(n, lambda c: np.zeros((1, c, size, size), np.float32)),
             TypeError, r"torch\.Tensor .* got ndarray"),
        Case(f"model-{name}-uint8", "wrong type", "raw uint8 pixels: TypeError naming the dtype and the conversion",
             lambda t, n=name: _forward(n, lambda c: torch.zeros(1, c, size, size, dtype=torch.uint8)),
             TypeError, r"floating-point .* torch\.uint8.*/ 255"),
        Case(f"model-{name}-channels", "out of range", "one channel too many: ValueError naming both counts",
             lambda t, n=name: _forward(n, lambda c: torch.zeros(1, c + 1, size, size)),
             ValueError, r"expected \d input channel\(s\), got \d.*in_chans="),
        Case(f"model-{name}-empty-batch", "empty", "a batch of 0 images: ValueError, not a reshape error inside",
             lambda t, n=name: _forward(n, lambda c: torch.zeros(0, c, size, size)),
             ValueError, r"empty batch.*\(0, \d, 32, 32\)"),
        Case(f"model-{name}-zero-size", "empty", "a 0x0 image: ValueError naming the size",
             lambda t, n=name: _forward(n, lambda c: torch.zeros(1, c, 0, 0)),
             ValueError, r"image size 0x0 is empty"),
        Case(f"model-{name}-no-batch-dim", "wrong type", "[C, H, W] without the batch axis: ValueError naming shapes",
             lambda t, n=name: _forward(n, lambda c: torch.zeros(c, size, size)),
             ValueError, r"expected images \[B, \d, H, W\], got a tensor of shape"),
    ]
    if patch is not None:
        cases.append(Case(
            f"model-{name}-smaller-than-patch", "out of range",
            "an image smaller than one patch: ValueError naming the image and patch sizes",
            lambda t, n=name: _forward(n, lambda c: torch.zeros(1, c, 2, 2)),
            ValueError, r"2x2"))
    else:   # a convolutional backbone: any size of at least one pixel gives at least one feature cell
        def check(out, t):
            assert out["pred_logits"].shape[:2] == (1, tiny_model(name).num_queries)
            assert torch.isfinite(out["pred_boxes"]).all() and out["pred_boxes"].min() >= 0
        cases.append(Case(f"model-{name}-2x2-image", "out of range",
                          "a 2x2 image: the strided backbone yields one cell; finite predictions",
                          lambda t, n=name: _forward(n, lambda c: torch.rand(1, c, 2, 2)), check=check))
    return cases


# ---- Fashion-MNIST / IDX files ----------------------------------------------------------------------------------

@functools.lru_cache(maxsize=None)
def _real_slice():
    """The first N_REAL test images [N,28,28] and labels [N] of the real Fashion-MNIST (uint8 tensors)."""
    return D.read_idx(FMNIST / f"{IMG}.gz")[:N_REAL].clone(), D.read_idx(FMNIST / f"{LBL}.gz")[:N_REAL].clone()


def _idx(arr: np.ndarray, code: int = 0x08, dims=None) -> bytes:
    dims = arr.shape if dims is None else dims
    return struct.pack(">HBB", 0, code, len(dims)) + struct.pack(f">{len(dims)}I", *dims) + arr.tobytes()


def _fmnist(t: Path, images: bytes = None, labels: bytes = None, gz: bool = False) -> Path:
    """A Fashion-MNIST root holding the t10k files (the real slice unless given), plain or gzip-compressed."""
    x, y = _real_slice()
    root = t / "fm"
    root.mkdir(exist_ok=True)
    for name, data in ((IMG, _idx(x.numpy()) if images is None else images),
                       (LBL, _idx(y.numpy()) if labels is None else labels)):
        (root / (name + ".gz" if gz else name)).write_bytes(gzip.compress(data) if gz else data)
    return root


def _load_fmnist(root: Path):
    return D.FashionMNIST(root=root, split="test")


def _x():
    return _real_slice()[0].numpy()


def _y():
    return _real_slice()[1].numpy()


FM = r"t10k-images-idx3-ubyte"
FL = r"t10k-labels-idx1-ubyte"

IDX_CASES = [
    Case("fmnist-labels-int32", "wrong type", "labels stored as int32: ValueError naming the file and dtype",
         lambda t: _load_fmnist(_fmnist(t, labels=_idx(_y().astype(">i4"), 0x0C))),
         ValueError, FL + r": expected uint8 labels .* torch\.int32"),
    Case("fmnist-images-3x28x28x1", "wrong type", "images of another shape: ValueError naming the file and shape",
         lambda t: _load_fmnist(_fmnist(t, images=_idx(_x().reshape(N_REAL, 28, 28, 1)))),
         ValueError, FM + r": expected uint8 images of shape \[N,28,28\]"),
    Case("fmnist-label-out-of-range", "out of range", "a label of 12 for 10 classes: ValueError naming the file",
         lambda t: _load_fmnist(_fmnist(t, labels=_idx(np.where(np.arange(N_REAL) == 3, 12, _y()).astype(np.uint8)))),
         ValueError, FL + r": label 12 out of range 0\.\.9"),
    Case("fmnist-root-empty-dir", "empty",
         "an explicit root without the files: DatasetNotFoundError naming it and the files (no fall-back copy)",
         lambda t: (t / "none").mkdir() or D.FashionMNIST(root=t / "none", split="test"),
         DatasetNotFoundError, r"need t10k-images-idx3-ubyte\.gz and t10k-labels-idx1-ubyte\.gz.*/none\n"),
    Case("fmnist-zero-images", "empty", "a header declaring 0 images: ValueError naming the file",
         lambda t: _load_fmnist(_fmnist(t, images=_idx(np.zeros((0, 28, 28), np.uint8)),
                                        labels=_idx(np.zeros(0, np.uint8)))),
         ValueError, FM + r": the header declares 0 images"),
    Case("idx-empty-file", "empty", "a 0-byte IDX file: ValueError naming it",
         lambda t: (t / "e.idx").write_bytes(b"") and 0 or D.read_idx(t / "e.idx"),
         ValueError, r"e\.idx: not an IDX file: only 0 bytes"),
    Case("fmnist-fewer-labels", "truncated", "10 labels for 16 images: ValueError naming both files and counts",
         lambda t: _load_fmnist(_fmnist(t, labels=_idx(_y()[:10]))),
         ValueError, FM + r" holds 16 images but .*" + FL + " holds 10 labels"),
    Case("fmnist-truncated-gzip", "truncated", "a gzip stream cut in half: ValueError naming the file",
         lambda t: _load_fmnist(_trunc_gz(_fmnist(t, gz=True) / (IMG + ".gz")).parent),
         ValueError, FM + r"\.gz: corrupt or truncated gzip-compressed IDX file"),
    Case("idx-payload-short", "truncated", "a header counting 16 images over 10 images of pixels: ValueError",
         lambda t: _load_fmnist(_fmnist(t, images=_idx(_x()[:10], dims=(N_REAL, 28, 28)))),
         ValueError, FM + r": truncated: expected 12544 bytes of pixels for shape \[16, 28, 28\], found 7840"),
    Case("idx-header-claims-a-terabyte", "truncated",
         "a header claiming 2**40 pixels over 10 bytes: reported as truncated, nothing of that size allocated",
         lambda t: (t / "big.idx").write_bytes(_idx(np.zeros(10, np.uint8), dims=(2 ** 16, 2 ** 12, 2 ** 12)))
         and D.read_idx(t / "big.idx"),
         ValueError, r"big\.idx: truncated: expected 1099511627776 bytes .* found 10"),
    Case("idx-header-overflows-int64", "truncated", "sizes whose product overflows int64: truncated, not 0 bytes",
         lambda t: (t / "o.idx").write_bytes(_idx(np.zeros(10, np.uint8), dims=(2 ** 31,) * 3))
         and D.read_idx(t / "o.idx"),
         ValueError, r"o\.idx: truncated: expected 9903520314283042199192993792 bytes"),
    Case("fmnist-corrupt-gzip", "corrupt", "deflate data overwritten with zeros: ValueError naming the file",
         lambda t: _load_fmnist(_zero_middle(_fmnist(t, gz=True) / (IMG + ".gz")).parent),
         ValueError, FM + r"\.gz: corrupt or truncated gzip-compressed IDX file"),
    Case("idx-bad-magic", "corrupt", "a PNG given as an IDX file: ValueError naming the magic number",
         lambda t: (t / "x.idx").write_bytes(b"\x89PNG\r\n\x1a\n") and D.read_idx(t / "x.idx"),
         ValueError, r"x\.idx: bad magic number 0x89504e47"),
    Case("idx-trailing-bytes", "corrupt", "bytes after the declared payload: ValueError naming the file",
         lambda t: _load_fmnist(_fmnist(t, labels=_idx(_y()) + b"\x00\x01")),
         ValueError, FL + r": size mismatch: 2 bytes after the 16 bytes"),
    Case("fmnist-root-is-a-file", "adversarial path", "root naming a file: DatasetNotFoundError naming it",
         lambda t: (t / "f").write_text("x") and D.FashionMNIST(root=t / "f", split="test"),
         DatasetNotFoundError, r"Searched:\n  - .*/f\n"),
]


def _trunc_gz(path: Path) -> Path:
    data = path.read_bytes()
    path.write_bytes(data[:len(data) // 2])
    return path


def _zero_middle(path: Path) -> Path:
    data = bytearray(path.read_bytes())
    mid = len(data) // 2
    data[mid:mid + 64] = bytes(64)
    path.write_bytes(bytes(data))
    return path


# ---- the named datasets (every entry of DATASETS) ---------------------------------------------------------------

def _folder(t: Path, n: int = 2) -> Path:
    from PIL import Image
    root = t / "imgs"
    for cls in ("a", "b"):
        (root / cls).mkdir(parents=True, exist_ok=True)
        for i in range(n):
            Image.fromarray(np.full((8, 8, 3), 40 * i, np.uint8)).save(root / cls / f"{i}.png")
    return root


def _dataset_cases(name: str):
    root = (lambda t: _folder(t)) if name == "image_folder" else (lambda t: None)
    cases = [Case(f"dataset-{name}-limit-str", "wrong type", "limit='5' (a string): TypeError naming limit",
                  lambda t, r=root: D.build_dataset(name, "train", root=r(t), limit="5", img_size=8),
                  TypeError, r"limit must be an int")]
    if D.DATASETS[name]["splits"] is None:       # a folder without split subfolders is used as a whole
        cases.append(Case(f"dataset-{name}-unknown-split", "out of range",
                          "a split without its subfolder: the root itself is used (documented)",
                          lambda t, r=root: D.build_dataset(name, "validation", root=r(t), img_size=8),
                          check=lambda ds, t: len(ds) == 4 and ds.classes == ["a", "b"] or pytest.fail(str(ds))))
    else:
        cases.append(Case(f"dataset-{name}-unknown-split", "out of range", "split='validation': ValueError listing "
                          "the splits", lambda t: D.build_dataset(name, "validation"),
                          ValueError, r"unknown split 'validation'; expected one of \['train', 'test'\]"))
    cases.append(Case(f"dataset-{name}-negative-limit", "out of range", "limit=-1: ValueError naming limit",
                      lambda t, r=root: D.build_dataset(name, "test", root=r(t), limit=-1, img_size=8),
                      ValueError, r"limit must be >= 0, got -1"))
    return cases


# ---- image files: ImageFolder and read_image --------------------------------------------------------------------

def _write(t: Path, rel: str, data=None, **save) -> Path:
    from PIL import Image
    p = t / rel
    p.parent.mkdir(parents=True, exist_ok=True)
    if isinstance(data, bytes):
        p.write_bytes(data)
    else:
        Image.fromarray(data).save(p, **save)
    return p


def _ramp16():
    return np.round(np.linspace(0, 65535, 64)).astype(np.uint16).reshape(8, 8)


def _check_16bit(x, t):
    want = torch.from_numpy(np.round(_ramp16() / 257.0)).float() / 255.0     # PNG spec depth scaling
    torch.testing.assert_close(x[0][0], want, atol=1e-6, rtol=0)


def _bomb(t: Path, monkeypatch_limit: int, as_error: bool):
    from PIL import Image
    p = _write(t, "bomb/a/x.png", np.zeros((100, 100), np.uint8))
    old = Image.MAX_IMAGE_PIXELS
    Image.MAX_IMAGE_PIXELS = monkeypatch_limit
    try:
        with warnings.catch_warnings():
            if as_error:
                warnings.simplefilter("error", Image.DecompressionBombWarning)
            return D.ImageFolder(p.parents[1], img_size=8, in_chans=1)[0]
    finally:
        Image.MAX_IMAGE_PIXELS = old


def _png_bytes() -> bytes:
    import io

    from PIL import Image
    buf = io.BytesIO()
    Image.fromarray(np.random.default_rng(0).integers(0, 256, (32, 32), dtype=np.uint8)).save(buf, format="PNG")
    return buf.getvalue()


IMAGE_CASES = [
    Case("image-float-tiff", "wrong type", "a float (mode F) image: ValueError naming the file and mode",
         lambda t: D.read_image(_write(t, "f.tif", np.ones((4, 4), np.float32))),
         ValueError, r"f\.tif: mode F \(floating-point samples\)"),
    Case("image-int32-as-png", "wrong type", "a 32-bit TIFF named .png in a class folder: refused by name",
         lambda t: D.ImageFolder(_write(t, "i/a/x.png", np.arange(16, dtype=np.int32).reshape(4, 4) * 9999,
                                        format="TIFF").parents[1], img_size=4, in_chans=1)[0],
         ValueError, r"x\.png: mode I \(32-bit integer samples\)"),
    Case("image-16bit-png", "out of range", "16-bit grey: scaled to 8 bits as round(v / 257), not clipped",
         lambda t: D.ImageFolder(_write(t, "s/a/x.png", _ramp16()).parents[1], img_size=8, in_chans=1,
                                 mean=[0.0], std=[1.0])[0],
         check=_check_16bit),
    Case("image-decompression-bomb", "out of range", "over twice MAX_IMAGE_PIXELS: ValueError naming file and limit",
         lambda t: _bomb(t, 1000, False), ValueError, r"x\.png: .*10000 pixels.*MAX_IMAGE_PIXELS = 1000"),
    Case("image-decompression-warning-as-error", "out of range",
         "over MAX_IMAGE_PIXELS with warnings as errors: the same ValueError",
         lambda t: _bomb(t, 6000, True), ValueError, r"x\.png: .*10000 pixels.*MAX_IMAGE_PIXELS = 6000"),
    Case("folder-empty-class", "empty", "a class folder without images: DatasetNotFoundError naming it",
         lambda t: (_folder(t) / "c").mkdir() or D.ImageFolder(t / "imgs"),
         DatasetNotFoundError, r"class folder\(s\) \['c'\] hold no images"),
    Case("folder-no-classes", "empty", "a root without class folders: DatasetNotFoundError naming it",
         lambda t: (t / "r").mkdir() or D.ImageFolder(t / "r"),
         DatasetNotFoundError, r"/r has no class folders"),
    Case("image-truncated-png", "truncated", "half a PNG: ValueError naming the file",
         lambda t: D.ImageFolder(_write(t, "tr/a/x.png", _png_bytes()[:300]).parents[1], img_size=8)[0],
         ValueError, r"cannot read image .*tr/a/x\.png"),
    Case("image-text-as-png", "corrupt", "a text file named .png: ValueError naming the file",
         lambda t: D.ImageFolder(_write(t, "c/a/x.png", b"hello").parents[1], img_size=8)[0],
         ValueError, r"cannot read image .*c/a/x\.png: cannot identify image file"),
    Case("folder-non-image-ignored", "corrupt", "a non-image extension beside images: not listed (documented)",
         lambda t: (_folder(t) / "a" / "notes.txt").write_text("x") and D.ImageFolder(t / "imgs", img_size=8),
         check=lambda ds, t: [p.name for p, _ in ds.samples] == ["0.png", "1.png"] * 2 or pytest.fail(ds.samples)),
    Case("folder-root-is-a-file", "adversarial path", "root naming a file: DatasetNotFoundError naming it",
         lambda t: (t / "f.png").write_bytes(b"x") and D.ImageFolder(t / "f.png"),
         DatasetNotFoundError, r"f\.png is not a folder"),
    Case("folder-symlink-loop", "adversarial path", "a class folder linking to itself: each image listed once",
         lambda t: (_folder(t) / "a" / "loop").symlink_to(t / "imgs" / "a") or D.ImageFolder(t / "imgs", img_size=8),
         check=lambda ds, t: len(ds) == 4 or pytest.fail(str(ds.samples))),
]


# ---- COCO -------------------------------------------------------------------------------------------------------

def _coco(t: Path, mutate=None, **kw):
    """CocoDetection on a copy of labelme's COCO example after ``mutate(ann)``."""
    src = C.labelme_examples_root()
    if not (t / "JPEGImages").exists():
        shutil.copytree(src / "JPEGImages", t / "JPEGImages")
    ann = json.loads((src / "annotations.json").read_text())
    if mutate is not None:
        mutate(ann)
    path = t / "annotations.json"
    path.write_text(ann if isinstance(ann, str) else json.dumps(ann))
    return C.CocoDetection(path, **kw)


def _set(lst, i, **kw):
    return lambda a: a[lst][i].update(**kw)


ANN = r"annotations\.json: "
COCO_CASES = [
    Case("coco-image-id-list", "wrong type", "image_id [1] (a list): CocoFormatError naming the annotation",
         lambda t: _coco(t, _set("annotations", 3, image_id=[1])),
         C.CocoFormatError, ANN + r"annotation id 3: image_id \[1\] is not among the images"),
    Case("coco-bbox-strings", "wrong type", "a bbox of strings: CocoFormatError naming the annotation",
         lambda t: _coco(t, _set("annotations", 2, bbox=["1", "2", "3", "4"])),
         C.CocoFormatError, ANN + r"annotation id 2 \(image id 0\): bbox must be 4 finite numbers"),
    Case("coco-width-float", "wrong type", "an image width of 500.5: CocoFormatError naming the image",
         lambda t: _coco(t, _set("images", 0, width=500.5)),
         C.CocoFormatError, ANN + r"image id 0 .* needs positive integer 'width' and 'height'"),
    Case("coco-box-outside", "out of range", "a box beyond the image: CocoFormatError naming annotation and image",
         lambda t: _coco(t, _set("annotations", 7, bbox=[400, 300, 200, 100])),
         C.CocoFormatError, ANN + r"annotation id 7 \(image id 2\): bbox .* lies outside the 500x375 image"),
    Case("coco-negative-size", "out of range", "a negative box width: CocoFormatError naming the annotation",
         lambda t: _coco(t, _set("annotations", 4, bbox=[10, 10, -5, 20])),
         C.CocoFormatError, ANN + r"annotation id 4 \(image id 1\): bbox .* non-positive width"),
    Case("coco-unknown-category", "out of range", "category_id 99: CocoFormatError listing the categories",
         lambda t: _coco(t, _set("annotations", 5, category_id=99)),
         C.CocoFormatError, ANN + r"annotation id 5: category_id 99 is not among the categories"),
    Case("coco-unknown-category-skipped", "out of range", "on_invalid='skip': the annotation dropped and counted",
         lambda t: _coco(t, _set("annotations", 5, category_id=99), on_invalid="skip"),
         check=lambda ds, t: (ds.skipped == {"unknown_category": 1} and ds.num_boxes == 11) or pytest.fail(
             str(ds.skipped))),
    Case("coco-16bit-image", "out of range", "a 16-bit PNG: read scaled to 8 bits, not clipped to white",
         lambda t: (_write(t, "JPEGImages/deep.png", _ramp16()),
                    _coco(t, lambda a: a["images"][0].update(file_name="JPEGImages/deep.png", width=8, height=8),
                          on_invalid="skip", max_size=8).load_image(0)),
         check=lambda r, t: torch.testing.assert_close(
             r[1] * torch.tensor(C.IMAGENET_STD).view(3, 1, 1) + torch.tensor(C.IMAGENET_MEAN).view(3, 1, 1),
             (torch.from_numpy(np.round(_ramp16() / 257.0)).float() / 255).expand(3, -1, -1), atol=1e-5, rtol=0)),
    Case("coco-no-images", "empty", "an empty image list: DatasetNotFoundError naming the file",
         lambda t: _coco(t, lambda a: a.update(images=[], annotations=[])),
         DatasetNotFoundError, ANN + r"no usable images"),
    Case("coco-collate-empty", "empty", "collate([]): ValueError", lambda t: C.collate([]),
         ValueError, r"collate needs at least one item"),
    Case("coco-truncated-json", "truncated", "JSON cut in half: CocoFormatError naming the file",
         lambda t: _coco(t, lambda a: None) and C.CocoDetection(_halve(t / "annotations.json")),
         C.CocoFormatError, ANN + r"not valid JSON"),
    Case("coco-missing-key", "corrupt", "no 'categories' list: CocoFormatError naming the file and the keys",
         lambda t: _coco(t, lambda a: a.pop("categories")),
         C.CocoFormatError, ANN + r"expected a COCO object with the lists 'images', 'annotations' and 'categories'"),
    Case("coco-missing-category-id", "corrupt", "an annotation without category_id: CocoFormatError naming it",
         lambda t: _coco(t, lambda a: a["annotations"][3].pop("category_id")),
         C.CocoFormatError, ANN + r"annotation id 3: category_id None is not among the categories"),
    Case("coco-size-disagrees", "corrupt", "a file of another size than declared: CocoFormatError naming both",
         lambda t: _coco(t, _set("images", 1, height=380))[1],
         C.CocoFormatError, ANN + r"image id 1: .*2011_000025\.jpg is 500x375 .* say 500x380"),
    Case("coco-file-name-dotdot", "adversarial path", "file_name '../x.jpg': CocoFormatError naming the image",
         lambda t: _coco(t, _set("images", 1, file_name="../x.jpg"), check_files=False),
         C.CocoFormatError, ANN + r"image id 1: file_name '\.\./x\.jpg' leaves the image folder"),
    Case("coco-file-name-absolute", "adversarial path", "an absolute file_name: CocoFormatError naming the image",
         lambda t: _coco(t, _set("images", 1, file_name="/etc/hostname"), check_files=False),
         C.CocoFormatError, ANN + r"image id 1: file_name '/etc/hostname' leaves the image folder"),
]


def _halve(path: Path) -> Path:
    text = path.read_text()
    path.write_text(text[:len(text) // 2])
    return path


CASES = ([c for name in zoo.list_models(domain="vision") for c in _model_cases(name)]
         + [c for name in D.DATASETS for c in _dataset_cases(name)]
         + IDX_CASES + IMAGE_CASES + COCO_CASES)


@pytest.mark.parametrize("case", params(CASES))
def test_case(case, tmp_path):
    check_case(case, tmp_path)
