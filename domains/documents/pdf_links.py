"""Link annotations of born-digital PDFs -> entity-linking pages: key (entry text) -> value (page number).

The R manuals (Debian r-doc-pdf, card ``datasets/r_manuals_pdf.md``) carry hyperlink annotations made by pdfTeX: on
table-of-contents pages and index pages ("entry ....... 23, 45") each annotation rectangle covers one PAGE NUMBER
of a line and jumps to that page (an internal ``/GoTo`` action). The entry text left of the number is what the
number belongs to: a key -> value structure like FUNSD's question -> answer, whose ground truth (which words are
link targets) is the PDF's own annotations::

    ex = extract_links("R-lang.pdf")                     # every page with >= 1 link, cached per file
    ex.pages[0].entities, ex.pages[0].links, ex.splits[0]
    by_split = r_manual_link_pages(manuals=["R-lang", "refman"])      # {"train": [Page], "val": [...], "test": [...]}
    crops = link_windows(ex.pages[0], max_words=64)      # blocks of lines, boxes 0..1000 over each block

Rule (``link_entities``), per page; words and boxes are those of ``domains.documents.pdf.PdfReader`` (pdfplumber,
PDF points, origin top-left: the same frame as pdfplumber's annotation ``x0, top, x1, bottom``):

    internal link    an annotation of subtype /Link whose action is /GoTo (or that has a /Dest); URI and GoToR
                     (other file) links are counted as ``external_link`` and not used
    covered word     a word covered by internal links: more than half of the word's box area lies inside link
                     rectangles (``COVER``); it belongs to the link covering most of it (refman's ranges
                     "1037-1040" are one word under two links: the second is counted as ``link_shares_a_word``)
    value            the covered words of one link when every one of them is a page number (``\\d+``, a range
                     ``\\d+-\\d+`` with a hyphen or en dash, an optional trailing ``,`` ``.`` or ``;``) on one line;
                     a link covering other words is a body-text cross-reference (texinfo "See Section 3.2 [Foo],
                     page 12", Rd "See Also" links): counted as ``cross_reference`` and not used -- the link text
                     points to a section, there is no key -> value pair in the text; a link covering no word is
                     counted as ``link_covers_no_word``
    key              the words of the same line (and column) left of a value, back to the previous value on that
                     line or the line start, without leader words (". . ." and bullets, ``pdf._is_leader``) and
                     without a final "," or ";"; several values on a line share the key ("assignment . . . 5, 11,
                     12"): punctuation-only words between two values are separators, not a new key (refman sets
                     the commas in another font than the italic numbers, so they are words of their own)
    continuation     a line whose first value has no words before it continues the previous entry: its values
                     link to the last key of the page in column order (refman's index wraps long page lists);
                     with no key before it on the page it is counted as ``value_without_key``
    columns          a page is two-column when some value ends left of the page middle (the indexes: numbers at
                     the end of each column); its words then belong to the left or right column by their centre,
                     and lines are read column by column (left column top to bottom, then the right one)

Each key and each value is one ``Entity`` (labels ``KEY_LABEL`` = "question", ``VALUE_LABEL`` = "answer": FUNSD's
names, so the FUNSD BIO tags and the entity-linking task apply unchanged); ``Page.links`` are (key id, value id);
words outside entities have no label. Leader words are dropped from the page (they are typesetting fill: 83-95 %
of the words of the guides' TOC and index pages and of refman's contents) and the remaining words keep their
reading order. Pages without a link give no
page. A key's text wrapped over two lines keeps only its last line.

Speed: pdfplumber reads every page's annotations (refman's 2,415 pages: ~6 s) and PDFium (``get_text_bounded``)
the text inside each internal link: links with other text than page numbers are counted as ``cross_reference``
there, without reading the page's words, and words are extracted (~0.2 s a page) only for the pages with a
page-number link -- the TOC and index pages (refman: 110 of its 2,015 pages with internal links). Results are cached
per file under ``$ZOO_HOME/documents`` (JSON keyed by the file's sha256 and ``CACHE_FORMAT``, written atomically,
rebuilt when unreadable).

Split: ``domains.documents.data.split_of_page`` of the page's word texts in reading order BEFORE leaders are
dropped, i.e. a page falls in the same split as in the word-labelling data.

Crops (``link_windows``; the entity_linking task cuts every page into crops of at most ``data.seq_len`` words):
blocks of whole lines of one column, each a ``Page`` of its own whose boxes span 0..1000 over the block, with
the links inside it (links cut by a block boundary are counted as ``link_across_windows``). A whole index page
has ~300 entities (~90,000 ordered pairs, 0.3 % of them links) and its lines are 1.5 % of the page height
apart; on whole pages the tiny LayoutLM + link head stayed at link F1 0 for 5 epochs, on 64-word crops it
learns (config ``configs/documents/doc_layoutlm_tiny_rmanuals_linking.yaml``).

Errors name the file and page (``PdfError`` for an unreadable file or page); a PDF without annotations gives no
pages; odd annotations (no rectangle, covering no word) are counted in ``skipped``, never raised.
"""
from __future__ import annotations

