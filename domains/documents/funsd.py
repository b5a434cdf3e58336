"""FUNSD and XFUND form annotations -> ``Page`` (words, entities, links) and back.

FUNSD (Jaume et al. 2019; one JSON per scanned form, boxes in pixels of ``images/<stem>.png``)::

    {"form": [{"id": 0, "text": "DATE:", "box": [x0, y0, x1, y1], "label": "question",
               "words": [{"text": "DATE:", "box": [x0, y0, x1, y1]}], "linking": [[0, 5]]}, ...]}

XFUND (Xu et al. 2022; one JSON per language and split, image size given)::

    {"lang": "de", "version": "0.1", "split": "val",
     "documents": [{"id": "de_val_0", "img": {"fname": "de_val_0.jpg", "width": 2480, "height": 3508},
                    "document": [<entities exactly as FUNSD's "form" items>]}, ...]}

Entities become ``Entity(id, text, box, label, word_ids)``; their words become ``Word``s with ``entity`` set and
``label`` = the entity's label; ``linking`` pairs (FUNSD lists each pair under both of its entities) become the
page's de-duplicated ``links``. FUNSD has no image size in the JSON: pass ``size=(w, h)``, or the loader reads it
from the header of ``images/<stem>.png`` (or .jpg/.jpeg) beside the ``annotations/`` folder, or ``image_dir``.

Policy (``LayoutPolicy`` from ``domains.documents.document``): boxes as for every page (clamp/error/drop, missing
box); ``dangling_link``: a link naming an entity id that is not in the file raises ``DocumentFormatError`` naming
the file and the entity that holds the link, or is dropped and counted (``skipped["dangling_link"]``). An entity
dropped by the box policy takes its words and links with it (``skipped["entity_box_out_of_range"]``,
``skipped["link_to_dropped_entity"]``). Missing keys, duplicate ids, ids that are not whole numbers (``1.5``, JSON's
``NaN``), labels or word texts that are not strings, non-list ``words`` / ``linking`` and an image size that is not
two positive finite numbers always raise. An empty ``form`` list is a page without words (``empty_page`` policy:
kept by default, or an error). Words come in "lines-ltr" reading order (``order="lines"``) or in file order
(``order="file"``).
"""
from __future__ import annotations

import json
import math
import os
import struct
from collections import Counter
from pathlib import Path
from typing import List, Optional, Sequence, Tuple, Union

from domains.documents.document import (DocumentFormatError, Entity, LayoutPolicy, Page, check_box,
                                        check_page_size, make_words, normalize_box, _as_box)
from zoo.io import atomic_write_text

__all__ = ["FUNSD_LABELS", "image_size", "page_from_entities", "read_funsd", "read_funsd_dir", "read_xfund",
           "to_funsd", "write_funsd", "to_xfund", "write_xfund"]

PathLike = Union[str, os.PathLike]
FUNSD_LABELS = ("header", "question", "answer", "other")
_IMAGE_EXTS = (".png", ".jpg", ".jpeg")


# ---------------------------------------------------------------------------------------------------------------
# Image sizes from file headers (no imaging library needed)
# ---------------------------------------------------------------------------------------------------------------

def image_size(path: PathLike) -> Tuple[int, int]:
    """``(width, height)`` of a PNG or JPEG file read from its header."""
    path = Path(path)
    with open(path, "rb") as f:
        head = f.read(32)
        if head[:8] == b"\x89PNG\r\n\x1a\n" and head[12:16] == b"IHDR" and len(head) >= 24:
            return struct.unpack(">II", head[16:24])
        if head[:2] == b"\xff\xd8":
            f.seek(2)
            while True:
                marker = f.read(2)
                if len(marker) < 2 or marker[0] != 0xFF:
                    break
                while marker[1] == 0xFF:  # fill bytes
                    marker = marker[:1] + f.read(1)
                m = marker[1]
                if m in (0xD8, 0x01) or 0xD0 <= m <= 0xD7:
                    continue
                seg = f.read(2)
                if len(seg) < 2:
                    break
                length = struct.unpack(">H", seg)[0]
                if 0xC0 <= m <= 0xCF and m not in (0xC4, 0xC8, 0xCC):
                    data = f.read(5)
                    if len(data) < 5:
                        break
                    h, w = struct.unpack(">HH", data[1:5])
                    return int(w), int(h)
                f.seek(length - 2, os.SEEK_CUR)
    raise DocumentFormatError(f"{path}: cannot read the image size (not a PNG or JPEG file, or a damaged one)")


def _find_image(json_path: Path, image_dir: Optional[PathLike]) -> Optional[Path]:
    dirs = [Path(image_dir)] if image_dir is not None else [json_path.parent.parent / "images", json_path.parent]
    for d in dirs:
        for ext in _IMAGE_EXTS:
            p = d / (json_path.stem + ext)
            if p.is_file():
                return p
    return None


