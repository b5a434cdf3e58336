"""COCO-format detection data: the labelme example (3 real images, 12 boxes), batching with a pixel mask, and
malformed annotation files (each error names the file and the annotation or image id)."""
import hashlib
import json
import re
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from domains.vision import coco as C
from zoo.errors import DatasetNotFoundError

pytestmark = pytest.mark.debian_data("labelme-examples")

CARD = Path(__file__).resolve().parents[2] / "datasets" / "labelme_coco.md"


@pytest.fixture(scope="module")
def root():
    return C.labelme_examples_root()


@pytest.fixture
def copy(tmp_path, root):
    """A writable copy of the labelme example: returns (annotations dict, write(ann) -> path)."""
    shutil.copytree(root / "JPEGImages", tmp_path / "JPEGImages")
    ann = json.loads((root / "annotations.json").read_text())

    def write(a):
        p = tmp_path / "annotations.json"
        p.write_text(json.dumps(a))
        return p

    return ann, write


def test_labelme_example_contents(root):
    ds = C.CocoDetection(root / "annotations.json", max_size=128)
    assert len(ds) == 3 and ds.num_boxes == 12 and ds.num_classes == 20      # _background_ is not a class
    assert ds.categories[0] == "aeroplane" and ds.categories[14] == "person"
    assert ds.label_to_cat_id[14] == 15 and ds.cat_id_to_label[15] == 14
    img, t = ds[0]
    assert img.shape == (3, 87, 128) and img.dtype == torch.float32          # 338x500 -> 87x128
    assert t["orig_size"].tolist() == [338, 500] and t["size"].tolist() == [87, 128]
    assert int(t["image_id"]) == 0 and t["ann_ids"].tolist() == [0, 1, 2]
    assert t["labels"].tolist() == [14, 14, 4]                                # person, person, bottle
    # annotation 0: bbox [191, 107, 123, 221] on 500x338 -> cx = 252.5/500, cy = 217.5/338, w, h
    torch.testing.assert_close(t["boxes"][0], torch.tensor([252.5 / 500, 217.5 / 338, 123 / 500, 221 / 338]))
    for i in range(len(ds)):
        _, t = ds[i]
        assert t["boxes"].min() >= 0 and t["boxes"].max() <= 1 and max(t["size"].tolist()) == 128


def test_images_are_resized_and_normalised(root):
    ds = C.CocoDetection(root / "annotations.json", max_size=64)
    img, t = ds[2]
    assert img.shape == (3, 48, 64)                                           # 375x500 -> 48x64
    with Image.open(root / "JPEGImages" / "2011_000006.jpg") as im:
        ref = np.asarray(im.convert("RGB").resize((64, 48), Image.BILINEAR), dtype=np.float32) / 255.0
    mean, std = torch.tensor(C.IMAGENET_MEAN).view(3, 1, 1), torch.tensor(C.IMAGENET_STD).view(3, 1, 1)
    torch.testing.assert_close(img * std + mean, torch.from_numpy(ref).permute(2, 0, 1), atol=1e-6, rtol=0)


def test_collate_pads_and_masks(root):
    ds = C.CocoDetection(root / "annotations.json", max_size=128)
    images, mask, targets = C.collate([ds[0], ds[1]])
    assert images.shape == (2, 3, 96, 128) and mask.shape == (2, 96, 128) and mask.dtype == torch.bool
    assert mask[0, :87].all() and not mask[0, 87:].any() and mask[1].all()
    assert (images[0, :, 87:] == 0).all()
    torch.testing.assert_close(images[0, :, :87], ds[0][0])
    assert [int(t["image_id"]) for t in targets] == [0, 1]
    images, mask, _ = C.collate([ds[0]], size_divisibility=32)
    assert images.shape == (1, 3, 96, 128) and int(mask.sum()) == 87 * 128
    with pytest.raises(ValueError, match="at least one item"):
        C.collate([])


def test_card_checksum_and_counts_match_the_data(root):
    text = CARD.read_text()
    digest = hashlib.sha256((root / "annotations.json").read_bytes()).hexdigest()
    assert digest in text
    assert re.search(r"\b3 images\b", text) and re.search(r"\b12 boxes\b", text)


@pytest.mark.parametrize("mutate,kind,pattern", [
    (lambda a: a["annotations"][4].update(bbox=[10, 10, -5, 20]), "bad_bbox",
     r"annotation id 4 \(image id 1\): bbox \[10, 10, -5, 20\] has a non-positive width"),
    (lambda a: a["annotations"][7].update(bbox=[400, 300, 200, 100]), "bad_bbox",
     r"annotation id 7 \(image id 2\): bbox .* lies outside the 500x375 image"),
    (lambda a: a["annotations"][2].update(bbox=[1, 2, "x", 4]), "bad_bbox",
     r"annotation id 2 \(image id 0\): bbox must be 4 finite numbers"),
    (lambda a: a["annotations"][5].update(category_id=99), "unknown_category",
     r"annotation id 5: category_id 99 is not among the categories"),
    (lambda a: a["annotations"][0].update(category_id=0), "unknown_category",
     r"annotation id 0: category_id 0 is an ignored category"),
    (lambda a: a["annotations"][9].update(image_id=42), "unknown_image",
     r"annotation id 9: image_id 42 is not among the images"),
])
def test_malformed_annotations_raise_or_are_counted(copy, mutate, kind, pattern):
    ann, write = copy
    mutate(ann)
    path = write(ann)
    with pytest.raises(C.CocoFormatError, match=re.escape(str(path)) + ": " + pattern):
        C.CocoDetection(path)
    ds = C.CocoDetection(path, on_invalid="skip")
    assert ds.skipped == {kind: 1} and ds.num_boxes == 11 and len(ds) == 3