import json
import math
import os
import re
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Dict, Iterable, List, Optional, Sequence, Tuple, Union

import numpy as np

from domains.documents.document import Entity, Page, Word, normalize_box
from domains.documents.pdf import PdfError, _is_leader, _is_punct

__all__ = ["KEY_LABEL", "VALUE_LABEL", "COVER", "CACHE_FORMAT", "LinkRect", "LinkExtraction", "is_page_number",
           "page_links", "coverage", "link_entities", "link_windows", "extract_links", "r_manual_link_pages"]

PathLike = Union[str, os.PathLike]
KEY_LABEL, VALUE_LABEL = "question", "answer"
COVER = 0.5
CACHE_FORMAT = 1
_PAGE_NUMBER = re.compile(r"^\d+(?:[-\u2013]\d+)?[,.;]?$")
_NUMERIC = re.compile(r"^[-\u2013,.;]*\d[\d\-\u2013,.;]*$")


def is_page_number(text: str) -> bool:
    """A page-number word: digits, or a range with a hyphen / en dash, with an optional trailing , . or ;"""
    return bool(_PAGE_NUMBER.match(text))


@dataclass(frozen=True)
class LinkRect:
    """An internal link's rectangle in pdfplumber's frame (points, origin top-left) and its raw PDF ``Rect``."""
    x0: float
    top: float
    x1: float
    bottom: float
    pdf_rect: Tuple[float, float, float, float]

    @property
    def box(self) -> Tuple[float, float, float, float]:
        return (self.x0, self.top, self.x1, self.bottom)


# ---------------------------------------------------------------------------------------------------------------
# Annotations
# ---------------------------------------------------------------------------------------------------------------

def _name(value) -> str:
    """A PDF name (pdfminer ``PSLiteral``) or string as plain text: ``/'GoTo'`` -> ``"GoTo"``."""
    name = getattr(value, "name", value)
    if isinstance(name, bytes):
        name = name.decode("latin-1")
    return str(name).lstrip("/")


def _resolved(value):
    try:
        from pdfminer.pdftypes import resolve1
        return resolve1(value)
    except Exception:  # a broken reference: treat as missing
        return None


def page_links(plumber_page, skipped: Optional[Counter] = None) -> List[LinkRect]:
    """The internal links (``/GoTo`` action or ``/Dest``) of a pdfplumber page; other annotations are counted in
    ``skipped``: ``external_link`` (URI, GoToR, Launch, ...), ``malformed_annotation`` (no finite rectangle)."""
    skipped = skipped if skipped is not None else Counter()
    out = []
    for a in plumber_page.annots:
        data = a.get("data") or {}
        if _name(_resolved(data.get("Subtype"))) != "Link":
            continue
        action = _resolved(data.get("A"))
        internal = (isinstance(action, dict) and _name(_resolved(action.get("S"))) == "GoTo") or \
            (action is None and data.get("Dest") is not None)
        if not internal:
            skipped["external_link"] += 1
            continue
        try:
            box = [float(a[k]) for k in ("x0", "top", "x1", "bottom")]
            raw = [float(v) for v in _resolved(data.get("Rect"))]
        except (KeyError, TypeError, ValueError):
            skipped["malformed_annotation"] += 1
            continue
        if len(raw) != 4 or not all(math.isfinite(v) for v in box + raw):
            skipped["malformed_annotation"] += 1
            continue
        x0, x1 = sorted(box[0::2])
        top, bottom = sorted(box[1::2])
        out.append(LinkRect(x0, top, x1, bottom, (min(raw[0], raw[2]), min(raw[1], raw[3]),
                                                   max(raw[0], raw[2]), max(raw[1], raw[3]))))
    return out


