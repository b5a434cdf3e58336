"""Genomics datasets: 16S rRNA (phylum labels), splice junctions, E. coli promoters -> token tensors.

Pipeline::

    load_16s(limit=None, top_n=None, other="drop")   SequenceSet: ids, seqs, labels (phylum from the header)
    load_splice_junctions()                          SequenceSet: 3,186 x 60 nt, labels EI / IE / N
    load_promoters()                                 SequenceSet: 106 x 57 nt, labels promoter / non-promoter
    stratified_split(labels, (0.8, 0.1, 0.1), seed)  {"train": idx, "val": idx, "test": idx}, deterministic
    classification_tensors(data, tokenizer, ...)     input_ids [N, L], labels [N], mask [N, L], spans, Positions
    lm_windows(seqs, tokenizer, window, stride)      fixed-length windows of bases -> input_ids [W, L]
    mlm_mask(input_ids, tokenizer, prob, seed)       BERT-style masking: inputs, targets (-100 = not predicted)

Files come from Debian packages (cards in ``datasets/``); each loader takes ``path=`` to read another copy and raises
``zoo.errors.DatasetNotFoundError`` naming the package when the file is missing. ``rdata`` (for the ``.rda`` files)
and biopython (for FASTA) are imported only when a loader runs.
"""
from __future__ import annotations

import os
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple, Union

import numpy as np
import torch

from domains.genomics.io import INSTALL_HINT, SequencePolicy, SequenceReader, as_path
from domains.genomics.tokenizers import DNATokenizer

__all__ = [
    "RRNA16S_PATH", "SPLICE_PATH", "PROMOTER_PATH", "TAXONOMY_RANKS", "SPLITS", "SequenceSet", "parse_taxonomy",
    "find_dataset", "load_16s", "load_splice_junctions", "load_promoters", "stratified_split",
    "classification_tensors", "lm_windows", "mlm_mask", "DATASETS",
]

PathLike = Union[str, os.PathLike]
RRNA16S_PATH = Path("/usr/share/microbiomeutil-data/RESOURCES/rRNA16S.gold.fasta")
SPLICE_PATH = Path("/usr/lib/R/site-library/mlbench/data/DNA.rda")
PROMOTER_PATH = Path("/usr/lib/R/site-library/kernlab/data/promotergene.rda")
_PACKAGES = {"16s_rrna": ("microbiomeutil-data", RRNA16S_PATH), "splice_junctions": ("r-cran-mlbench", SPLICE_PATH),
             "ecoli_promoters": ("r-cran-kernlab", PROMOTER_PATH)}
TAXONOMY_RANKS = ("domain", "phylum", "class", "order", "family", "genus")
SPLITS = ("train", "val", "test")
# StatLog encoding of DNA.rda (mlbench ?DNA): three indicator columns per base
_STATLOG_CODES = {(1, 0, 0): "A", (0, 1, 0): "C", (0, 0, 1): "G", (0, 0, 0): "T"}


@dataclass
class SequenceSet:
    """Labelled sequences: ``labels[i]`` is a class name, ``classes`` the sorted names (label id = index)."""
    name: str
    ids: List[str]
    seqs: List[str]
    labels: List[str]
    classes: List[str] = field(default_factory=list)
    skipped: Counter = field(default_factory=Counter)

    def __post_init__(self):
        if not (len(self.ids) == len(self.seqs) == len(self.labels)):
            raise ValueError(f"{self.name}: {len(self.ids)} ids, {len(self.seqs)} seqs, {len(self.labels)} labels")
        if not self.classes:
            self.classes = sorted(set(self.labels))

    def __len__(self) -> int:
        return len(self.seqs)

    @property
    def label_ids(self) -> np.ndarray:
        index = {c: i for i, c in enumerate(self.classes)}
        return np.array([index[lab] for lab in self.labels], dtype=np.int64)

    def class_counts(self) -> Dict[str, int]:
        """Records per class, largest first."""
        return dict(Counter(self.labels).most_common())

    def subset(self, indices: Sequence[int]) -> "SequenceSet":
        idx = [int(i) for i in indices]
        return SequenceSet(self.name, [self.ids[i] for i in idx], [self.seqs[i] for i in idx],
                           [self.labels[i] for i in idx], list(self.classes))


