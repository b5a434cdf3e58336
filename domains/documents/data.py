"""Document datasets -> word ids + boxes + labels + ``Positions`` (token classification, entity linking).

Pipeline (R manuals, card ``datasets/r_manuals_pdf.md``)::

    find_r_manuals()                     the PDFs of Debian's r-doc-pdf (8 manuals, ~3,100 born-digital pages)
    manual_pages(path, cache_dir=...)    every page as ``PageWords`` (texts, boxes 0..1000, font labels, lines),
                                         extracted once by ``domains.documents.pdf`` and cached as .npz (atomic)
    split_of_page(texts)                 page-level content-hash split (90/5/5), see below
    WordVocab.build(pages)               word-level vocabulary on the train split, ``save``/``load`` atomic JSON
    WordLabelling(pages, vocab)          one item per page window of <= max_len words
    collate_words(items)                 input_ids [b,n], boxes [b,n,4], labels [b,n], mask [b,n],
                                         positions = Positions(ids, boxes, mask)

Split rule: a page's split is a function of its content only: the first 64 bits of
``sha256("\\n".join(word texts in reading order))`` as a number in [0, 1) against 0.90 / 0.95 -> train / val /
test. Identical pages (blank pages, repeated boiler-plate) always share a split; a page keeps its split when the
manuals around it change. Pages of one manual are spread over all splits (a page-level, not a manual-level, split).

Positions per item (n = words in the window): ``ids`` = reading-order index 0..n-1 within the window (the
"lines-ltr" serialisation of ``domains.documents.document``), ``boxes`` = LayoutLM-normalised 0..1000 ints,
``mask`` True on real words; padding has id 0, box (0, 0, 0, 0), label -100.

Entity linking (FUNSD / XFUND pages): ``linking_example(page, vocab)`` / ``collate_linking`` add the entity each
word belongs to, entity boxes and labels, and the link matrix ``[b, e, e]`` (True where entity i links to j).
"""
from __future__ import annotations

import hashlib
import json
import os
import struct
import zipfile
import zlib
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, Iterable, List, Optional, Sequence, Tuple, Union

import numpy as np
import torch
from torch import Tensor
from torch.utils.data import Dataset

from zoo.errors import DatasetNotFoundError
from zoo.io import atomic_write, atomic_write_text
from zoo.positions import Positions
from zoo.splits import SPLITS, split_for_hash

from domains.documents.document import DocumentFormatError, Page

__all__ = [
    "LABELS", "FUNSD_BIO", "SPLITS", "R_MANUAL_DIRS", "PageWords", "find_r_manuals", "manual_pages",
    "r_manual_pages", "split_of_page", "WordVocab", "WordLabelling", "collate_words", "r_manual_datasets",
    "bio_labels", "linking_example", "collate_linking",
]

PathLike = Union[str, os.PathLike]
LABELS = ("body", "heading", "code", "math")          # same order as domains.documents.pdf.LABELS
FUNSD_BIO = ("O", "B-HEADER", "I-HEADER", "B-QUESTION", "I-QUESTION", "B-ANSWER", "I-ANSWER")
R_MANUAL_DIRS = ("/usr/share/doc/r-doc-pdf/manual", "/usr/share/R/doc/manual")
# fullrefman.pdf (only under /usr/share/R/doc/manual) has the same 2,415 pages as refman.pdf
_SKIP_MANUALS = frozenset({"fullrefman.pdf"})
_CACHE_FORMAT = 1
# what reading a damaged or truncated cache file raises (numpy's .npz is a zip archive): the cache is rebuilt
CACHE_ERRORS = (OSError, ValueError, KeyError, IndexError, TypeError, EOFError, zipfile.BadZipFile, zlib.error,
                struct.error)
IGNORE = -100


# ---------------------------------------------------------------------------------------------------------------
# Pages as compact arrays, cached
# ---------------------------------------------------------------------------------------------------------------

@dataclass
class PageWords:
    """The words of one page in reading order: ``boxes`` int16 ``[n, 4]`` (0..1000), ``labels`` int8 ``[n]``
    (index into ``LABELS``), ``lines`` int32 ``[n]``."""
    source: str
    number: int
    texts: List[str]
    boxes: np.ndarray
    labels: np.ndarray
    lines: np.ndarray

    def __len__(self) -> int:
        return len(self.texts)

    @property
    def split(self) -> str:
        return split_of_page(self.texts)

    @classmethod
    def from_page(cls, page: Page, name: Optional[str] = None) -> "PageWords":
        idx = {lab: i for i, lab in enumerate(LABELS)}
        bad = [w.label for w in page.words if w.label not in idx]
        if bad:
            raise DocumentFormatError(f"{page.where}: label {bad[0]!r} is not one of {LABELS}")
        return cls(source=name or page.source, number=page.number, texts=page.texts,
                   boxes=page.boxes.astype(np.int16),
                   labels=np.asarray([idx[w.label] for w in page.words], dtype=np.int8),
                   lines=np.asarray([w.line for w in page.words], dtype=np.int32))