def coverage(boxes: np.ndarray, rects: np.ndarray) -> np.ndarray:
    """``[w, 4]`` word boxes and ``[a, 4]`` rectangles (x0, y0, x1, y1) -> ``[w, a]``: the fraction of each word's
    box area inside each rectangle (0 for a word of zero area)."""
    b, r = boxes[:, None, :], rects[None, :, :]
    ix = np.clip(np.minimum(b[..., 2], r[..., 2]) - np.maximum(b[..., 0], r[..., 0]), 0, None)
    iy = np.clip(np.minimum(b[..., 3], r[..., 3]) - np.maximum(b[..., 1], r[..., 1]), 0, None)
    area = (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])
    return np.where(area[:, None] > 0, ix * iy / np.maximum(area[:, None], 1e-12), 0.0)


# ---------------------------------------------------------------------------------------------------------------
# Words + links -> key / value entities
# ---------------------------------------------------------------------------------------------------------------

def _union(words: Sequence[Word]) -> Tuple[float, float, float, float]:
    return (min(w.box_px[0] for w in words), min(w.box_px[1] for w in words),
            max(w.box_px[2] for w in words), max(w.box_px[3] for w in words))


def _segments(words: Sequence[Word], width: float, value_ends: Iterable[float]) -> Dict[Tuple[int, int], List[int]]:
    """Word indices by ``(column, line)``: two columns split at the page middle when a value ends left of it."""
    mid = width / 2
    two_columns = any(x1 < mid for x1 in value_ends)
    segments: Dict[Tuple[int, int], List[int]] = {}
    for i, w in enumerate(words):                                  # words are in reading order: x0 within a line
        col = int(two_columns and (w.box_px[0] + w.box_px[2]) / 2 >= mid)
        segments.setdefault((col, w.line), []).append(i)
    return segments