def find_dataset(name: str, path: Optional[PathLike] = None) -> Path:
    """The file of dataset ``name`` (``16s_rrna``, ``splice_junctions``, ``ecoli_promoters``): ``path`` if given,
    else the Debian location; ``DatasetNotFoundError`` names the package to install."""
    from zoo.errors import DatasetNotFoundError
    if name not in _PACKAGES:
        raise ValueError(f"unknown genomics dataset {name!r}; expected one of {list(_PACKAGES)}")
    package, default = _PACKAGES[name]
    file = as_path(path, f"{name}: path") if path is not None else default
    if file.is_dir():
        raise IsADirectoryError(f"{name}: {file} is a directory; pass path=<a copy of {default.name}>")
    if file.exists() and not file.is_file():
        raise ValueError(f"{name}: {file} is not a regular file (a pipe or a device?); pass path=<a copy of "
                         f"{default.name}>")
    if not file.is_file():
        raise DatasetNotFoundError(f"{name}: {file} not found. Install it with `apt-get install {package}` "
                                   f"(Debian/Ubuntu) or pass path=<a copy of {default.name}>; see "
                                   f"datasets/{name}.md")
    return file


# ---------------------------------------------------------------------------------------------------------------
# 16S rRNA
# ---------------------------------------------------------------------------------------------------------------

def parse_taxonomy(header: str) -> Tuple[str, ...]:
    """The six ranks (domain; phylum; class; order; family; genus) of a ``rRNA16S.gold.fasta`` header.

    Headers are ``<id><space or tab><free text><TAB>Bacteria; Phylum; Class; Order; Family; Genus``: the taxonomy
    is the last tab-separated field (the free text may itself contain tabs and ``;``)."""
    if "\t" not in header:
        raise ValueError(f"header {header[:80]!r} has no tab-separated taxonomy field")
    ranks = tuple(r.strip() for r in header.rsplit("\t", 1)[1].split(";"))
    if len(ranks) != len(TAXONOMY_RANKS) or not all(ranks):
        raise ValueError(f"taxonomy {header.rsplit(chr(9), 1)[1][:120]!r} does not have the "
                         f"{len(TAXONOMY_RANKS)} ranks {'; '.join(TAXONOMY_RANKS)}")
    return ranks


class _TaxonomyLabel:
    def __init__(self, rank: str):
        if rank not in TAXONOMY_RANKS:
            raise ValueError(f"rank={rank!r}; expected one of {list(TAXONOMY_RANKS)}")
        self.rank, self.index = rank, TAXONOMY_RANKS.index(rank)

    def __call__(self, record_id: str, header: str) -> Optional[str]:
        try:
            return parse_taxonomy(header)[self.index]
        except ValueError:
            return None

    def __repr__(self) -> str:
        return f"taxonomy rank {self.rank!r} (last tab field of the header)"