def split_of_page(texts: Sequence[str], fractions: Sequence[float] = (0.90, 0.05, 0.05)) -> str:
    """The split of a page: sha256 of its word texts joined by newlines, first 64 bits against ``fractions``."""
    return split_for_hash(hashlib.sha256("\n".join(texts).encode("utf-8")).hexdigest(), fractions)


def find_r_manuals(root: Optional[PathLike] = None, manuals: Optional[Iterable[str]] = None) -> List[Path]:
    """The R manual PDFs in ``root`` or the first of ``R_MANUAL_DIRS`` that has any, sorted by name, without
    ``fullrefman.pdf`` (a duplicate of refman.pdf); with ``manuals`` (names like ``"R-intro"`` or
    ``"R-intro.pdf"``) only those, in that order (a missing one is a DatasetNotFoundError naming it)."""
    dirs = [Path(root)] if root is not None else [Path(d) for d in R_MANUAL_DIRS]
    for d in dirs:
        found = sorted(p for p in d.glob("*.pdf") if p.name not in _SKIP_MANUALS and p.is_file())
        if found:
            break
    else:
        raise DatasetNotFoundError(f"no R manual PDFs in {', '.join(map(str, dirs))}: install them with "
                                   f"`apt-get install r-doc-pdf` (or pass root=)")
    if manuals is None:
        return found
    want = [m[:-4] if m.endswith(".pdf") else m for m in ([manuals] if isinstance(manuals, str) else manuals)]
    have = {p.stem: p for p in found}
    missing = [m for m in want if m not in have]
    if missing:
        raise DatasetNotFoundError(f"R manual(s) {missing} not found; available: {sorted(have)}")
    return [have[m] for m in want]


def _file_sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _save_pages(path: Path, pages: List[PageWords]) -> None:
    lens = np.asarray([len(p) for p in pages], dtype=np.int64)
    arrays = dict(
        format=np.asarray(_CACHE_FORMAT), numbers=np.asarray([p.number for p in pages], dtype=np.int64),
        lens=lens, texts=np.frombuffer("\x00".join(t for p in pages for t in p.texts).encode("utf-8"), np.uint8),
        boxes=np.concatenate([p.boxes for p in pages] or [np.zeros((0, 4), np.int16)]).astype(np.int16),
        labels=np.concatenate([p.labels for p in pages] or [np.zeros(0, np.int8)]).astype(np.int8),
        lines=np.concatenate([p.lines for p in pages] or [np.zeros(0, np.int32)]).astype(np.int32))

    def write(tmp):
        with open(tmp, "wb") as f:
            np.savez(f, **arrays)
    atomic_write(path, write)


def _load_pages(path: Path, source: str) -> List[PageWords]:
    with np.load(path, allow_pickle=False) as z:
        if int(z["format"]) != _CACHE_FORMAT:
            raise ValueError("old cache format")
        lens, numbers = z["lens"], z["numbers"]
        texts = z["texts"].tobytes().decode("utf-8").split("\x00") if lens.sum() else []
        boxes, labels, lines = z["boxes"], z["labels"], z["lines"]
    if len(texts) != int(lens.sum()) or len(boxes) != len(texts):
        raise ValueError("inconsistent cache")
    out, start = [], 0
    for n, num in zip(lens.tolist(), numbers.tolist()):
        sl = slice(start, start + n)
        out.append(PageWords(source, int(num), texts[sl], boxes[sl], labels[sl], lines[sl]))
        start += n
    return out


def _default_cache_dir() -> Path:
    home = os.environ.get("ZOO_HOME")
    base = Path(home) if home else Path.home() / ".cache" / "zoo"
    return base / "documents"


