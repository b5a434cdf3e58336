"""Document data model: words with boxes on pages, entities and links, a stated reading order.

Coordinates::

    box_px  (x0, y0, x1, y1)  page units (PDF points for PDFs, pixels for scanned forms), origin top-left,
                              x0 <= x1 and y0 <= y1
    box     (x0, y0, x1, y1)  ints in 0..1000: ``int(1000 * x / width)``, ``int(1000 * y / height)`` (LayoutLM's
                              normalisation, ``REFERENCES.md`` section 9); what ``Positions.boxes`` carries

Reading order ("lines-ltr", the only serialisation used here): words are grouped into lines by their vertical
centres (a word joins a line when its centre is within half the smaller of the two heights of the line's centre),
lines go top to bottom by mean centre, words within a line left to right by ``x0``. Columns are not detected:
a two-column page reads across both columns line by line. ``Word.line`` is the line index and ``Word.order`` the
word's index in that order (0-based); ``Page.order_words()`` applies it.

Bad input (``LayoutPolicy``; every skip is counted in the ``skipped`` Counter passed along, usually
``Document.skipped``)::

    box          "clamp" (default)  coordinates outside the page are clamped to it, swapped corners are sorted
                 "error"            DocumentFormatError naming the file, page and word
                 "drop"             the word is skipped (reason "box_out_of_range")
    missing_box  "error" (default) / "drop"  a word without a box (None) or with a malformed one (not 4 finite
                                            numbers; strings and booleans are not numbers); reason "missing_box"
    empty_word   "drop" (default) / "error" / "keep"  a word whose text is empty or blank; reason "empty_word"
    empty_page   "keep" (default) / "drop" / "error"  a page with no words left; reason "empty_page"
    dangling_link "error" (default) / "drop"  a link naming an id that does not exist; reason "dangling_link"

A page size (width, height) must be two positive finite numbers. All errors are ``DocumentFormatError`` (a
``zoo.errors.ZooError`` and a ``ValueError``); messages start with ``<source> page <n>`` and name the item.
"""
from __future__ import annotations

import math
from collections import Counter
from dataclasses import dataclass, field
from typing import Callable, Dict, Iterable, Iterator, List, Optional, Sequence, Tuple

import numpy as np

from zoo.errors import ZooError

__all__ = [
    "DocumentFormatError", "LayoutPolicy", "Word", "Entity", "Page", "Document",
    "normalize_box", "check_box", "check_page_size", "make_words", "reading_order", "SERIALISATION",
]

Box = Tuple[float, float, float, float]
IntBox = Tuple[int, int, int, int]
SERIALISATION = "lines-ltr"


class DocumentFormatError(ZooError, ValueError):
    """Malformed or policy-violating document input; the message names the file, page and item."""


def _check_choice(name: str, value: str, choices: Sequence[str]) -> str:
    if value not in choices:
        raise ValueError(f"LayoutPolicy.{name}={value!r}; expected one of {list(choices)}")
    return value


@dataclass(frozen=True)
class LayoutPolicy:
    """What to do with out-of-range / missing boxes, empty words, empty pages and dangling links."""
    box: str = "clamp"
    missing_box: str = "error"
    empty_word: str = "drop"
    empty_page: str = "keep"
    dangling_link: str = "error"

    def __post_init__(self):
        _check_choice("box", self.box, ("clamp", "error", "drop"))
        _check_choice("missing_box", self.missing_box, ("error", "drop"))
        _check_choice("empty_word", self.empty_word, ("drop", "error", "keep"))
        _check_choice("empty_page", self.empty_page, ("keep", "drop", "error"))
        _check_choice("dangling_link", self.dangling_link, ("error", "drop"))

    @classmethod
    def coerce(cls, policy) -> "LayoutPolicy":
        if policy is None:
            return cls()
        if isinstance(policy, cls):
            return policy
        if isinstance(policy, dict):
            return cls(**policy)
        raise TypeError(f"policy must be a LayoutPolicy, a dict or None, got {type(policy).__name__}")