def link_entities(page: Page, rects: Sequence, skipped: Optional[Counter] = None,
                  stats: Optional[Counter] = None) -> Optional[Page]:
    """The key -> value entities and links of ``page`` given its internal-link rectangles (``LinkRect`` or
    ``(x0, top, x1, bottom)`` in the words' ``box_px`` frame); rule in the module docstring. Returns a new
    ``Page`` (leader words dropped, entities and links set, word labels ``KEY_LABEL`` / ``VALUE_LABEL`` / None),
    or None when no link is found. ``skipped`` counts the links not used, by reason; ``stats`` the values linked
    across lines (``continued_values``)."""
    skipped = skipped if skipped is not None else Counter()
    stats = stats if stats is not None else Counter()
    if any(w.line is None for w in page.words):
        page.order_words()
    words = page.words
    boxes = np.asarray([getattr(r, "box", r) for r in rects], dtype=np.float64).reshape(-1, 4)
    if not len(words) or not len(boxes):
        skipped["link_covers_no_word"] += len(boxes)
        return None
    cov = coverage(np.asarray([w.box_px for w in words], dtype=np.float64), boxes)
    best = cov.argmax(1)
    covered = cov.sum(1) > COVER                                   # links of a page do not overlap
    groups: List[List[int]] = []
    for a in range(len(boxes)):
        idx = np.flatnonzero(covered & (best == a)).tolist()
        if not idx:
            shares = bool((covered & (cov[:, a] > 0)).any())
            skipped["link_shares_a_word" if shares else "link_covers_no_word"] += 1
        elif not all(is_page_number(words[i].text) for i in idx):
            skipped["cross_reference"] += 1
        elif len({words[i].line for i in idx}) > 1:
            skipped["value_on_several_lines"] += 1
        else:
            groups.append(idx)
    if not groups:
        return None
    group_of = {i: g for g, idx in enumerate(groups) for i in idx}
    segments = _segments(words, page.width, [max(words[i].box_px[2] for i in idx) for idx in groups])
    members: List[Tuple[str, List[int]]] = []                      # (label, word indices) per entity
    links: List[Tuple[int, int]] = []
    last_key: Optional[int] = None
    for seg in sorted(segments):
        pending: List[int] = []
        line_key: Optional[int] = None
        continued = False
        done = set()
        for i in segments[seg]:
            g = group_of.get(i)
            if g is None:
                if not _is_leader(words[i].text):
                    pending.append(i)
                continue
            if g in done:
                continue
            done.add(g)
            if pending and line_key is not None and all(_is_punct(words[i].text) for i in pending):
                pending = []                                       # ", " between two values of one entry
            if pending:
                while len(pending) > 1 and words[pending[-1]].text in (",", ";"):
                    pending.pop()                                  # the separator before the first value
                members.append((KEY_LABEL, pending))
                key, pending = len(members) - 1, []
            elif line_key is not None:
                key = line_key
            elif last_key is not None:
                key, continued = last_key, True                    # a continuation line
            else:
                skipped["value_without_key"] += 1
                continue
            stats["continued_values"] += int(continued)
            members.append((VALUE_LABEL, groups[g]))
            links.append((key, len(members) - 1))
            line_key = last_key = key
    if not links:
        return None
    entity_of = {i: e for e, (_, idx) in enumerate(members) for i in idx}
    keep = [i for i, w in enumerate(words) if i in entity_of or not _is_leader(w.text)]
    new_id = {i: k for k, i in enumerate(keep)}
    new_words = []
    for k, i in enumerate(keep):
        w = words[i]
        e = entity_of.get(i)
        new_words.append(Word(text=w.text, box_px=w.box_px, box=w.box, label=None if e is None else members[e][0],
                              id=k, font=w.font, size=w.size, line=w.line, order=k, entity=e))
    entities = []
    for e, (label, idx) in enumerate(members):
        ws = [words[i] for i in idx]
        box = _union(ws)
        entities.append(Entity(id=e, text=" ".join(w.text for w in ws), box_px=box,
                               box=normalize_box(box, page.width, page.height), label=label,
                               word_ids=[new_id[i] for i in idx]))
    return Page(words=new_words, width=page.width, height=page.height, number=page.number, source=page.source,
                entities=entities, links=links, body_size=page.body_size)