def manual_pages(path: PathLike, *, pages=None, cache_dir: Union[PathLike, bool, None] = True,
                 progress: Optional[bool] = None, **reader_kwargs) -> List[PageWords]:
    """The pages of one PDF as ``PageWords`` (empty pages kept, with no words).

    ``cache_dir``: True (``$ZOO_HOME/documents``), a folder, or False/None (no cache). The cache holds the whole
    file, keyed by the PDF's sha256; it is used only when ``pages`` is None and no reader options are given,
    written atomically, and rebuilt if unreadable."""
    path = Path(path)
    from domains.documents.pdf import PdfReader, check_pdf_path
    check_pdf_path(path)
    use_cache = cache_dir not in (None, False) and pages is None and not reader_kwargs
    cache = None
    if use_cache:
        folder = _default_cache_dir() if cache_dir is True else Path(cache_dir)
        cache = folder / f"{path.stem}-{_file_sha256(path)[:16]}-v{_CACHE_FORMAT}.npz"
        if cache.is_file():
            try:
                return _load_pages(cache, path.name)
            except CACHE_ERRORS:
                pass  # damaged, truncated or old: rebuild below and replace atomically
    with PdfReader(path, **reader_kwargs) as pdf:
        out = [PageWords.from_page(p, path.name) for p in pdf.pages(pages, progress=progress)]
    if cache is not None:
        _save_pages(cache, out)
    return out


def r_manual_pages(root: Optional[PathLike] = None, manuals: Optional[Iterable[str]] = None, *,
                   split: Optional[str] = None, cache_dir: Union[PathLike, bool, None] = True,
                   progress: Optional[bool] = None, pages=None) -> List[PageWords]:
    """Pages of the R manuals (``manuals``: names like ``"R-intro"``; default all), optionally of one split;
    pages without words are left out. ``pages`` (a page range, see ``pdf.parse_pages``) applies to every manual."""
    files = find_r_manuals(root, manuals)
    if split is not None and split not in SPLITS:
        raise ValueError(f"split={split!r}; expected one of {SPLITS}")
    out = []
    for f in files:
        for p in manual_pages(f, pages=pages, cache_dir=cache_dir, progress=progress):
            if len(p) and (split is None or p.split == split):
                out.append(p)
    return out


# ---------------------------------------------------------------------------------------------------------------
# Vocabulary
# ---------------------------------------------------------------------------------------------------------------

class WordVocab:
    """Word-level vocabulary: ``<pad>`` 0, ``<unk>`` 1, then words by falling frequency (ties by text).
    ``lowercase`` folds case before lookup."""
    SPECIALS = ("<pad>", "<unk>")
    FORMAT = "zoo.documents.WordVocab/1"

    def __init__(self, words: Sequence[str], lowercase: bool = False):
        self.itos = list(self.SPECIALS) + [w for w in words if w not in self.SPECIALS]
        self.stoi = {w: i for i, w in enumerate(self.itos)}
        if len(self.stoi) != len(self.itos):
            raise ValueError("WordVocab: duplicate words")
        self.lowercase = lowercase

    pad_id, unk_id = 0, 1

    @classmethod
    def build(cls, texts: Iterable[str], *, min_freq: int = 2, max_size: Optional[int] = 50_000,
              lowercase: bool = False) -> "WordVocab":
        c = Counter(t.lower() if lowercase else t for t in texts)
        items = sorted(((w, n) for w, n in c.items() if n >= min_freq), key=lambda kv: (-kv[1], kv[0]))
        if max_size is not None:
            items = items[:max(0, max_size - len(cls.SPECIALS))]
        return cls([w for w, _ in items], lowercase=lowercase)

    def __len__(self) -> int:
        return len(self.itos)

    def encode(self, texts: Sequence[str]) -> List[int]:
        f = str.lower if self.lowercase else (lambda s: s)
        return [self.stoi.get(f(t), self.unk_id) for t in texts]

    def save(self, path: PathLike) -> Path:
        return atomic_write_text(path, json.dumps({"format": self.FORMAT, "lowercase": self.lowercase,
                                                   "itos": self.itos}, ensure_ascii=False))

    @classmethod
    def load(cls, path: PathLike) -> "WordVocab":
        path = Path(path)
        if path.is_dir():
            raise IsADirectoryError(f"{path}: is a directory, not a WordVocab file")
        try:
            with open(path, encoding="utf-8") as f:
                data = json.load(f)
        except (json.JSONDecodeError, UnicodeDecodeError) as e:
            raise ValueError(f"{path}: not a WordVocab file ({e})") from e
        itos = data.get("itos") if isinstance(data, dict) else None
        if not isinstance(data, dict) or data.get("format") != cls.FORMAT or not isinstance(itos, list) or \
                itos[:2] != list(cls.SPECIALS):
            raise ValueError(f"{path}: not a WordVocab file (format {cls.FORMAT!r} with <pad>, <unk> first)")
        bad = [w for w in itos if not isinstance(w, str)]
        if bad:
            raise ValueError(f"{path}: not a WordVocab file (entry {bad[0]!r} is not a string)")
        if len(set(itos)) != len(itos):
            dup = next(w for k, w in enumerate(itos) if w in itos[:k])
            raise ValueError(f"{path}: not a WordVocab file (word {dup!r} appears twice)")
        return cls(itos[len(cls.SPECIALS):], lowercase=bool(data.get("lowercase", False)))