# ---------------------------------------------------------------------------------------------------------------
# Entities -> Page
# ---------------------------------------------------------------------------------------------------------------

def _int_id(value, where: str) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) \
            or int(value) != value:
        raise DocumentFormatError(f"{where}: id {value!r} is not an integer")
    return int(value)


def page_from_entities(entities: Sequence[dict], width: float, height: float, *, source: str, number: int = 1,
                       policy=None, skipped: Optional[Counter] = None, order: str = "lines") -> Page:
    """A ``Page`` from FUNSD-style entity dicts (the "form" list / an XFUND "document" list)."""
    policy = LayoutPolicy.coerce(policy)
    skipped = skipped if skipped is not None else Counter()
    if order not in ("lines", "file"):
        raise ValueError(f"order={order!r}; expected 'lines' or 'file'")
    where = f"{source} page {number}"
    if not isinstance(entities, list):
        raise DocumentFormatError(f"{where}: expected a list of entities, got {type(entities).__name__}")
    width, height = check_page_size(width, height, where, "image")
    words, ents, raw_links, dropped, ids = [], [], [], set(), set()
    for k, e in enumerate(entities):
        if not isinstance(e, dict):
            raise DocumentFormatError(f"{where} entity #{k}: expected an object, got {type(e).__name__}")
        missing = [key for key in ("id", "box", "words") if key not in e]
        if missing:
            raise DocumentFormatError(f"{where} entity #{k}: missing key(s) {missing}")
        eid = _int_id(e["id"], f"{where} entity #{k}")
        ew = f"{where} entity {eid}"
        if eid in ids:
            raise DocumentFormatError(f"{ew}: duplicate entity id")
        ids.add(eid)
        ws, links = e["words"], e.get("linking", [])
        if not isinstance(ws, list) or not isinstance(links, list):
            raise DocumentFormatError(f"{ew}: 'words' and 'linking' must be lists")
        for pair in links:
            if not isinstance(pair, (list, tuple)) or len(pair) != 2:
                raise DocumentFormatError(f"{ew}: link {pair!r} is not a pair [from, to]")
            raw_links.append((eid, _int_id(pair[0], ew), _int_id(pair[1], ew)))
        if _as_box(e["box"], ew) is None:
            if policy.missing_box == "error":
                raise DocumentFormatError(f"{ew} has a malformed box {e['box']!r} (need 4 finite numbers)")
            skipped["entity_missing_box"] += 1
            dropped.add(eid)
            continue
        box = check_box(e["box"], width, height, policy=policy.box, where=ew)
        if box is None:
            skipped["entity_box_out_of_range"] += 1
            dropped.add(eid)
            continue
        for j, w in enumerate(ws):
            if not isinstance(w, dict) or "text" not in w:
                raise DocumentFormatError(f"{ew} word {j}: expected an object with 'text' and 'box'")
            if w["text"] is not None and not isinstance(w["text"], str):
                raise DocumentFormatError(f"{ew} word {j}: text {w['text']!r} is not a string")
        label = e.get("label")
        if label is not None and not isinstance(label, str):
            raise DocumentFormatError(f"{ew}: label {label!r} is not a string")
        new = make_words([w["text"] for w in ws], [w.get("box") for w in ws], width, height,
                         labels=[label] * len(ws), policy=policy, skipped=skipped, where=ew, first_id=len(words))
        for w in new:
            w.entity = eid
        words.extend(new)
        ents.append(Entity(id=eid, text=str(e.get("text", "")), box_px=box, box=normalize_box(box, width, height),
                           label=label, word_ids=[w.id for w in new]))
    links = []
    for owner, a, b in raw_links:
        gone = [x for x in (a, b) if x not in ids]
        if gone:
            if policy.dangling_link == "error":
                raise DocumentFormatError(f"{where} entity {owner}: link [{a}, {b}] points to entity id {gone[0]}, "
                                          f"which is not in the file")
            skipped["dangling_link"] += 1
            continue
        if a in dropped or b in dropped:
            skipped["link_to_dropped_entity"] += 1
            continue
        links.append((a, b))
    page = Page(words=words, width=float(width), height=float(height), number=number, source=source,
                entities=ents, links=list(dict.fromkeys(links)))
    if order == "lines":
        page.order_words()
    else:
        for k, w in enumerate(page.words):
            w.order = k
    if not page.words:
        if policy.empty_page == "error":
            raise DocumentFormatError(f"{where}: the page has no words")
    return page


def _load_json(path: Path):
    try:
        with open(path, encoding="utf-8") as f:
            return json.load(f)
    except FileNotFoundError:
        raise
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise DocumentFormatError(f"{path}: not valid JSON ({e})") from e