def link_windows(page: Page, max_words: int, skipped: Optional[Counter] = None) -> List[Page]:
    """Cut a link page (``link_entities``' output) into crops: blocks of whole lines of one column, in column
    order, of at most ``max_words`` words each (a single longer line makes a block of its own; a new column starts
    a new block; when a continuation line does not fit, the block is cut before its entry's key line if the entry
    fits in the next block). Each crop is a ``Page`` of the block's bounding box (``width`` / ``height`` = the
    box, word and entity ``box_px`` relative to its top-left corner, so ``box`` spans 0..1000 over the block), with
    the entities inside it and the links between them; links cut by a block boundary are counted as
    ``link_across_windows``, crops without a link are left out."""
    if isinstance(max_words, bool) or not isinstance(max_words, int) or max_words < 1:
        raise ValueError(f"max_words must be a positive int, got {max_words!r}")
    skipped = skipped if skipped is not None else Counter()
    words = page.words
    segments = _segments(words, page.width, [e.box_px[2] for e in page.entities if e.label == VALUE_LABEL])
    seg_of_entity = {words[i].entity: seg for seg, idx in segments.items() for i in idx}
    continues = {seg_of_entity[b] for a, b in page.links if seg_of_entity[a] != seg_of_entity[b]}
    blocks: List[List[Tuple[int, int]]] = []                       # segments per block
    size = lambda segs: sum(len(segments[x]) for x in segs)      # noqa: E731
    for seg in sorted(segments):
        n = len(segments[seg])
        if blocks and blocks[-1][-1][0] == seg[0] and size(blocks[-1]) + n <= max_words:
            blocks[-1].append(seg)
            continue
        if blocks and blocks[-1][-1][0] == seg[0] and seg in continues:
            # keep an entry whose page list wraps in one block: move it (from its key line) to the new block
            cur = blocks[-1]
            k = max((j for j in range(1, len(cur)) if cur[j] not in continues), default=None)
            if k is not None and size(cur[k:]) + n <= max_words:
                blocks[-1], tail = cur[:k], cur[k:]
                blocks.append(tail + [seg])
                continue
        blocks.append([seg])
    blocks = [[i for seg in b for i in segments[seg]] for b in blocks]
    entity_of_word = {w.id: w.entity for w in words}
    kept_links = 0
    out = []
    for block in blocks:
        idx = sorted(block)
        ws = [words[i] for i in idx]
        inside = {entity_of_word[w.id] for w in ws} - {None}
        links = [(a, b) for a, b in page.links if a in inside and b in inside]
        if not links:
            continue
        kept_links += len(links)
        x0, y0, x1, y1 = _union(ws)
        cw, ch = max(x1 - x0, 1e-6), max(y1 - y0, 1e-6)
        shift = lambda b: (b[0] - x0, b[1] - y0, b[2] - x0, b[3] - y0)  # noqa: E731
        new_id = {w.id: k for k, w in enumerate(ws)}
        new_words = [Word(text=w.text, box_px=shift(w.box_px), box=normalize_box(shift(w.box_px), cw, ch),
                          label=w.label, id=k, font=w.font, size=w.size, line=w.line, order=k, entity=w.entity)
                     for k, w in enumerate(ws)]
        entities = [Entity(id=e.id, text=e.text, box_px=shift(e.box_px), box=normalize_box(shift(e.box_px), cw, ch),
                           label=e.label, word_ids=[new_id[i] for i in e.word_ids])
                    for e in page.entities if e.id in inside]
        out.append(Page(words=new_words, width=cw, height=ch, number=page.number, source=page.source,
                        entities=entities, links=links))
    skipped["link_across_windows"] += len(page.links) - kept_links
    return out


# ---------------------------------------------------------------------------------------------------------------
# Files
# ---------------------------------------------------------------------------------------------------------------

@dataclass
class LinkExtraction:
    """The pages of one PDF that have links (``pages``, with their ``splits``) and what was counted on the way:
    ``skipped`` (links not used, by reason) and ``stats`` (``pages``, ``pages_with_internal_links``,
    ``number_links`` (PDFium), ``pages_read``, ``link_pages``, ``links``, ``continued_values``)."""
    source: str
    pages: List[Page] = field(default_factory=list)
    splits: List[str] = field(default_factory=list)
    skipped: Counter = field(default_factory=Counter)
    stats: Counter = field(default_factory=Counter)


def _numeric(token: str) -> bool:
    """Digits and page-number punctuation only: a page number, or part of a range ("1037-" under the first of
    the two links of "1037-1040")."""
    return bool(_NUMERIC.match(token))


def _link_text(textpage, rect: LinkRect) -> List[str]:
    x0, y0, x1, y1 = rect.pdf_rect
    return textpage.get_text_bounded(x0, y0, x1, y1).split()