@dataclass
class Word:
    """One word. ``id`` is unique within its page; ``entity`` the id of the form entity it belongs to (FUNSD)."""
    text: str
    box_px: Box
    box: IntBox
    label: Optional[str] = None
    id: Optional[int] = None
    font: Optional[str] = None
    size: Optional[float] = None
    line: Optional[int] = None
    order: Optional[int] = None
    entity: Optional[int] = None


@dataclass
class Entity:
    """A labelled group of words (a FUNSD/XFUND form field): ``word_ids`` index ``Page.words`` by ``Word.id``."""
    id: int
    text: str
    box_px: Box
    box: IntBox
    label: Optional[str] = None
    word_ids: List[int] = field(default_factory=list)


@dataclass
class Page:
    """A page: words (in reading order once ``order_words`` ran), page size in the units of ``box_px``.

    ``links`` are ``(a, b)`` pairs of entity ids (FUNSD "linking", question -> answer). ``image`` is an RGB uint8
    array ``[H, W, 3]`` when rendered eagerly; ``image_loader`` renders it on first ``get_image()`` and caches it.
    """
    words: List[Word]
    width: float
    height: float
    number: int = 1
    source: str = "<memory>"
    entities: List[Entity] = field(default_factory=list)
    links: List[Tuple[int, int]] = field(default_factory=list)
    image: Optional[np.ndarray] = None
    image_loader: Optional[Callable[[], np.ndarray]] = field(default=None, repr=False)
    body_size: Optional[float] = None

    @property
    def where(self) -> str:
        return f"{self.source} page {self.number}"

    def __len__(self) -> int:
        return len(self.words)

    def get_image(self) -> Optional[np.ndarray]:
        """The page image (uint8 ``[H, W, 3]``), rendered on first use when a loader was attached."""
        if self.image is None and self.image_loader is not None:
            self.image = self.image_loader()
        return self.image

    @property
    def texts(self) -> List[str]:
        return [w.text for w in self.words]

    @property
    def boxes(self) -> np.ndarray:
        """Normalised boxes as an int64 array ``[n, 4]`` (0..1000)."""
        return np.asarray([w.box for w in self.words], dtype=np.int64).reshape(-1, 4)

    @property
    def labels(self) -> List[Optional[str]]:
        return [w.label for w in self.words]

    def order_words(self) -> "Page":
        """Sort ``words`` into reading order (``reading_order``) and set ``Word.line`` / ``Word.order``."""
        order, lines = reading_order([w.box_px for w in self.words])
        self.words = [self.words[i] for i in order]
        for k, w in enumerate(self.words):
            w.order, w.line = k, lines[k]
        return self

    def entity_by_id(self) -> Dict[int, Entity]:
        return {e.id: e for e in self.entities}

    def check_links(self, policy: Optional[LayoutPolicy] = None, skipped: Optional[Counter] = None) -> "Page":
        """Validate ``links`` against entity ids: dangling ones raise or are dropped (counted), duplicates merge."""
        policy = LayoutPolicy.coerce(policy)
        ids = {e.id for e in self.entities}
        kept, seen = [], set()
        for a, b in self.links:
            missing = [x for x in (a, b) if x not in ids]
            if missing:
                if policy.dangling_link == "error":
                    raise DocumentFormatError(f"{self.where}: link ({a}, {b}) names entity id {missing[0]}, which "
                                              f"does not exist (entity ids: {sorted(ids)[:20]})")
                if skipped is not None:
                    skipped["dangling_link"] += 1
                continue
            if (a, b) not in seen:
                seen.add((a, b))
                kept.append((a, b))
        self.links = kept
        return self