def load_16s(path: Optional[PathLike] = None, *, rank: str = "phylum", limit: Optional[int] = None,
             top_n: Optional[int] = None, other: str = "drop", policy: Optional[SequencePolicy] = None) -> SequenceSet:
    """16S rRNA genes with their taxonomy ``rank`` (default phylum) as label, streamed from the FASTA.

    Args:
        limit: read only the first ``limit`` records of the file (before any class filtering).
        top_n: keep the ``top_n`` most frequent classes (ties broken by name); the rest are dropped
            (``other="drop"``) or relabelled ``"Other"`` (``other="merge"``).
        policy: ``SequencePolicy``; default upper-cases and keeps IUPAC codes (the file has lower case throughout).
    """
    file = find_dataset("16s_rrna", path)
    if limit is not None and (isinstance(limit, bool) or not isinstance(limit, int) or limit < 1):
        raise ValueError(f"limit={limit!r}: must be a positive int (records to read) or None")
    if other not in ("drop", "merge"):
        raise ValueError(f"other={other!r}; expected 'drop' or 'merge'")
    reader = SequenceReader(file, "fasta", policy=policy, labels=_TaxonomyLabel(rank))
    ids, seqs, labels = [], [], []
    for rec in reader:
        ids.append(rec.id)
        seqs.append(rec.seq)
        labels.append(rec.label)
        if limit is not None and reader.records_read >= int(limit):
            break
    skipped = Counter(reader.skipped)
    if top_n is not None:
        if int(top_n) < 1:
            raise ValueError(f"top_n={top_n}: must be at least 1")
        ranked = sorted(Counter(labels).items(), key=lambda kv: (-kv[1], kv[0]))
        keep = {c for c, _ in ranked[:int(top_n)]}
        if other == "merge":
            labels = [lab if lab in keep else "Other" for lab in labels]
        else:
            rows = [i for i, lab in enumerate(labels) if lab in keep]
            skipped["rare_class"] += len(labels) - len(rows)
            ids, seqs, labels = [ids[i] for i in rows], [seqs[i] for i in rows], [labels[i] for i in rows]
    return SequenceSet("16s_rrna", ids, seqs, labels, skipped=skipped)


# ---------------------------------------------------------------------------------------------------------------
# .rda datasets
# ---------------------------------------------------------------------------------------------------------------

def _read_rda(file: Path, name: str):
    try:
        import rdata
    except ImportError as e:
        raise ImportError(f"reading {file} needs the package 'rdata' ({e}); install it with: {INSTALL_HINT}") from e
    import warnings
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="Unknown encoding")  # R 2 files carry no encoding tag: ASCII
        try:
            objects = rdata.read_rda(str(file))
        except Exception as e:
            raise ValueError(f"{file}: not a readable R data file ({type(e).__name__}: {e})") from e
    if name not in objects:
        raise ValueError(f"{file}: no object {name!r} (found {sorted(objects)})")
    frame = objects[name]
    if not hasattr(frame, "columns") or not hasattr(frame, "index"):
        raise ValueError(f"{file}: object {name!r} is a {type(frame).__name__}, not a data frame")
    return frame


def load_splice_junctions(path: Optional[PathLike] = None) -> SequenceSet:
    """Primate splice junctions (StatLog DNA, mlbench ``DNA``): 60-nt windows, classes EI (exon->intron, donor),
    IE (intron->exon, acceptor), N (neither). The .rda stores each base as three indicator columns
    (A=100, C=010, G=001, T=000, columns V1..V180 position-major); they are decoded back to sequences."""
    file = find_dataset("splice_junctions", path)
    frame = _read_rda(file, "DNA")
    cols = [f"V{i}" for i in range(1, 181)]
    missing = [c for c in cols + ["Class"] if c not in frame.columns]
    if missing:
        raise ValueError(f"{file}: object DNA lacks columns {missing[:5]}{'...' if len(missing) > 5 else ''}")
    cells = frame[cols].astype(str).to_numpy()                                    # [N, 180]
    bad = np.argwhere((cells != "0") & (cells != "1"))
    if len(bad):
        row, col = (int(i) for i in bad[0])
        raise ValueError(f"{file}: row {row + 1}, column {cols[col]}: {cells[row, col]!r} is not a 0/1 indicator")
    bits = (cells == "1").astype(np.int64).reshape(len(frame), 60, 3)
    seqs = []
    for row, triples in enumerate(bits):
        try:
            seqs.append("".join(_STATLOG_CODES[tuple(t)] for t in triples.tolist()))
        except KeyError as e:
            raise ValueError(f"{file}: row {row + 1} has indicator triple {e.args[0]} (not A/C/G/T)") from None
    labels = [str(c).upper() for c in frame["Class"].astype(str)]
    ids = [f"DNA_{i}" for i in frame.index.astype(str)]
    return SequenceSet("splice_junctions", ids, seqs, labels)


