"""DNA tokenizers with a fixed vocabulary (no training): single nucleotide, k-mer, codon; token base spans.

One class covers all three: a token is ``k`` bases, consecutive tokens start ``stride`` bases apart, and the first
starts at base ``frame``::

    nucleotide_tokenizer()          k=1, stride=1
    kmer_tokenizer(k, overlapping)  stride 1 (overlapping, n-k+1 tokens) or stride k (non-overlapping)
    codon_tokenizer(frame)          k=3, stride=3, first codon at base ``frame`` (0, 1 or 2)

Vocabulary (ids)::

    0..6              <pad> <cls> <sep> <mask> <unk> <bos> <eos>
    7 .. 7+4^k-1      every k-mer over ACGT: id = 7 + base-4 value of the k-mer (A=0, C=1, G=2, T=3, first base
                      most significant), e.g. k=3: AAA=7, AAC=8, ACG=7+6=13, TTT=7+63=70
    7+4^k             "N"*k: a k-mer containing any IUPAC ambiguity code (N R Y S W K M B D H V)
    k > 1 only:       A C G T N single bases (7+4^k+1 ..), used for leftover bases (see ``remainder``)
    iupac=True (k=1): R Y S W K M B D H V after N, so every IUPAC code has its own token (lossless)

Leftover bases. The ``frame`` bases before the first k-mer and the bases after the last whole k-mer (fewer than
``stride``; all of them when the sequence has fewer than ``frame + k`` bases) are, with ``remainder="bases"``
(default), emitted as single-base tokens, so the tokenization is lossless and the spans cover every base; with
``remainder="drop"`` they are not tokenized at all (a codon tokenizer then sees whole codons only). Any character
that is neither ACGT nor an IUPAC ambiguity code becomes ``<unk>`` (so does a k-mer containing one). Lower case is
upper-cased.

``encode`` returns ids and each token's base span ``(start, end)`` in the input (end exclusive); special tokens have
span ``(-1, -1)``. ``decode(encode(s).ids) == s.upper()`` when ``s`` holds only ACGT (or any IUPAC code with
``iupac=True``, k=1) and ``remainder="bases"``; ambiguity codes otherwise come back as N.
"""
from __future__ import annotations

import json
import numbers
import random
from pathlib import Path
from typing import Dict, List, NamedTuple, Optional, Sequence, Tuple, Union

import numpy as np
import torch

from domains.genomics.io import AMBIGUOUS, NUCLEOTIDES, as_path, reverse_complement

__all__ = ["SPECIAL_TOKENS", "TOKENIZER_FILE", "Encoded", "BatchEncoding", "DNATokenizer", "nucleotide_tokenizer",
           "kmer_tokenizer", "codon_tokenizer", "ReverseComplement"]

SPECIAL_TOKENS = ("<pad>", "<cls>", "<sep>", "<mask>", "<unk>", "<bos>", "<eos>")
TOKENIZER_FILE = "dna_tokenizer.json"
_FORMAT = 1
_CODE_AMBIG, _CODE_INVALID = 4, 5


class Encoded(NamedTuple):
    """``ids`` int64 ``[n]``; ``spans`` int64 ``[n, 2]``: (start, end) base offsets, (-1, -1) for special tokens."""
    ids: np.ndarray
    spans: np.ndarray


class BatchEncoding(NamedTuple):
    """``ids`` long ``[b, n]`` padded with ``<pad>``; ``mask`` bool ``[b, n]`` True at real tokens; ``spans`` long
    ``[b, n, 2]`` ((-1, -1) at special and padding tokens); ``lengths`` long ``[b]``."""
    ids: torch.Tensor
    mask: torch.Tensor
    spans: torch.Tensor
    lengths: torch.Tensor


def _int_arg(name: str, value, optional: bool = False) -> Optional[int]:
    """``value`` as an int; a float, str or bool is refused rather than rounded or parsed."""
    if value is None and optional:
        return None
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise TypeError(f"{name} must be an int{' or None' if optional else ''}, got {value!r}")
    return int(value)


def _plural(indices: List[int], total: int, one: str, many: str) -> str:
    """"sequence 3 (1 of 5) <one>" / "sequences 0, 1 (2 of 2) <many>" (the first ten indices named)."""
    shown = ", ".join(str(i) for i in indices[:10]) + (", ..." if len(indices) > 10 else "")
    if len(indices) == 1:
        return f"sequence {shown} (1 of {total}) {one}"
    return f"sequences {shown} ({len(indices)} of {total}) {many}"