def read_funsd(path: PathLike, *, size: Optional[Tuple[float, float]] = None, image_dir: Optional[PathLike] = None,
               policy=None, skipped: Optional[Counter] = None, order: str = "lines") -> Page:
    """One FUNSD annotation file -> ``Page`` (image size from ``size`` or the image file, see module doc)."""
    path = Path(path)
    data = _load_json(path)
    if not isinstance(data, dict) or "form" not in data:
        raise DocumentFormatError(f"{path}: not a FUNSD annotation (no top-level 'form' list)")
    if size is None:
        img = _find_image(path, image_dir)
        if img is None:
            raise DocumentFormatError(f"{path}: the image size is unknown: no {path.stem}.png/.jpg in "
                                      f"{image_dir or path.parent.parent / 'images'}; pass size=(width, height)")
        size = image_size(img)
    page = page_from_entities(data["form"], size[0], size[1], source=str(path), policy=policy, skipped=skipped,
                              order=order)
    return page


def read_funsd_dir(root: PathLike, *, policy=None, skipped: Optional[Counter] = None, order: str = "lines",
                   limit: Optional[int] = None) -> List[Page]:
    """Every ``annotations/*.json`` under ``root`` (FUNSD's ``training_data`` / ``testing_data`` layout), sorted
    by name, with sizes from ``root/images``."""
    root = Path(root)
    ann = root / "annotations"
    if not ann.is_dir():
        raise FileNotFoundError(f"{root}: no annotations/ folder (expected FUNSD's layout: annotations/*.json and "
                                f"images/*.png)")
    files = sorted(ann.glob("*.json"))[:limit]
    if not files:
        raise DocumentFormatError(f"{ann}: no .json annotation files")
    return [read_funsd(p, image_dir=root / "images", policy=policy, skipped=skipped, order=order) for p in files]


def read_xfund(path: PathLike, *, policy=None, skipped: Optional[Counter] = None, order: str = "lines",
               limit: Optional[int] = None) -> List[Page]:
    """An XFUND file (``documents`` list) -> one ``Page`` per document; ``page.source`` is ``"<file>#<doc id>"``."""
    path = Path(path)
    data = _load_json(path)
    if not isinstance(data, dict) or not isinstance(data.get("documents"), list):
        raise DocumentFormatError(f"{path}: not an XFUND file (no top-level 'documents' list)")
    pages = []
    for k, doc in enumerate(data["documents"][:limit]):
        did = doc.get("id", k) if isinstance(doc, dict) else k
        where = f"{path} document {did!r}"
        if not isinstance(doc, dict) or "document" not in doc:
            raise DocumentFormatError(f"{where}: missing the 'document' entity list")
        img = doc.get("img") or {}
        try:
            w, h = check_page_size(img["width"], img["height"], where)
        except (KeyError, TypeError, DocumentFormatError):
            raise DocumentFormatError(f"{where}: 'img' needs numeric 'width' and 'height' (positive, finite), got "
                                      f"{img!r}") from None
        page = page_from_entities(doc["document"], w, h, source=f"{path}#{did}", policy=policy, skipped=skipped,
                                  order=order)
        pages.append(page)
    return pages


# ---------------------------------------------------------------------------------------------------------------
# Page -> FUNSD / XFUND JSON
# ---------------------------------------------------------------------------------------------------------------

def _num(v: float):
    return int(v) if float(v).is_integer() else float(v)


def _entities_json(page: Page) -> List[dict]:
    by_id = {w.id: w for w in page.words}
    out = []
    for e in page.entities:
        links = [[a, b] for a, b in page.links if e.id in (a, b)]
        out.append({"id": e.id, "text": e.text, "box": [_num(v) for v in e.box_px], "label": e.label,
                    "words": [{"text": by_id[i].text, "box": [_num(v) for v in by_id[i].box_px]}
                              for i in e.word_ids],
                    "linking": links})
    return out


def to_funsd(page: Page) -> dict:
    """The page as a FUNSD annotation dict (pixel boxes; each link listed under both of its entities)."""
    return {"form": _entities_json(page)}


def write_funsd(page: Page, path: PathLike) -> Path:
    """Write ``to_funsd(page)`` atomically (a temporary file renamed over ``path``)."""
    return atomic_write_text(path, json.dumps(to_funsd(page), ensure_ascii=False, indent=1))


def to_xfund(pages: Sequence[Page], *, lang: str = "en", split: str = "train",
             fnames: Optional[Sequence[str]] = None) -> dict:
    docs = []
    for k, p in enumerate(pages):
        did = p.source.rsplit("#", 1)[1] if "#" in p.source else f"{lang}_{split}_{k}"
        fname = fnames[k] if fnames is not None else f"{did}.jpg"
        docs.append({"id": did, "img": {"fname": fname, "width": _num(p.width), "height": _num(p.height)},
                     "document": _entities_json(p)})
    return {"lang": lang, "version": "0.1", "split": split, "documents": docs}


def write_xfund(pages: Sequence[Page], path: PathLike, **kwargs) -> Path:
    return atomic_write_text(path, json.dumps(to_xfund(pages, **kwargs), ensure_ascii=False, indent=1))