def _scan(path: Path, numbers: Optional[List[int]], skipped: Counter, stats: Counter,
          progress: Optional[bool]) -> Dict[int, List[LinkRect]]:
    """The page-number links of every page (or of ``numbers``) that has any: internal links inside which PDFium
    sees nothing but digits and page-number punctuation; the others are counted (``cross_reference``: other
    text, ``link_covers_no_word``: no text). Without pypdfium2 every internal link is kept and ``link_entities``
    classifies them by their words."""
    import pdfplumber
    import pdfplumber.page
    from pdfminer.pdfpage import PDFPage
    from domains.documents.pdf import _wrap_error

    source = str(path)
    try:
        import pypdfium2 as pdfium
        doc = pdfium.PdfDocument(source)
    except ImportError:
        doc = None
    except Exception as e:
        raise PdfError(f"{source}: not a readable PDF -- corrupt, truncated or not a PDF at all ({e})") from e
    found: Dict[int, List[LinkRect]] = {}
    try:
        try:
            pdf = pdfplumber.open(source)
        except Exception as e:
            raise _wrap_error(e, source, "opened") from e
        try:
            want = set(numbers) if numbers is not None else None
            last = max(numbers) if numbers else None
            total = len(doc) if doc is not None else None
            bar = None
            if progress or (progress is None and (total or 0) > 50 and _isatty()):
                from tqdm.auto import tqdm
                bar = tqdm(total=len(want) if want is not None else total, desc=f"{path.name} links", unit="page")
            try:
                for n, obj in enumerate(PDFPage.create_pages(pdf.doc), start=1):
                    if last is not None and n > last:
                        break
                    if want is not None and n not in want:
                        continue
                    stats["pages"] += 1
                    try:
                        pp = pdfplumber.page.Page(pdf, obj, page_number=n, initial_doctop=0)
                        rects = page_links(pp, skipped)
                        pp.close()
                    except Exception as e:
                        raise PdfError(f"{source} page {n}: cannot read the link annotations "
                                       f"({type(e).__name__}: {e})") from e
                    if bar is not None:
                        bar.update(1)
                    if not rects:
                        continue
                    stats["pages_with_internal_links"] += 1
                    if doc is not None:
                        tp = doc[n - 1].get_textpage()
                        try:
                            texts = [_link_text(tp, r) for r in rects]
                        finally:
                            tp.close()
                        kept = [r for r, t in zip(rects, texts) if t and all(map(_numeric, t))]
                        for t in texts:
                            if not t:
                                skipped["link_covers_no_word"] += 1
                            elif not all(map(_numeric, t)):
                                skipped["cross_reference"] += 1
                        rects = kept
                        stats["number_links"] += len(kept)
                    if rects:
                        found[n] = rects
            finally:
                if bar is not None:
                    bar.close()
        finally:
            if not hasattr(pdf, "_pages"):
                pdf._pages = []                 # never built: keeps close() from building every page first
            pdf.close()
    except Exception as e:
        if isinstance(e, PdfError):
            raise
        raise _wrap_error(e, source, "read") from e
    finally:
        if doc is not None:
            doc.close()
    return found


def _isatty() -> bool:
    import sys
    return sys.stderr.isatty()


def _extract(path: Path, numbers: Optional[List[int]], progress: Optional[bool]) -> LinkExtraction:
    from domains.documents.data import split_of_page
    from domains.documents.pdf import PdfReader, parse_pages

    ex = LinkExtraction(source=str(path))
    with PdfReader(path) as reader:
        if numbers is not None:
            numbers = parse_pages(numbers, reader.num_pages, str(path))
        found = _scan(path, numbers, ex.skipped, ex.stats, progress)
        ex.stats["pages_read"] = len(found)
        for page in reader.pages(sorted(found), progress=progress):
            linked = link_entities(page, found[page.number], ex.skipped, ex.stats)
            if linked is None:
                continue
            ex.stats["link_pages"] += 1
            ex.stats["links"] += len(linked.links)
            ex.pages.append(linked)
            ex.splits.append(split_of_page(page.texts))           # the word-labelling split of this page
    return ex


def _to_json(ex: LinkExtraction) -> str:
    pages = []
    for p, split in zip(ex.pages, ex.splits):
        pages.append({"number": p.number, "width": p.width, "height": p.height, "split": split,
                      "words": [[w.text, *map(float, w.box_px), w.line, w.font, w.size] for w in p.words],
                      "entities": [[e.label, e.word_ids] for e in p.entities], "links": p.links})
    return json.dumps({"format": CACHE_FORMAT, "skipped": dict(ex.skipped), "stats": dict(ex.stats),
                       "pages": pages}, ensure_ascii=False, separators=(",", ":"))