@dataclass
class Document:
    """Pages of one source file; ``skipped`` counts what the layout policy dropped while loading."""
    pages: List[Page]
    source: str = "<memory>"
    skipped: Counter = field(default_factory=Counter)
    num_pages: Optional[int] = None  # pages in the file (may exceed len(pages) when a range was read)

    def __len__(self) -> int:
        return len(self.pages)

    def __iter__(self) -> Iterator[Page]:
        return iter(self.pages)

    def __getitem__(self, i: int) -> Page:
        return self.pages[i]

    @property
    def num_words(self) -> int:
        return sum(len(p.words) for p in self.pages)

    def label_counts(self) -> Counter:
        return Counter(w.label for p in self.pages for w in p.words)


# ---------------------------------------------------------------------------------------------------------------
# Boxes
# ---------------------------------------------------------------------------------------------------------------

def _as_box(box, where: str) -> Optional[Box]:
    """4 finite floats, or None when the box is missing / malformed (strings and booleans are not numbers here)."""
    if box is None or isinstance(box, (str, bytes)):
        return None
    try:
        if any(isinstance(v, (str, bytes, bool, np.bool_)) for v in box):
            return None
        vals = [float(v) for v in box]
    except (TypeError, ValueError, OverflowError):
        return None
    if len(vals) != 4 or not all(math.isfinite(v) for v in vals):
        return None
    return (vals[0], vals[1], vals[2], vals[3])


def check_page_size(width, height, where: str, what: str = "page") -> Tuple[float, float]:
    """``(width, height)`` as floats; anything but two positive finite numbers raises ``DocumentFormatError``."""
    ok = all(not isinstance(v, (str, bytes, bool, np.bool_)) for v in (width, height))
    try:
        w, h = float(width), float(height)
    except (TypeError, ValueError, OverflowError):
        ok = False
    if not (ok and math.isfinite(w) and math.isfinite(h) and w > 0 and h > 0):
        raise DocumentFormatError(f"{where}: {what} size must be positive and finite numbers, got "
                                  f"{width!r} x {height!r}")
    return w, h


def check_box(box_px, width: float, height: float, *, policy: str = "clamp", where: str = "") -> Optional[Box]:
    """Validate a page-unit box against a ``width`` x ``height`` page.

    Returns the (possibly clamped/sorted) box, or None when ``policy="drop"`` rejects it. Raises
    ``DocumentFormatError`` for malformed boxes (not 4 finite numbers) and, with ``policy="error"``, for boxes
    outside the page or with swapped corners."""
    _check_choice("box", policy, ("clamp", "error", "drop"))
    width, height = check_page_size(width, height, where)
    b = _as_box(box_px, where)
    if b is None:
        raise DocumentFormatError(f"{where}: box {box_px!r} is not 4 finite numbers (x0, y0, x1, y1)")
    x0, y0, x1, y1 = b
    swapped = x0 > x1 or y0 > y1
    outside = min(x0, x1, y0, y1) < 0 or max(x0, x1) > width or max(y0, y1) > height
    if not (swapped or outside):
        return b
    if policy == "error":
        why = "has x0 > x1 or y0 > y1" if swapped else f"lies outside the {width:g}x{height:g} page"
        raise DocumentFormatError(f"{where}: box {list(box_px)} {why}")
    if policy == "drop":
        return None
    x0, x1 = sorted((min(max(x0, 0.0), width), min(max(x1, 0.0), width)))
    y0, y1 = sorted((min(max(y0, 0.0), height), min(max(y1, 0.0), height)))
    return (x0, y0, x1, y1)


def normalize_box(box_px: Box, width: float, height: float) -> IntBox:
    """LayoutLM's normalisation ``int(1000 * x / W)``, ``int(1000 * y / H)`` of a box already inside the page,
    clipped to 0..1000 against float round-off."""
    x0, y0, x1, y1 = box_px
    f = lambda v, s: min(1000, max(0, int(1000 * v / s)))  # noqa: E731
    return (f(x0, width), f(y0, height), f(x1, width), f(y1, height))