def test_box_slightly_outside_is_clipped(copy):
    ann, write = copy
    ann["annotations"][4]["bbox"] = [-0.5, 96.0, 109.0, 188.0]               # within the 1 px tolerance
    ds = C.CocoDetection(write(ann))
    b = ds.target(1)["boxes"][1]
    torch.testing.assert_close(b, torch.tensor([54.25 / 500, 190 / 375, 108.5 / 500, 188 / 375]))


def test_missing_files_and_folders(copy, tmp_path):
    ann, write = copy
    (tmp_path / "JPEGImages" / "2011_000025.jpg").unlink()                    # image id 1
    path = write(ann)
    with pytest.raises(DatasetNotFoundError, match=r"image id 1: file .*2011_000025\.jpg does not exist"):
        C.CocoDetection(path)
    ds = C.CocoDetection(path, on_invalid="skip")
    assert len(ds) == 2 and ds.skipped == {"missing_file": 1, "of_missing_file": 3} and ds.num_boxes == 9
    # not checked up front: the read fails with the same message
    lazy = C.CocoDetection(path, check_files=False)
    with pytest.raises(DatasetNotFoundError, match=r"image id 1: file .*2011_000025\.jpg does not exist"):
        lazy[1]
    with pytest.raises(DatasetNotFoundError, match="nothing.json does not exist"):
        C.CocoDetection(tmp_path / "nothing.json")
    with pytest.raises(DatasetNotFoundError, match="image folder .*nowhere"):
        C.CocoDetection(path, img_dir=tmp_path / "nowhere")


def test_unreadable_json_and_images(copy, tmp_path):
    ann, write = copy
    bad = tmp_path / "broken.json"
    bad.write_text('{"images": [')
    with pytest.raises(C.CocoFormatError, match=r"broken\.json: not valid JSON"):
        C.CocoDetection(bad)
    bad.write_text('{"images": []}')
    with pytest.raises(C.CocoFormatError, match="'images', 'annotations' and 'categories'"):
        C.CocoDetection(bad)
    (tmp_path / "JPEGImages" / "2011_000003.jpg").write_bytes(b"not a jpeg")
    ds = C.CocoDetection(write(ann))
    with pytest.raises(C.CocoFormatError, match=r"image id 0: cannot read .*2011_000003\.jpg"):
        ds[0]
    ann["images"][1]["height"] = 380
    with pytest.raises(C.CocoFormatError, match=r"image id 1: .*2011_000025\.jpg is 500x375 .* say 500x380"):
        C.CocoDetection(write(ann))[1]


def test_labelme_root_missing_says_how_to_install(monkeypatch, tmp_path):
    monkeypatch.setattr(C, "LABELME_COCO_DIR", tmp_path / "absent")
    with pytest.raises(DatasetNotFoundError, match="apt-get install labelme-examples"):
        C.labelme_examples_root()


def test_16bit_png_is_scaled_by_its_bit_depth(copy, tmp_path):
    ann, write = copy
    ramp = np.round(np.linspace(0, 65535, 32 * 48)).astype(np.uint16).reshape(32, 48)
    Image.fromarray(ramp).save(tmp_path / "JPEGImages" / "deep.png")
    ann["images"][0].update(file_name="JPEGImages/deep.png", width=48, height=32)
    ds = C.CocoDetection(write(ann), max_size=48, on_invalid="skip")       # boxes of the 500x338 photo: skipped
    img = ds.load_image(ann["images"][0]["id"])
    mean, std = torch.tensor(C.IMAGENET_MEAN).view(3, 1, 1), torch.tensor(C.IMAGENET_STD).view(3, 1, 1)
    # PNG spec sample-depth scaling to 8 bits: round(v * 255 / 65535); grey -> three equal channels
    want = torch.from_numpy(np.round(ramp / 257.0)).float().div(255).expand(3, -1, -1)
    torch.testing.assert_close(img * std + mean, want, atol=1e-5, rtol=0)


def test_oversized_image_names_the_file_and_the_limit(copy, monkeypatch):
    ann, write = copy
    ds = C.CocoDetection(write(ann))
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 10_000)                  # 500x338 is over twice that
    with pytest.raises(C.CocoFormatError,
                       match=r"image id 0: cannot read .*2011_000003\.jpg.*MAX_IMAGE_PIXELS = 10000"):
        ds[0]


@pytest.mark.parametrize("mutate,pattern", [
    (lambda a: a["annotations"][3].update(image_id=[1]), r"annotation id 3: image_id \[1\] is not"),
    (lambda a: a["annotations"][3].update(category_id={"id": 15}), r"annotation id 3: category_id \{'id': 15\} is not"),
    (lambda a: a["annotations"][3].pop("category_id"), r"annotation id 3: category_id None is not"),
])
def test_ids_of_another_type_are_named(copy, mutate, pattern):
    ann, write = copy
    mutate(ann)
    path = write(ann)
    with pytest.raises(C.CocoFormatError, match=re.escape(str(path)) + ": " + pattern):
        C.CocoDetection(path)


@pytest.mark.parametrize("name", ["../outside.jpg", "JPEGImages/../../outside.jpg", "/etc/hostname"])
def test_file_names_outside_the_image_folder_are_refused(copy, tmp_path, name):
    ann, write = copy
    ann["images"][1]["file_name"] = name
    path = write(ann)
    with pytest.raises(C.CocoFormatError, match=r"image id 1: file_name '.*' leaves the image folder"):
        C.CocoDetection(path, check_files=False)