def _from_json(text: str, source: str) -> LinkExtraction:
    data = json.loads(text)
    if not isinstance(data, dict) or data.get("format") != CACHE_FORMAT:
        raise ValueError("old cache format")
    ex = LinkExtraction(source=source, skipped=Counter(data["skipped"]), stats=Counter(data["stats"]))
    for p in data["pages"]:
        w_, h_ = float(p["width"]), float(p["height"])
        words = [Word(text=t, box_px=(x0, y0, x1, y1), box=normalize_box((x0, y0, x1, y1), w_, h_), id=k,
                      line=ln, order=k, font=font, size=size)
                 for k, (t, x0, y0, x1, y1, ln, font, size) in enumerate(p["words"])]
        entities = []
        for e, (label, ids) in enumerate(p["entities"]):
            ws = [words[i] for i in ids]
            for w in ws:
                w.entity, w.label = e, label
            box = _union(ws)
            entities.append(Entity(id=e, text=" ".join(w.text for w in ws), box_px=box,
                                   box=normalize_box(box, w_, h_), label=label, word_ids=list(ids)))
        ex.pages.append(Page(words=words, width=w_, height=h_, number=int(p["number"]), source=source,
                             entities=entities, links=[tuple(x) for x in p["links"]]))
        ex.splits.append(p["split"])
    return ex


def extract_links(path: PathLike, pages=None, *, cache_dir: Union[PathLike, bool, None] = True,
                  progress: Optional[bool] = None) -> LinkExtraction:
    """The link pages of one PDF (``pages``: a 1-based page range as in ``pdf.parse_pages``, default all).

    ``cache_dir``: True (``$ZOO_HOME/documents``), a folder, or False/None (no cache); the cache holds the whole
    file's result, keyed by the PDF's sha256, used only when ``pages`` is None, written atomically and rebuilt
    when unreadable. ``progress``: tqdm bars for the annotation scan and the word extraction (None: only for more
    than 50 pages on a terminal)."""
    from domains.documents.data import CACHE_ERRORS, _default_cache_dir, _file_sha256
    from zoo.io import atomic_write_text

    from domains.documents.pdf import check_pdf_path

    path = Path(path)
    check_pdf_path(path)
    cache = None
    if cache_dir not in (None, False) and pages is None:
        folder = _default_cache_dir() if cache_dir is True else Path(cache_dir)
        cache = folder / f"{path.stem}-{_file_sha256(path)[:16]}-links-v{CACHE_FORMAT}.json"
        if cache.is_file():
            try:
                return _from_json(cache.read_text(encoding="utf-8"), str(path))
            except CACHE_ERRORS:
                pass  # damaged, truncated or old: rebuild below and replace atomically
    ex = _extract(path, None if pages is None else pages, progress)
    if cache is not None:
        atomic_write_text(cache, _to_json(ex))
    return ex


def r_manual_link_pages(root: Optional[PathLike] = None, manuals: Optional[Iterable[str]] = None, *,
                        cache_dir: Union[PathLike, bool, None] = True, progress: Optional[bool] = None,
                        skipped: Optional[Counter] = None, stats: Optional[Counter] = None,
                        max_words: Optional[int] = None) -> Dict[str, List[Page]]:
    """Link pages of the R manuals (``manuals``: names like ``"R-intro"``, default all eight; ``root``: a folder
    of the PDFs, default Debian's r-doc-pdf) by split (``train`` / ``val`` / ``test``, content hash of the page),
    or, with ``max_words``, their ``link_windows`` (a crop keeps its page's split). ``skipped`` / ``stats``
    collect the per-file counts."""
    from domains.documents.data import SPLITS, find_r_manuals

    files = find_r_manuals(root, manuals)
    out: Dict[str, List[Page]] = {s: [] for s in SPLITS}
    for f in files:
        ex = extract_links(f, cache_dir=cache_dir, progress=progress)
        if skipped is not None:
            skipped.update(ex.skipped)
        if stats is not None:
            stats.update(ex.stats)
        for p, s in zip(ex.pages, ex.splits):
            out[s].extend([p] if max_words is None else link_windows(p, max_words, skipped))
    return out