def load_promoters(path: Optional[PathLike] = None) -> SequenceSet:
    """E. coli promoters (kernlab ``promotergene``, UCI): 57-nt sequences, classes ``promoter`` (+) and
    ``non-promoter`` (-)."""
    file = find_dataset("ecoli_promoters", path)
    frame = _read_rda(file, "promotergene")
    cols = [f"V{i}" for i in range(2, 59)]
    missing = [c for c in cols + ["Class"] if c not in frame.columns]
    if missing:
        raise ValueError(f"{file}: object promotergene lacks columns {missing[:5]}")
    letters = frame[cols].astype(str).to_numpy()
    seqs = ["".join(row).upper() for row in letters]
    for row, seq in enumerate(seqs):
        bad = next((i for i, ch in enumerate(seq) if ch not in "ACGT"), None)
        if bad is not None:
            raise ValueError(f"{file}: row {row + 1} has {seq[bad]!r} at position {bad + 1} (column {cols[bad]}), "
                             f"not A/C/G/T")
    names = {"+": "promoter", "-": "non-promoter"}
    classes = [str(c) for c in frame["Class"].astype(str)]
    if set(classes) - set(names):
        raise ValueError(f"{file}: unexpected classes {sorted(set(classes) - set(names))}")
    ids = [f"promoter_{i}" for i in frame.index.astype(str)]
    return SequenceSet("ecoli_promoters", ids, seqs, [names[c] for c in classes])


DATASETS = {"16s_rrna": load_16s, "splice_junctions": load_splice_junctions, "ecoli_promoters": load_promoters}


# ---------------------------------------------------------------------------------------------------------------
# Splits and tensors
# ---------------------------------------------------------------------------------------------------------------

def stratified_split(labels: Sequence, fractions: Sequence[float] = (0.8, 0.1, 0.1),
                     seed: int = 0) -> Dict[str, np.ndarray]:
    """Deterministic stratified split: within each class (sorted by name) the indices are shuffled with
    ``np.random.default_rng([seed, class rank])``; ``round(n * f_val)`` go to val, ``round(n * f_test)`` to test,
    the rest to train; when train would get none of a class, test (then val) gives one back, so a class
    of 1 lands in train. Each split's indices are returned sorted."""
    fr = [float(f) for f in fractions]
    if len(fr) != 3 or min(fr) < 0 or abs(sum(fr) - 1.0) > 1e-6:
        raise ValueError(f"fractions must be three non-negative numbers (train/val/test) summing to 1, got "
                         f"{list(fractions)}")
    labels = list(labels)
    by_class: Dict = {}
    for i, lab in enumerate(labels):
        by_class.setdefault(lab, []).append(i)
    out: Dict[str, list] = {s: [] for s in SPLITS}
    for rank, lab in enumerate(sorted(by_class, key=str)):
        idx = np.array(by_class[lab], dtype=np.int64)
        idx = idx[np.random.default_rng([int(seed), rank]).permutation(len(idx))]
        n_val = int(round(len(idx) * fr[1]))
        n_test = min(int(round(len(idx) * fr[2])), len(idx) - n_val)
        while fr[0] > 0 and n_val + n_test >= len(idx) and n_val + n_test > 0:  # keep one for training
            if n_test >= n_val:
                n_test -= 1
            else:
                n_val -= 1
        out["val"] += idx[:n_val].tolist()
        out["test"] += idx[n_val:n_val + n_test].tolist()
        out["train"] += idx[n_val + n_test:].tolist()
    return {s: np.array(sorted(v), dtype=np.int64) for s, v in out.items()}