def make_words(texts: Sequence[str], boxes: Sequence, width: float, height: float, *,
               labels: Optional[Sequence[Optional[str]]] = None, fonts: Optional[Sequence[Optional[str]]] = None,
               sizes: Optional[Sequence[Optional[float]]] = None, policy=None, skipped: Optional[Counter] = None,
               where: str = "<memory> page 1", first_id: int = 0) -> List[Word]:
    """Build ``Word``s from parallel lists, applying ``policy``. Ids count from ``first_id`` over kept words.

    Lengths must match (a mismatch is always an error: pairing words with the wrong boxes is never safe)."""
    policy = LayoutPolicy.coerce(policy)
    skipped = skipped if skipped is not None else Counter()
    n = len(texts)
    for name, seq in (("boxes", boxes), ("labels", labels), ("fonts", fonts), ("sizes", sizes)):
        if seq is not None and len(seq) != n:
            raise DocumentFormatError(f"{where}: {n} words but {len(seq)} {name}")
    width, height = check_page_size(width, height, where)
    words: List[Word] = []
    for i, text in enumerate(texts):
        item = f"{where} word {i} ({str(text)[:30]!r})"
        if text is None or not str(text).strip():
            if policy.empty_word == "error":
                raise DocumentFormatError(f"{item}: empty text")
            if policy.empty_word == "drop":
                skipped["empty_word"] += 1
                continue
        raw = boxes[i]
        if _as_box(raw, item) is None:
            if policy.missing_box == "error":
                why = "has no box" if raw is None else f"has a malformed box {raw!r} (need 4 finite numbers)"
                raise DocumentFormatError(f"{item} {why}")
            skipped["missing_box"] += 1
            continue
        b = check_box(raw, width, height, policy=policy.box, where=item)
        if b is None:
            skipped["box_out_of_range"] += 1
            continue
        words.append(Word(text="" if text is None else str(text), box_px=b, box=normalize_box(b, width, height),
                          label=labels[i] if labels is not None else None, id=first_id + len(words),
                          font=fonts[i] if fonts is not None else None,
                          size=float(sizes[i]) if sizes is not None and sizes[i] is not None else None))
    return words


# ---------------------------------------------------------------------------------------------------------------
# Reading order
# ---------------------------------------------------------------------------------------------------------------

def reading_order(boxes: Iterable[Box]) -> Tuple[List[int], List[int]]:
    """The "lines-ltr" serialisation of boxes ``(x0, y0, x1, y1)`` (origin top-left).

    Returns ``(order, lines)``: ``order[k]`` is the index of the k-th word in reading order and ``lines[k]`` its
    line index (non-decreasing). Ties are broken by the input index, so the result is deterministic."""
    bs = [tuple(map(float, b)) for b in boxes]
    if not bs:
        return [], []
    cy = [(b[1] + b[3]) / 2 for b in bs]
    h = [max(b[3] - b[1], 1e-6) for b in bs]
    by_centre = sorted(range(len(bs)), key=lambda i: (cy[i], bs[i][0], i))
    groups: List[List[int]] = []
    centre, height = 0.0, 0.0
    for i in by_centre:
        if groups and abs(cy[i] - centre) <= 0.5 * min(h[i], height):
            groups[-1].append(i)
            centre = sum(cy[j] for j in groups[-1]) / len(groups[-1])
            height = float(np.median([h[j] for j in groups[-1]]))
        else:
            groups.append([i])
            centre, height = cy[i], h[i]
    # a line's key is its mean centre; groups are already in that order up to float noise, sort to be sure
    groups.sort(key=lambda g: (sum(cy[j] for j in g) / len(g), min(g)))
    order, lines = [], []
    for li, g in enumerate(groups):
        for i in sorted(g, key=lambda j: (bs[j][0], bs[j][2], j)):
            order.append(i)
            lines.append(li)
    return order, lines