def _code_table(iupac_letters: str) -> np.ndarray:
    """byte -> code: ACGT 0..3, ambiguity 4 (or 6+i for the i-th letter of ``iupac_letters``), other bytes 5."""
    table = np.full(256, _CODE_INVALID, dtype=np.int64)
    for i, b in enumerate(NUCLEOTIDES):
        table[ord(b)] = table[ord(b.lower())] = i
    for b in AMBIGUOUS:
        table[ord(b)] = table[ord(b.lower())] = _CODE_AMBIG
    for i, b in enumerate(iupac_letters):
        table[ord(b)] = table[ord(b.lower())] = 6 + i
    return table


class DNATokenizer:
    """Fixed-vocabulary DNA tokenizer (see the module docstring for the vocabulary and the leftover rule).

    Args:
        k: bases per token (1..12).
        stride: bases between consecutive token starts, 1 <= stride <= k (default k: non-overlapping).
        frame: base at which the first k-mer starts, 0 <= frame < k (reading frame for codons).
        remainder: ``"bases"`` (leftover bases become single-base tokens) or ``"drop"``.
        iupac: k=1 only: give each of the 11 ambiguity codes its own token instead of mapping them to N.
    """

    def __init__(self, k: int = 1, stride: Optional[int] = None, frame: int = 0, remainder: str = "bases",
                 iupac: bool = False):
        k = _int_arg("k", k)
        if not 1 <= k <= 12:
            raise ValueError(f"k={k}: must be between 1 and 12 (4^k k-mers are all in the vocabulary)")
        stride = k if stride is None else _int_arg("stride", stride)
        if not 1 <= stride <= k:
            raise ValueError(f"stride={stride}: must be between 1 and k={k} (a larger stride would skip bases)")
        frame = _int_arg("frame", frame)
        if not 0 <= frame < k:
            raise ValueError(f"frame={frame}: must be between 0 and k-1={k - 1}")
        if remainder not in ("bases", "drop"):
            raise ValueError(f"remainder={remainder!r}; expected 'bases' or 'drop'")
        if iupac and k != 1:
            raise ValueError("iupac=True is only available for k=1 (single-nucleotide) tokenizers")
        self.k, self.stride, self.frame, self.remainder, self.iupac = k, stride, int(frame), remainder, bool(iupac)
        self.num_special = len(SPECIAL_TOKENS)
        self.kmer_offset = self.num_special
        self.n_kmer_id = self.kmer_offset + 4 ** k
        if k == 1:
            self.base_offset = self.kmer_offset   # single bases are the 1-mers; N is the "N k-mer"
            extra = list(AMBIGUOUS[1:]) if iupac else []
        else:
            self.base_offset = self.n_kmer_id + 1
            extra = list(NUCLEOTIDES) + ["N"]
        self.iupac_offset = self.n_kmer_id + 1  # k=1, iupac: R Y S ... V
        kmers = ["".join(NUCLEOTIDES[(v >> (2 * (k - 1 - j))) & 3] for j in range(k)) for v in range(4 ** k)]
        self.vocab: List[str] = list(SPECIAL_TOKENS) + kmers + ["N" * k] + extra
        self.token_to_id: Dict[str, int] = {t: i for i, t in enumerate(self.vocab)}
        for name in ("pad", "cls", "sep", "mask", "unk", "bos", "eos"):
            setattr(self, f"{name}_id", self.token_to_id[f"<{name}>"])
        self._codes = _code_table(AMBIGUOUS[1:] if iupac else "")
        self._powers = 4 ** np.arange(k - 1, -1, -1, dtype=np.int64)
        self._single = np.array([self.base_offset + i for i in range(4)] + [self.base_offset + 4, self.unk_id],
                                dtype=np.int64)  # code -> single-base id (k>1); k=1 handled in _kmer_ids

    # ---- properties ---------------------------------------------------------------------------------------
    @property
    def vocab_size(self) -> int:
        return len(self.vocab)

    @property
    def kind(self) -> str:
        if self.k == 1:
            return "nucleotide"
        if self.k == 3 and self.stride == 3:
            return f"codon(frame={self.frame})"
        return f"{self.k}-mer({'overlapping' if self.stride < self.k else 'non-overlapping'})"

    def config(self) -> dict:
        return {"k": self.k, "stride": self.stride, "frame": self.frame, "remainder": self.remainder,
                "iupac": self.iupac}

    def __repr__(self) -> str:
        return f"DNATokenizer({', '.join(f'{k}={v!r}' for k, v in self.config().items())}, vocab_size={self.vocab_size})"

    def __eq__(self, other) -> bool:
        return isinstance(other, DNATokenizer) and other.config() == self.config()

    def kmer_id(self, kmer: str) -> int:
        """The id of one k-mer (or one base for k > 1 single-base tokens), by the vocabulary formula."""
        kmer = kmer.upper()
        if kmer in self.token_to_id:
            return self.token_to_id[kmer]
        codes = self._codes[np.frombuffer(kmer.encode("ascii", "replace"), dtype=np.uint8)]
        if len(kmer) == self.k and (codes != _CODE_INVALID).all():
            return self.n_kmer_id
        return self.unk_id

    # ---- encoding -----------------------------------------------------------------------------------------
    def _kmer_ids(self, windows: np.ndarray) -> np.ndarray:
        """[n, k] codes -> [n] ids."""
        if self.k == 1:
            c = windows[:, 0]
            ids = np.where(c < 4, self.kmer_offset + c, self.n_kmer_id)
            ids = np.where(c >= 6, self.iupac_offset + c - 6, ids)
            return np.where(c == _CODE_INVALID, self.unk_id, ids)
        ids = self.kmer_offset + (np.minimum(windows, 3) * self._powers).sum(axis=1)
        ids = np.where((windows >= 4).any(axis=1), self.n_kmer_id, ids)
        return np.where((windows == _CODE_INVALID).any(axis=1), self.unk_id, ids)

    def _single_ids(self, codes: np.ndarray) -> np.ndarray:
        if self.k == 1:
            return self._kmer_ids(codes[:, None])
        return self._single[np.minimum(codes, _CODE_INVALID)]

    def encode(self, seq: str, prefix: Sequence[str] = (), suffix: Sequence[str] = ()) -> Encoded:
        """Token ids and base spans of ``seq``; ``prefix`` / ``suffix``: special tokens, e.g. ``["<cls>"]``.

        An empty ``seq`` gives no base tokens (the specials only), so the round trip holds for it too;
        `encode_batch`, which builds model input, refuses empty sequences."""
        if not isinstance(seq, str):
            raise TypeError(f"encode() takes a str, got {type(seq).__name__}")
        raw = np.frombuffer(seq.encode("ascii", "replace"), dtype=np.uint8)  # non-ASCII -> '?' -> <unk>
        codes = self._codes[raw]
        n, k, s = len(codes), self.k, self.stride
        starts = np.arange(self.frame, n - k + 1, s, dtype=np.int64)
        parts_ids, parts_spans = [], []
        if len(starts):
            windows = np.lib.stride_tricks.sliding_window_view(codes, k)[starts]
            kmer_ids, kmer_spans = self._kmer_ids(windows), np.stack([starts, starts + k], axis=1)
            head_end, tail_start = int(starts[0]), int(starts[-1]) + k
        else:
            kmer_ids, kmer_spans = np.zeros(0, np.int64), np.zeros((0, 2), np.int64)
            head_end, tail_start = n, n
        if self.remainder == "bases":
            head = np.arange(0, head_end, dtype=np.int64)
            tail = np.arange(tail_start, n, dtype=np.int64)
            parts_ids += [self._single_ids(codes[head]), kmer_ids, self._single_ids(codes[tail])]
            parts_spans += [np.stack([head, head + 1], 1), kmer_spans, np.stack([tail, tail + 1], 1)]
        else:
            parts_ids.append(kmer_ids)
            parts_spans.append(kmer_spans)
        pre = self._special_ids(prefix, "prefix")
        suf = self._special_ids(suffix, "suffix")
        ids = np.concatenate([pre] + parts_ids + [suf]).astype(np.int64)
        spans = np.concatenate([np.full((len(pre), 2), -1, np.int64)] + parts_spans +
                               [np.full((len(suf), 2), -1, np.int64)]).astype(np.int64)
        return Encoded(ids, spans.reshape(-1, 2))

    def _special_ids(self, tokens: Sequence[str], what: str) -> np.ndarray:
        if isinstance(tokens, str):
            tokens = [tokens]
        bad = [t for t in tokens if t not in SPECIAL_TOKENS]
        if bad:
            raise ValueError(f"{what} {bad} are not special tokens; expected some of {list(SPECIAL_TOKENS)}")
        return np.array([self.token_to_id[t] for t in tokens], dtype=np.int64)

    def num_tokens(self, length: int) -> int:
        """Tokens (without specials) for a sequence of ``length`` bases."""
        length = _int_arg("length", length)
        if length < 0:
            raise ValueError(f"length={length}: must be >= 0")
        return len(self.encode("A" * length).ids) if length else 0

    def encode_batch(self, seqs: Sequence[str], max_length: Optional[int] = None, prefix: Sequence[str] = (),
                     suffix: Sequence[str] = (), truncation: bool = False) -> BatchEncoding:
        """Encode and right-pad ``seqs`` to the longest (or to ``max_length``, counted with the specials).

        A sequence longer than ``max_length`` raises unless ``truncation=True`` (then its base tokens are cut at the
        end and the suffix is kept)."""
        if isinstance(seqs, (str, bytes)) or not isinstance(seqs, Sequence):
            raise TypeError(f"encode_batch() takes a list of str, got {type(seqs).__name__}")
        max_length = _int_arg("max_length", max_length, optional=True)
        if not seqs:
            raise ValueError("encode_batch() got no sequences")
        for i, sq in enumerate(seqs):
            if not isinstance(sq, str):
                raise TypeError(f"encode_batch(): sequence {i} is {type(sq).__name__}, not str")
        empty = [i for i, sq in enumerate(seqs) if not sq]
        if empty:
            raise ValueError(f"encode_batch(): {_plural(empty, len(seqs), 'is empty', 'are empty')} (0 bases)")
        encs = [self.encode(sq, prefix, suffix) for sq in seqs]
        n_pre, n_suf = len(self._special_ids(prefix, "prefix")), len(self._special_ids(suffix, "suffix"))
        no_tokens = [i for i, e in enumerate(encs) if len(e.ids) == n_pre + n_suf]
        if no_tokens:
            i = no_tokens[0]
            what = _plural(no_tokens, len(seqs), "gives no tokens", "give no tokens")
            raise ValueError(f"encode_batch(): {what}: "
                             f"{len(seqs[i])} bases in sequence {i}, fewer than frame {self.frame} + k={self.k} "
                             f"with remainder='drop'")
        longest = max(len(e.ids) for e in encs)
        width = longest if max_length is None else max_length
        if width < n_pre + n_suf + 1:
            raise ValueError(f"max_length={max_length} leaves no room for tokens between the {n_pre + n_suf} "
                             f"special tokens")
        ids = torch.full((len(encs), width), self.pad_id, dtype=torch.long)
        spans = torch.full((len(encs), width, 2), -1, dtype=torch.long)
        lengths = torch.zeros(len(encs), dtype=torch.long)
        for i, e in enumerate(encs):
            eid, esp = e.ids, e.spans
            if len(eid) > width:
                if not truncation:
                    raise ValueError(f"sequence {i} has {len(eid)} tokens > max_length={width}; pass "
                                     f"truncation=True to cut it")
                keep = width - n_suf
                eid = np.concatenate([eid[:keep], eid[len(eid) - n_suf:]])
                esp = np.concatenate([esp[:keep], esp[len(esp) - n_suf:]])
            ids[i, :len(eid)] = torch.from_numpy(eid)
            spans[i, :len(eid)] = torch.from_numpy(esp)
            lengths[i] = len(eid)
        mask = torch.arange(width)[None, :] < lengths[:, None]
        return BatchEncoding(ids, mask, spans, lengths)

    # ---- decoding -----------------------------------------------------------------------------------------
    @staticmethod
    def _id_list(ids, what: str) -> List[int]:
        """Token ids (list, array or tensor on any device, any shape) as a flat list of ints."""
        if isinstance(ids, torch.Tensor):
            ids = ids.detach().cpu()
        arr = np.asarray(ids)
        if arr.size and arr.dtype.kind not in "iu":
            raise TypeError(f"{what}() takes integer token ids, got {arr.dtype.name} ({type(ids).__name__})")
        return arr.reshape(-1).astype(np.int64).tolist()

    def tokens(self, ids) -> List[str]:
        return [self._token(i) for i in self._id_list(ids, "tokens")]

    def _token(self, i: int) -> str:
        if not 0 <= i < self.vocab_size:
            raise ValueError(f"token id {i} is outside the vocabulary (size {self.vocab_size})")
        return self.vocab[i]

    def _is_kmer(self, i: int) -> bool:
        return self.kmer_offset <= i <= self.n_kmer_id and self.k > 1

    def decode(self, ids, skip_special: bool = True) -> str:
        """Bases of ``ids``: overlapping k-mers contribute their last ``stride`` bases after the first; special
        tokens are skipped (or written as ``<cls>`` etc. with ``skip_special=False``); padding is always skipped."""
        out: List[str] = []
        prev_kmer = False
        for i in self._id_list(ids, "decode"):
            tok = self._token(i)
            if i < self.num_special:
                if not skip_special and i != self.pad_id:
                    out.append(tok)
                prev_kmer = False
                continue
            if self._is_kmer(i):
                out.append(tok[self.k - self.stride:] if prev_kmer else tok)
                prev_kmer = True
            else:
                out.append(tok)
                prev_kmer = False
        return "".join(out)

    # ---- persistence --------------------------------------------------------------------------------------
    def save(self, path: Union[str, Path]) -> Path:
        """Write JSON atomically to ``path`` (a ``.json`` file) or ``path/dna_tokenizer.json`` (a model folder)."""
        from zoo.io import atomic_write_text
        path = Path(path)
        file = path if path.suffix == ".json" else path / TOKENIZER_FILE
        doc = {"format": _FORMAT, "class": "DNATokenizer", "config": self.config(), "vocab": self.vocab}
        return atomic_write_text(file, json.dumps(doc, indent=1) + "\n")

    @classmethod
    def load(cls, path: Union[str, Path]) -> "DNATokenizer":
        path = as_path(path, "tokenizer path")
        file = path / TOKENIZER_FILE if path.is_dir() else path
        if not file.is_file():
            raise FileNotFoundError(f"no DNA tokenizer at {file} (expected {TOKENIZER_FILE} or a .json file)")
        try:
            doc = json.loads(file.read_text(encoding="utf-8"))
            if doc.get("format") != _FORMAT or doc.get("class") != "DNATokenizer":
                raise ValueError(f"format {doc.get('format')!r} / class {doc.get('class')!r}, expected "
                                 f"{_FORMAT} / 'DNATokenizer'")
            tok = cls(**doc["config"])
        except (ValueError, KeyError, TypeError, AttributeError) as e:
            raise ValueError(f"{file}: not a valid DNA tokenizer file: {e}") from e
        if doc.get("vocab") != tok.vocab:
            raise ValueError(f"{file}: stored vocabulary differs from the one {tok!r} defines (edited file, or "
                             f"written by an incompatible version)")
        return tok