# ---------------------------------------------------------------------------------------------------------------
# Token classification
# ---------------------------------------------------------------------------------------------------------------

class WordLabelling(Dataset):
    """Word labelling items: every page cut into consecutive windows of at most ``max_len`` words (in reading
    order). Item: ``input_ids`` [n], ``boxes`` [n, 4], ``labels`` [n], ``ids`` [n] (0..n-1), ``source``,
    ``page``, ``start`` (index of the window's first word in the page)."""

    def __init__(self, pages: Sequence[PageWords], vocab: WordVocab, max_len: int = 512):
        if max_len <= 0:
            raise ValueError(f"max_len must be positive, got {max_len}")
        self.pages, self.vocab, self.max_len = list(pages), vocab, int(max_len)
        self.index: List[Tuple[int, int]] = [(pi, s) for pi, p in enumerate(self.pages)
                                             for s in range(0, len(p), self.max_len)]

    def __len__(self) -> int:
        return len(self.index)

    def __getitem__(self, i: int) -> dict:
        pi, s = self.index[i]
        p = self.pages[pi]
        sl = slice(s, s + self.max_len)
        n = len(p.texts[sl])
        return {"input_ids": torch.tensor(self.vocab.encode(p.texts[sl]), dtype=torch.long),
                "boxes": torch.from_numpy(p.boxes[sl].astype(np.int64)),
                "labels": torch.from_numpy(p.labels[sl].astype(np.int64)),
                "ids": torch.arange(n), "source": p.source, "page": p.number, "start": s}

    def label_counts(self) -> Counter:
        return Counter(LABELS[k] for p in self.pages for k in p.labels.tolist())


def _pad(seqs: Sequence[Tensor], value, length: int) -> Tensor:
    out = seqs[0].new_full((len(seqs), length) + tuple(seqs[0].shape[1:]), value)
    for i, s in enumerate(seqs):
        out[i, :len(s)] = s
    return out


def collate_words(items: Sequence[dict]) -> dict:
    """Pad a list of ``WordLabelling`` / ``linking_example`` items to the longest (token fields only)."""
    if not items:
        raise ValueError("collate_words: empty batch")
    L = max(len(it["input_ids"]) for it in items)
    input_ids = _pad([it["input_ids"] for it in items], 0, L)
    boxes = _pad([it["boxes"] for it in items], 0, L)
    labels = _pad([it["labels"] for it in items], IGNORE, L)
    ids = _pad([it["ids"] for it in items], 0, L)
    mask = _pad([torch.ones(len(it["input_ids"]), dtype=torch.bool) for it in items], False, L)
    return {"input_ids": input_ids, "boxes": boxes, "labels": labels, "mask": mask,
            "positions": Positions(ids=ids, boxes=boxes, mask=mask),
            "source": [it.get("source") for it in items], "page": [it.get("page") for it in items]}


def r_manual_datasets(root: Optional[PathLike] = None, manuals: Optional[Iterable[str]] = None, *,
                      max_len: int = 512, vocab: Union[WordVocab, PathLike, None] = None,
                      vocab_path: Optional[PathLike] = None, min_freq: int = 2, max_size: Optional[int] = 50_000,
                      cache_dir: Union[PathLike, bool, None] = True, progress: Optional[bool] = None,
                      pages=None) -> Tuple[Dict[str, WordLabelling], WordVocab]:
    """Train/val/test ``WordLabelling`` datasets of the R manuals and the vocabulary (given, loaded from a path,
    or built on the train split and saved atomically to ``vocab_path`` if given)."""
    allp = r_manual_pages(root, manuals, cache_dir=cache_dir, progress=progress, pages=pages)
    by_split = {s: [p for p in allp if p.split == s] for s in SPLITS}
    if isinstance(vocab, (str, os.PathLike)):
        vocab = WordVocab.load(vocab)
    if vocab is None:
        vocab = WordVocab.build((t for p in by_split["train"] for t in p.texts), min_freq=min_freq,
                                max_size=max_size)
        if vocab_path is not None:
            vocab.save(vocab_path)
    return {s: WordLabelling(by_split[s], vocab, max_len) for s in SPLITS}, vocab


