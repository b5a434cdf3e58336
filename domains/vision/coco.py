"""COCO-format object detection data for DETR: ``annotations.json`` + an image folder, read with PIL.

    item = (image float [3, H', W'],   resized so that max(H', W') == max_size, ImageNet-normalised
            target {boxes  float [n, 4]  (cx, cy, w, h) / (W, H), in [0, 1],
                    labels long  [n]     contiguous class ids (``dataset.categories[label]`` is the name),
                    image_id long [], orig_size long [2] (H, W), size long [2] (H', W'), ann_ids long [n]})

    collate(items) -> (images float [B, 3, Hmax, Wmax]  zero-padded at the bottom / right,
                       mask   bool  [B, Hmax, Wmax]     True on real pixels, False on padding (as ``Positions.mask``),
                       targets list of B dicts)

The format is the one written by ``pycocotools`` / COCO 2017 ``instances_*.json`` (``images``, ``annotations`` with
``bbox = [x, y, w, h]`` in pixels of the original image, ``categories``) and by ``labelme2coco``. Everything in the
annotation file is checked when the dataset is built, so that a broken file fails at once and names the file and the
annotation id, rather than in the middle of training. With ``on_invalid="skip"`` broken annotations (and images
whose file is missing) are dropped instead and counted in ``dataset.skipped``.

Only torch and numpy are imported at module level; PIL is imported when an image is read.
"""
from __future__ import annotations

import json
import math
import os
from collections import Counter
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Tuple, Union

import numpy as np
import torch
from torch import Tensor
from torch.utils.data import Dataset

from zoo.errors import DatasetNotFoundError, ZooError

__all__ = ["CocoDetection", "CocoFormatError", "collate", "labelme_examples_root", "LABELME_COCO_DIR"]

PathLike = Union[str, "os.PathLike[str]"]

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)

# Debian / Ubuntu package labelme-examples: 3 PASCAL-VOC-style photos with 12 boxes in COCO format
LABELME_COCO_DIR = Path("/usr/share/doc/labelme-examples/examples/instance_segmentation/data_dataset_coco")


class CocoFormatError(ZooError, ValueError):
    """A COCO annotation file is malformed: bad JSON, an unknown image or category id, or an invalid box."""


def labelme_examples_root() -> Path:
    """The COCO-format example of labelme (``annotations.json`` + ``JPEGImages/``), as installed by Debian.

    Raises `DatasetNotFoundError` with the install command when the package is missing."""
    root = LABELME_COCO_DIR
    if not (root / "annotations.json").is_file():
        raise DatasetNotFoundError(
            f"labelme's COCO example is not installed (looked for {root / 'annotations.json'}); install it with "
            f"`sudo apt-get install labelme-examples` (Debian / Ubuntu), or pass your own COCO annotations.json and "
            f"image folder to CocoDetection")
    return root


# ---- parsing ----------------------------------------------------------------------------------------------------