def classification_tensors(data: SequenceSet, tokenizer: DNATokenizer, indices: Optional[Sequence[int]] = None,
                           max_length: Optional[int] = None, prefix: Sequence[str] = ("<cls>",),
                           suffix: Sequence[str] = (), truncation: bool = False) -> Dict[str, object]:
    """Tokenize (a subset of) ``data`` for sequence classification.

    Returns ``input_ids`` long ``[N, L]`` (``<pad>``-padded), ``labels`` long ``[N]`` (index into ``classes``),
    ``mask`` bool ``[N, L]`` (True at real tokens, specials included), ``spans`` long ``[N, L, 2]`` (base span per
    token, (-1, -1) at specials/padding), ``positions`` (``zoo.Positions`` with ids 0..L-1 and the mask) and
    ``classes``."""
    from zoo.positions import Positions
    if not isinstance(data, SequenceSet):
        raise TypeError(f"classification_tensors() takes a SequenceSet (a loader's result), got {type(data).__name__}")
    sub = data if indices is None else data.subset(indices)
    if len(sub) == 0:
        raise ValueError(f"{data.name}: no sequences selected")
    enc = tokenizer.encode_batch(sub.seqs, max_length=max_length, prefix=prefix, suffix=suffix, truncation=truncation)
    n, length = enc.ids.shape
    labels = torch.from_numpy(sub.label_ids)
    pos = Positions(ids=torch.arange(length).unsqueeze(0).expand(n, length), mask=enc.mask)
    return {"input_ids": enc.ids, "labels": labels, "mask": enc.mask, "spans": enc.spans, "positions": pos,
            "classes": list(data.classes)}


def lm_windows(seqs: Sequence[str], tokenizer: DNATokenizer, window: int = 512, stride: Optional[int] = None,
               prefix: Sequence[str] = (), suffix: Sequence[str] = ()) -> Dict[str, torch.Tensor]:
    """Fixed-length windows of ``window`` bases, cut inside each sequence (never across two records), every
    ``stride`` bases (default ``window``: no overlap); a sequence's last partial window is dropped, sequences
    shorter than ``window`` give none. All windows tokenize to the same length.

    Returns ``input_ids`` long ``[W, L]``, ``seq_index`` long ``[W]`` (which sequence) and ``start`` long ``[W]``
    (first base of the window in that sequence)."""
    window = int(window)
    stride = window if stride is None else int(stride)
    if window < 1 or stride < 1:
        raise ValueError(f"window={window} and stride={stride} must be positive")
    rows, where, starts = [], [], []
    for si, s in enumerate(seqs):
        for st in range(0, len(s) - window + 1, stride):
            rows.append(tokenizer.encode(s[st:st + window], prefix, suffix).ids)
            where.append(si)
            starts.append(st)
    if not rows:
        ids = torch.zeros((0, tokenizer.num_tokens(window) + len(prefix) + len(suffix)), dtype=torch.long)
    else:
        ids = torch.from_numpy(np.stack(rows))
    return {"input_ids": ids, "seq_index": torch.tensor(where, dtype=torch.long),
            "start": torch.tensor(starts, dtype=torch.long)}


def mlm_mask(input_ids: torch.Tensor, tokenizer: DNATokenizer, prob: float = 0.15, seed: int = 0,
             ) -> Tuple[torch.Tensor, torch.Tensor]:
    """BERT-style masking of non-special tokens: each is chosen with ``prob``; chosen tokens become ``<mask>``
    (80%), a random non-special token (10%) or stay (10%). Returns ``(inputs, targets)`` with ``targets`` = the
    original id at chosen tokens and -100 elsewhere. Deterministic for a given ``seed``."""
    if not isinstance(input_ids, torch.Tensor) or input_ids.is_floating_point() or input_ids.dtype == torch.bool:
        raise TypeError(f"mlm_mask() takes an int tensor of token ids, got "
                        f"{input_ids.dtype if isinstance(input_ids, torch.Tensor) else type(input_ids).__name__}")
    if not 0.0 < prob < 1.0:
        raise ValueError(f"prob={prob}: must be in (0, 1)")
    g = torch.Generator().manual_seed(int(seed))
    maskable = input_ids >= tokenizer.num_special
    chosen = (torch.rand(input_ids.shape, generator=g) < prob) & maskable
    targets = torch.where(chosen, input_ids, torch.full_like(input_ids, -100))
    roll = torch.rand(input_ids.shape, generator=g)
    random_ids = torch.randint(tokenizer.num_special, tokenizer.vocab_size, input_ids.shape, generator=g)
    inputs = torch.where(chosen & (roll < 0.8), torch.full_like(input_ids, tokenizer.mask_id), input_ids)
    inputs = torch.where(chosen & (roll >= 0.8) & (roll < 0.9), random_ids, inputs)
    return inputs, targets