# ---------------------------------------------------------------------------------------------------------------
# FUNSD / XFUND: BIO labels and entity linking
# ---------------------------------------------------------------------------------------------------------------

def bio_labels(page: Page) -> List[str]:
    """LayoutLM's FUNSD tags per word of ``page`` (in its word order): the first word of an entity (by the
    entity's own word order) is ``B-<LABEL>``, the others ``I-<LABEL>``; label "other" or None is ``O``."""
    first = {e.word_ids[0] for e in page.entities if e.word_ids}
    out = []
    for w in page.words:
        lab = (w.label or "other").lower()
        out.append("O" if lab == "other" else f"{'B' if w.id in first else 'I'}-{lab.upper()}")
    return out


def linking_example(page: Page, vocab: WordVocab, *, max_len: int = 512,
                    label_set: Sequence[str] = FUNSD_BIO) -> dict:
    """One FUNSD/XFUND page for token classification + entity linking (the first ``max_len`` words in the page's
    word order). Entities without a word in the window are left out, with their links.

    ``word_entity`` [n]: index into the item's entities (-1 for none); ``entity_boxes`` [e, 4] (0..1000);
    ``entity_labels`` [e] (index into ``("header", "question", "answer", "other")``); ``links`` [p, 2] entity
    indices (from, to); ``labels`` [n]: BIO tags as indices into ``label_set``."""
    from domains.documents.funsd import FUNSD_LABELS
    words = page.words[:max_len]
    tags = bio_labels(page)[:max_len]
    tag_idx = {t: i for i, t in enumerate(label_set)}
    unknown = [t for t in tags if t not in tag_idx]
    if unknown:
        raise DocumentFormatError(f"{page.where}: tag {unknown[0]!r} is not in label_set {list(label_set)}")
    present = {w.entity for w in words if w.entity is not None}
    ents = [e for e in page.entities if e.id in present]
    eidx = {e.id: i for i, e in enumerate(ents)}
    lab_idx = {lab: i for i, lab in enumerate(FUNSD_LABELS)}
    bad = [e.label for e in ents if (e.label or "other").lower() not in lab_idx]
    if bad:
        raise DocumentFormatError(f"{page.where}: entity label {bad[0]!r} is not one of {FUNSD_LABELS}")
    links = [(eidx[a], eidx[b]) for a, b in page.links if a in eidx and b in eidx]
    n = len(words)
    return {"input_ids": torch.tensor(vocab.encode([w.text for w in words]), dtype=torch.long),
            "boxes": torch.tensor([w.box for w in words], dtype=torch.long).reshape(n, 4),
            "labels": torch.tensor([tag_idx[t] for t in tags], dtype=torch.long),
            "ids": torch.arange(n),
            "word_entity": torch.tensor([eidx.get(w.entity, -1) for w in words], dtype=torch.long),
            "entity_boxes": torch.tensor([e.box for e in ents], dtype=torch.long).reshape(len(ents), 4),
            "entity_labels": torch.tensor([lab_idx[(e.label or "other").lower()] for e in ents], dtype=torch.long),
            "links": torch.tensor(links, dtype=torch.long).reshape(len(links), 2),
            "source": page.source, "page": page.number}


def collate_linking(items: Sequence[dict]) -> dict:
    """``collate_words`` plus ``word_entity`` [b, n] (-1 pad), ``entity_boxes`` [b, e, 4], ``entity_labels``
    [b, e] (-100 pad), ``entity_mask`` [b, e] and ``link_matrix`` [b, e, e] (True where entity i links to j)."""
    out = collate_words(items)
    L = out["input_ids"].shape[1]
    E = max(max(len(it["entity_labels"]) for it in items), 1)
    out["word_entity"] = _pad([it["word_entity"] for it in items], -1, L)
    out["entity_boxes"] = torch.zeros(len(items), E, 4, dtype=torch.long)
    out["entity_labels"] = torch.full((len(items), E), IGNORE, dtype=torch.long)
    out["entity_mask"] = torch.zeros(len(items), E, dtype=torch.bool)
    out["link_matrix"] = torch.zeros(len(items), E, E, dtype=torch.bool)
    for b, it in enumerate(items):
        e = len(it["entity_labels"])
        out["entity_boxes"][b, :e] = it["entity_boxes"]
        out["entity_labels"][b, :e] = it["entity_labels"]
        out["entity_mask"][b, :e] = True
        if len(it["links"]):
            out["link_matrix"][b, it["links"][:, 0], it["links"][:, 1]] = True
    return out