def _is_number(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


class CocoDetection(Dataset):
    """Object detection items from a COCO-format annotation file.

    Args:
        annotations: path of the ``annotations.json`` (COCO ``instances_*.json`` layout).
        img_dir: folder the images' ``file_name`` are relative to; default: the annotation file's folder (labelme
            writes ``JPEGImages/x.jpg`` relative to it; for COCO 2017 pass ``.../train2017``).
        max_size: the longer image side after resizing (aspect ratio kept; smaller images are enlarged).
        on_invalid: "raise" (default): a malformed annotation, an unknown id or a missing image file raises
            `CocoFormatError` / `DatasetNotFoundError` naming the file and the annotation (or image) id;
            "skip": drop it and count it in ``self.skipped`` (keys ``bad_bbox``, ``unknown_category``,
            ``unknown_image``, ``missing_file``; annotations of an image skipped for its missing file:
            ``of_missing_file``).
        skip_crowd: drop ``iscrowd=1`` annotations (DETR trains on non-crowd boxes only); counted as ``crowd``.
        ignore_categories: category names that are not classes (labelme writes an unused ``_background_``).
        box_tolerance: pixels a box may stick out of its image (it is then clipped); more is an invalid box.
        check_files: check at construction that every image file exists.
        mean, std: normalisation (ImageNet by default).
    """

    def __init__(self, annotations: PathLike, img_dir: Optional[PathLike] = None, max_size: int = 512,
                 on_invalid: str = "raise", skip_crowd: bool = True,
                 ignore_categories: Sequence[str] = ("_background_",), box_tolerance: float = 1.0,
                 check_files: bool = True, mean: Sequence[float] = IMAGENET_MEAN,
                 std: Sequence[float] = IMAGENET_STD):
        if on_invalid not in ("raise", "skip"):
            raise ValueError(f"on_invalid must be 'raise' or 'skip', got {on_invalid!r}")
        if int(max_size) <= 0:
            raise ValueError(f"max_size must be a positive number of pixels, got {max_size!r}")
        if len(mean) != 3 or len(std) != 3 or min(std) <= 0:
            raise ValueError(f"mean and std need 3 values each, std > 0; got {mean} / {std}")
        self.ann_file = Path(annotations).expanduser()
        if not self.ann_file.is_file():
            raise DatasetNotFoundError(f"COCO annotation file {self.ann_file} does not exist")
        self.img_dir = Path(img_dir).expanduser() if img_dir is not None else self.ann_file.parent
        if not self.img_dir.is_dir():
            raise DatasetNotFoundError(f"image folder {self.img_dir} (for {self.ann_file}) does not exist")
        self.max_size = int(max_size)
        self.on_invalid = on_invalid
        self.skip_crowd = skip_crowd
        self.box_tolerance = float(box_tolerance)
        self.skipped: Counter = Counter()
        self._mean = torch.tensor([float(m) for m in mean]).view(3, 1, 1)
        self._std = torch.tensor([float(s) for s in std]).view(3, 1, 1)

        try:
            with open(self.ann_file, "rb") as f:
                data = json.load(f)
        except (json.JSONDecodeError, UnicodeDecodeError) as e:
            raise CocoFormatError(f"{self.ann_file}: not valid JSON ({e})") from e
        if not isinstance(data, dict) or not all(isinstance(data.get(k), list)
                                                 for k in ("images", "annotations", "categories")):
            raise CocoFormatError(f"{self.ann_file}: expected a COCO object with the lists 'images', 'annotations' "
                                  f"and 'categories'")
        self._parse_categories(data["categories"], ignore_categories)
        self._parse_images(data["images"], check_files)
        self._parse_annotations(data["annotations"])

    # ---- parsing helpers ----------------------------------------------------------------------------------------
    def _fail(self, kind: str, msg: str, exc=CocoFormatError) -> None:
        if self.on_invalid == "skip":
            self.skipped[kind] += 1
            return
        raise exc(f"{self.ann_file}: {msg}")

    def _parse_categories(self, cats: list, ignore: Sequence[str]) -> None:
        ids: Dict[int, str] = {}
        for c in cats:
            if not isinstance(c, dict) or not isinstance(c.get("id"), int) or "name" not in c:
                raise CocoFormatError(f"{self.ann_file}: category {c!r} needs an integer 'id' and a 'name'")
            if c["id"] in ids:
                raise CocoFormatError(f"{self.ann_file}: category id {c['id']} appears twice")
            ids[c["id"]] = str(c["name"])
        self.ignored_category_ids = {i for i, n in ids.items() if n in set(ignore)}
        kept = sorted(i for i in ids if i not in self.ignored_category_ids)
        if not kept:
            raise CocoFormatError(f"{self.ann_file}: no categories left after ignoring {list(ignore)}")
        # contiguous labels 0..K-1 in category-id order
        self.cat_id_to_label = {cid: i for i, cid in enumerate(kept)}
        self.label_to_cat_id = kept
        self.categories = [ids[i] for i in kept]

    def _parse_images(self, images: list, check_files: bool) -> None:
        self.images: Dict[int, Dict[str, Any]] = {}
        self._missing: set = set()
        for im in images:
            if not isinstance(im, dict) or not isinstance(im.get("id"), int) or not isinstance(
                    im.get("file_name"), str):
                raise CocoFormatError(f"{self.ann_file}: image entry {im!r} needs an integer 'id' and a 'file_name'")
            iid = im["id"]
            if iid in self.images:
                raise CocoFormatError(f"{self.ann_file}: image id {iid} appears twice")
            if not (isinstance(im.get("width"), int) and isinstance(im.get("height"), int)
                    and im["width"] > 0 and im["height"] > 0):
                raise CocoFormatError(f"{self.ann_file}: image id {iid} ({im['file_name']}) needs positive integer "
                                      f"'width' and 'height', got {im.get('width')!r} x {im.get('height')!r}")
            rel = os.path.normpath(im["file_name"])
            if os.path.isabs(rel) or rel == ".." or rel.startswith(".." + os.sep):
                raise CocoFormatError(f"{self.ann_file}: image id {iid}: file_name {im['file_name']!r} leaves the "
                                      f"image folder {self.img_dir}; file names are relative to it (pass img_dir=)")
            path = self.img_dir / rel
            if check_files and not path.is_file():
                self._fail("missing_file", f"image id {iid}: file {path} does not exist", DatasetNotFoundError)
                self._missing.add(iid)
                continue
            self.images[iid] = {"path": path, "width": im["width"], "height": im["height"], "anns": []}
        if not self.images:
            raise DatasetNotFoundError(f"{self.ann_file}: no usable images (skipped: {dict(self.skipped)})")
        self.ids = list(self.images)

    def _parse_annotations(self, anns: list) -> None:
        tol = self.box_tolerance
        known_ids = {im_id for im_id in self.images}
        for a in anns:
            if not isinstance(a, dict):
                raise CocoFormatError(f"{self.ann_file}: annotation {a!r} is not an object")
            aid = a.get("id")
            where = f"annotation id {aid}"
            iid = a.get("image_id")
            if not isinstance(iid, int) or iid not in known_ids:
                if isinstance(iid, int) and iid in self._missing:
                    self.skipped["of_missing_file"] += 1   # its image was skipped: its file is missing
                    continue
                self._fail("unknown_image", f"{where}: image_id {iid!r} is not among the images")
                continue
            cid = a.get("category_id")
            if not isinstance(cid, int):
                self._fail("unknown_category", f"{where}: category_id {cid!r} is not among the categories "
                                               f"{sorted(self.cat_id_to_label)}")
                continue
            if cid in self.ignored_category_ids:
                self._fail("unknown_category", f"{where}: category_id {cid} is an ignored category "
                                               f"({self._ignored_names()})")
                continue
            if cid not in self.cat_id_to_label:
                self._fail("unknown_category", f"{where}: category_id {cid!r} is not among the categories "
                                               f"{sorted(self.cat_id_to_label)}")
                continue
            if self.skip_crowd and a.get("iscrowd", 0):
                self.skipped["crowd"] += 1
                continue
            bbox = a.get("bbox")
            im = self.images[iid]
            if not (isinstance(bbox, (list, tuple)) and len(bbox) == 4 and all(_is_number(v) for v in bbox)):
                self._fail("bad_bbox", f"{where} (image id {iid}): bbox must be 4 finite numbers [x, y, w, h], "
                                       f"got {bbox!r}")
                continue
            x, y, w, h = (float(v) for v in bbox)
            W, H = im["width"], im["height"]
            if w <= 0 or h <= 0:
                self._fail("bad_bbox", f"{where} (image id {iid}): bbox {bbox} has a non-positive width or height")
                continue
            if x < -tol or y < -tol or x + w > W + tol or y + h > H + tol:
                self._fail("bad_bbox", f"{where} (image id {iid}): bbox {bbox} lies outside the {W}x{H} image")
                continue
            x0, y0 = max(x, 0.0), max(y, 0.0)
            x1, y1 = min(x + w, float(W)), min(y + h, float(H))
            im["anns"].append((aid, self.cat_id_to_label[cid], (x0, y0, x1, y1)))

    def _ignored_names(self) -> str:
        return ", ".join(sorted(str(i) for i in self.ignored_category_ids))

    # ---- dataset protocol ---------------------------------------------------------------------------------------
    @property
    def num_classes(self) -> int:
        return len(self.categories)

    @property
    def num_boxes(self) -> int:
        return sum(len(im["anns"]) for im in self.images.values())

    def __len__(self) -> int:
        return len(self.ids)

    def resized_size(self, height: int, width: int) -> Tuple[int, int]:
        """``(H', W')`` with ``max(H', W') == max_size`` and the aspect ratio kept (rounded, at least 1 px)."""
        s = self.max_size / max(height, width)
        return max(1, round(height * s)), max(1, round(width * s))

    def load_image(self, image_id: int) -> Tensor:
        """Read, resize and normalise one image -> float ``[3, H', W']``."""
        from PIL import Image

        from .data import read_image
        im = self.images[image_id]
        path = im["path"]
        try:
            pil = read_image(path, "RGB")      # 16-bit grey scaled to 8 bits; oversized images refused by name
        except FileNotFoundError as e:
            raise DatasetNotFoundError(f"{self.ann_file}: image id {image_id}: file {path} does not exist") from e
        except ValueError as e:
            raise CocoFormatError(f"{self.ann_file}: image id {image_id}: {e}") from e
        if pil.size != (im["width"], im["height"]):
            raise CocoFormatError(f"{self.ann_file}: image id {image_id}: {path} is {pil.size[0]}x{pil.size[1]} "
                                  f"(w x h) but the annotations say {im['width']}x{im['height']}")
        h, w = self.resized_size(im["height"], im["width"])
        arr = np.asarray(pil.resize((w, h), Image.BILINEAR), dtype=np.uint8).copy()
        x = torch.from_numpy(arr).permute(2, 0, 1).to(torch.float32).div_(255.0)   # [3, H', W']
        return (x - self._mean) / self._std

    def target(self, image_id: int) -> Dict[str, Tensor]:
        """The target dict of one image (boxes normalised (cx, cy, w, h), contiguous labels)."""
        im = self.images[image_id]
        W, H = im["width"], im["height"]
        if im["anns"]:
            xyxy = torch.tensor([b for _, _, b in im["anns"]], dtype=torch.float64)          # [n, 4] pixels
            boxes = torch.stack([(xyxy[:, 0] + xyxy[:, 2]) / 2 / W, (xyxy[:, 1] + xyxy[:, 3]) / 2 / H,
                                 (xyxy[:, 2] - xyxy[:, 0]) / W, (xyxy[:, 3] - xyxy[:, 1]) / H], dim=-1)
            boxes = boxes.clamp(0.0, 1.0).to(torch.float32)
        else:
            boxes = torch.zeros(0, 4, dtype=torch.float32)
        return {
            "boxes": boxes,
            "labels": torch.tensor([lab for _, lab, _ in im["anns"]], dtype=torch.long),
            "image_id": torch.tensor(image_id, dtype=torch.long),
            "orig_size": torch.tensor([H, W], dtype=torch.long),
            "size": torch.tensor(self.resized_size(H, W), dtype=torch.long),
            "ann_ids": torch.tensor([a if isinstance(a, int) else -1 for a, _, _ in im["anns"]], dtype=torch.long),
        }

    def __getitem__(self, index: int) -> Tuple[Tensor, Dict[str, Tensor]]:
        image_id = self.ids[index]
        return self.load_image(image_id), self.target(image_id)


# ---- batching ---------------------------------------------------------------------------------------------------

def collate(batch: Sequence[Tuple[Tensor, Dict[str, Tensor]]], size_divisibility: int = 1
            ) -> Tuple[Tensor, Tensor, List[Dict[str, Tensor]]]:
    """Pad images to the batch's largest height and width (rounded up to ``size_divisibility``).

    Returns ``(images [B, C, Hmax, Wmax], mask bool [B, Hmax, Wmax], targets)``; images are padded with zeros at the
    bottom and right, ``mask`` is True on real pixels. Boxes stay normalised by each image's own size, as in DETR.
    """
    if len(batch) == 0:
        raise ValueError("collate needs at least one item")
    images = [b[0] for b in batch]
    if any(x.ndim != 3 or x.shape[0] != images[0].shape[0] for x in images):
        raise ValueError(f"collate expects images [C, H, W] with the same C, got "
                         f"{[tuple(x.shape) for x in images]}")
    d = max(1, int(size_divisibility))
    hmax = -(-max(x.shape[1] for x in images) // d) * d
    wmax = -(-max(x.shape[2] for x in images) // d) * d
    out = images[0].new_zeros(len(images), images[0].shape[0], hmax, wmax)
    mask = torch.zeros(len(images), hmax, wmax, dtype=torch.bool)
    for i, x in enumerate(images):
        out[i, :, :x.shape[1], :x.shape[2]] = x
        mask[i, :x.shape[1], :x.shape[2]] = True
    return out, mask, [b[1] for b in batch]