def nucleotide_tokenizer(iupac: bool = False) -> DNATokenizer:
    """One token per base: A C G T N (+ the other IUPAC codes with ``iupac=True``)."""
    return DNATokenizer(k=1, iupac=iupac)


def kmer_tokenizer(k: int, overlapping: bool = True, remainder: str = "bases") -> DNATokenizer:
    """k-mers with stride 1 (``overlapping``) or stride k."""
    return DNATokenizer(k=k, stride=1 if overlapping else k, remainder=remainder)


def codon_tokenizer(frame: int = 0, remainder: str = "bases") -> DNATokenizer:
    """Non-overlapping 3-mers from base ``frame``; bases before the frame and after the last codon follow
    ``remainder``."""
    return DNATokenizer(k=3, stride=3, frame=frame, remainder=remainder)


class ReverseComplement:
    """Augmentation: with probability ``p`` replace a sequence by its IUPAC reverse complement (and reverse its
    soft mask). Seeded, so a given ``seed`` gives the same flips in the same order."""

    def __init__(self, p: float = 0.5, seed: Optional[int] = None):
        if not 0.0 <= p <= 1.0:
            raise ValueError(f"p={p}: must be a probability in [0, 1]")
        self.p = float(p)
        self.rng = random.Random(seed)

    def __call__(self, seq: str, soft_mask: Optional[np.ndarray] = None) -> Tuple[str, Optional[np.ndarray]]:
        if self.rng.random() < self.p:
            return reverse_complement(seq), (None if soft_mask is None else soft_mask[::-1].copy())
        return seq, soft_mask
