"""Streaming readers for nucleotide sequence files (FASTA, FASTQ, GenBank; plain, gzip, bgzip, bz2, xz).

Parsing is done by biopython (``Bio.SeqIO``), imported only when a file is read. Records are yielded one at a time
and the file is never held in memory::

    for rec in read_sequences("reads.fastq.gz", labels=HeaderLabels(field=1, sep="|")):
        rec.id, rec.seq, rec.label, rec.number      # number: 1-based record number in the file

Compression is detected from the first bytes, not the file name (``1f 8b`` gzip and BGZF, ``BZh`` bz2,
``fd 37 7a 58 5a 00`` xz), and nested gzip (a ``.bgz.gz``) is unwrapped. The format is sniffed from the first
non-blank decompressed line (``>`` FASTA, ``@`` FASTQ, ``LOCUS`` GenBank) unless ``format=`` is given.

Sequence policy (``SequencePolicy``; every skip is counted in ``SequenceReader.skipped[reason]``)::

    case       "upper" (default)  soft-masked lower case is upper-cased
               "mask"             upper-cased too, and ``rec.soft_mask`` (bool [len]) is True where it was lower
    ambiguous  "keep"  (default)  IUPAC codes N R Y S W K M B D H V stay in ``rec.seq`` (tokenizers map them to N)
               "replace"          each ambiguity code becomes N
               "drop"             the record is skipped (reason "ambiguous")
               "error"            SequenceFormatError
    invalid    "error" (default)  any other character (digits, '*', '-', '.', X, ...) raises SequenceFormatError
               "drop"             the record is skipped (reason "invalid")
    protein    "error" (default)  a record with amino-acid-only letters (E F I J L O P Q Z) or a GenBank
               "drop"             molecule_type of protein is protein: error, or skipped (reason "protein")
    empty      "error" (default)  a record with no sequence (or a GenBank record without ORIGIN data)
               "drop"             is an error, or skipped (reason "empty")
    missing_label "error" (default) / "drop": a record whose label cannot be found (only when labels are asked for)
    rna        True (default)     U is read as T

An empty file (no records at all) raises ``SequenceFormatError`` unless ``allow_empty=True``.
"""
from __future__ import annotations

import bz2
import csv
import gzip
import io
import lzma
import os
import re
import warnings
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Dict, Iterator, List, Optional, Union

import numpy as np

__all__ = [
    "INSTALL_HINT", "NUCLEOTIDES", "AMBIGUOUS", "IUPAC", "PROTEIN_ONLY", "COMPLEMENT",
    "SequenceFormatError", "SequencePolicy", "NucleotideRecord", "HeaderLabels", "CsvLabels",
    "as_path", "open_text", "detect_compression", "detect_format", "SequenceReader", "read_sequences", "count_records",
    "reverse_complement",
]

PathLike = Union[str, os.PathLike]
INSTALL_HINT = 'pip install "zoo-pe[genomics]"'
NUCLEOTIDES = "ACGT"
AMBIGUOUS = "NRYSWKMBDHV"
IUPAC = NUCLEOTIDES + AMBIGUOUS
PROTEIN_ONLY = "EFIJLOPQZ"  # letters that are amino acids but never IUPAC nucleotide codes
COMPLEMENT = {"A": "T", "C": "G", "G": "C", "T": "A", "N": "N", "R": "Y", "Y": "R", "S": "S", "W": "W",
              "K": "M", "M": "K", "B": "V", "V": "B", "D": "H", "H": "D"}
_RC_TABLE = str.maketrans({**COMPLEMENT, **{k.lower(): v.lower() for k, v in COMPLEMENT.items()}})
FORMATS = ("fasta", "fastq", "genbank")
_MAGIC = {b"\x1f\x8b": "gzip", b"BZh": "bz2", b"\xfd7zXZ\x00": "xz", b"\x28\xb5\x2f\xfd": "zstd"}


class SequenceFormatError(ValueError):
    """Malformed or policy-violating input; the message names the file and, when known, the record."""


def _bio_seqio():
    try:
        from Bio import SeqIO
    except ImportError as e:
        raise ImportError(f"the genomics domain needs biopython ({e}); install it with: {INSTALL_HINT}") from e
    return SeqIO


def reverse_complement(seq: str) -> str:
    """Reverse complement with IUPAC codes (N->N, R<->Y, K<->M, B<->V, D<->H, S and W fixed); case is kept.

    Characters without a complement raise ``ValueError`` (a silent pass-through would not be an involution)."""
    if not isinstance(seq, str):
        raise TypeError(f"reverse_complement() takes a str, got {type(seq).__name__}")
    bad = set(seq) - _RC_TABLE_KEYS
    if bad:
        raise ValueError(f"reverse_complement: no IUPAC complement for {''.join(sorted(bad))!r} "
                         f"(RNA: convert U to T first)")
    return seq.translate(_RC_TABLE)[::-1]


_RC_TABLE_KEYS = frozenset(COMPLEMENT) | frozenset(k.lower() for k in COMPLEMENT)


# ---------------------------------------------------------------------------------------------------------------
# Policy, records, labels
# ---------------------------------------------------------------------------------------------------------------

def _check_choice(name: str, value: str, choices) -> str:
    if value not in choices:
        raise ValueError(f"SequencePolicy.{name}={value!r}; expected one of {list(choices)}")
    return value


@dataclass(frozen=True)
class SequencePolicy:
    """What to do with lower case, IUPAC ambiguity codes, other characters, protein and empty records."""
    case: str = "upper"
    ambiguous: str = "keep"
    invalid: str = "error"
    protein: str = "error"
    empty: str = "error"
    missing_label: str = "error"
    rna: bool = True

    def __post_init__(self):
        _check_choice("case", self.case, ("upper", "mask"))
        _check_choice("ambiguous", self.ambiguous, ("keep", "replace", "drop", "error"))
        for name in ("invalid", "protein", "empty", "missing_label"):
            _check_choice(name, getattr(self, name), ("error", "drop"))
        if not isinstance(self.rna, bool):
            raise TypeError(f"SequencePolicy.rna={self.rna!r}; expected True or False")


@dataclass
class NucleotideRecord:
    """One record after the policy: ``seq`` upper-case IUPAC; ``number`` 1-based position in the file."""
    id: str
    description: str
    seq: str
    number: int
    label: Optional[str] = None
    soft_mask: Optional[np.ndarray] = None  # bool [len(seq)], only with case="mask"
    quality: Optional[List[int]] = None     # FASTQ phred scores

    def __len__(self) -> int:
        return len(self.seq)


class HeaderLabels:
    """Label from the header line (``>``-line without ``>``, or GenBank ``id description``).

    ``pattern``: a regex searched in the header; the label is group ``label`` if the pattern names one, else group 1,
    else the whole match. ``field``: index (negative counts from the end) into the header split on ``sep``
    (``None`` = whitespace; ``";"``, ``"|"``, ``"\\t"`` or any string), fields stripped of spaces.
    Returns ``None`` when the pattern does not match or the field does not exist.
    """

    def __init__(self, pattern: Optional[str] = None, *, field: Optional[int] = None, sep: Optional[str] = None):
        if (pattern is None) == (field is None):
            raise ValueError("HeaderLabels needs exactly one of pattern= (a regex) or field= (an index)")
        try:
            self.pattern = re.compile(pattern) if pattern is not None else None
        except (re.error, TypeError) as e:
            raise ValueError(f"HeaderLabels pattern {pattern!r} is not a regular expression ({e})") from None
        self.field, self.sep = field, sep

    def __call__(self, record_id: str, header: str) -> Optional[str]:
        if self.pattern is not None:
            m = self.pattern.search(header)
            if m is None:
                return None
            if "label" in self.pattern.groupindex:
                value = m.group("label")
            else:
                value = m.group(1) if self.pattern.groups else m.group(0)
            return value.strip() if value is not None and value.strip() else None
        parts = header.split(self.sep) if self.sep is not None else header.split()
        try:
            value = parts[self.field].strip()
        except IndexError:
            return None
        return value or None

    def __repr__(self) -> str:
        if self.pattern is not None:
            return f"HeaderLabels({self.pattern.pattern!r})"
        return f"HeaderLabels(field={self.field}, sep={self.sep!r})"


class CsvLabels:
    """Labels from a CSV/TSV file mapping record id -> label (read once, delimiter sniffed from the header line).

    ``id_column`` / ``label_column``: column names, or ints for files without a header row."""

    def __init__(self, path: PathLike, id_column: Union[str, int] = "id", label_column: Union[str, int] = "label"):
        self.path = as_path(path, "label file")
        _check_file(self.path, "label file")
        self.mapping: Dict[str, str] = {}
        try:
            self._read(id_column, label_column)
        except UnicodeDecodeError as e:
            raise ValueError(f"{self.path}: not UTF-8 text ({e})") from None
        if not self.mapping:
            raise ValueError(f"{self.path}: no labels (the file has no data rows)")

    def _read(self, id_column: Union[str, int], label_column: Union[str, int]) -> None:
        with open(self.path, newline="", encoding="utf-8") as f:
            first = f.readline()
            delim = "\t" if "\t" in first else ","
            f.seek(0)
            rows = csv.reader(f, delimiter=delim)
            if isinstance(id_column, int) and isinstance(label_column, int):
                ci, cl = id_column, label_column
            else:
                header = next(rows, [])
                try:
                    ci, cl = header.index(str(id_column)), header.index(str(label_column))
                except ValueError:
                    raise ValueError(f"{self.path}: header {header} lacks column {id_column!r} or "
                                     f"{label_column!r}") from None
            for lineno, row in enumerate(rows, start=2 if not isinstance(id_column, int) else 1):
                if not row or not "".join(row).strip():
                    continue
                if max(ci, cl) >= len(row):
                    raise ValueError(f"{self.path}, line {lineno}: {len(row)} columns, need column {max(ci, cl)}")
                key = row[ci].strip()
                if key in self.mapping and self.mapping[key] != row[cl].strip():
                    raise ValueError(f"{self.path}, line {lineno}: id {key!r} has two labels "
                                     f"({self.mapping[key]!r} and {row[cl].strip()!r})")
                self.mapping[key] = row[cl].strip()

    #: labels are looked up by record id, so a file whose ids repeat cannot be labelled unambiguously
    keyed_by_id = True

    def __call__(self, record_id: str, header: str) -> Optional[str]:
        return self.mapping.get(record_id) or None

    def __len__(self) -> int:
        return len(self.mapping)

    def __repr__(self) -> str:
        return f"CsvLabels({str(self.path)!r})"


LabelFn = Callable[[str, str], Optional[str]]


# ---------------------------------------------------------------------------------------------------------------
# Opening and sniffing
# ---------------------------------------------------------------------------------------------------------------

def detect_compression(head: bytes) -> Optional[str]:
    """``"gzip"`` (also BGZF), ``"bz2"``, ``"xz"``, ``"zstd"`` from magic bytes, or ``None`` for plain data."""
    for magic, name in _MAGIC.items():
        if head.startswith(magic):
            return name
    return None


def as_path(path, what: str) -> Path:
    """``path`` (str or os.PathLike) as a ``Path``; anything else is a ``TypeError`` naming ``what``."""
    if isinstance(path, bytes):
        path = os.fsdecode(path)
    if not isinstance(path, (str, os.PathLike)):
        raise TypeError(f"{what} must be a path (str or os.PathLike), got {type(path).__name__}")
    return Path(path)


def _check_file(path: Path, what: str) -> None:
    """Raise unless ``path`` is a regular file: a directory, a missing path and a pipe or device each say so."""
    if path.is_dir():
        raise IsADirectoryError(f"{what} {path} is a directory, not a file")
    if not path.exists():
        raise FileNotFoundError(f"{what} {path} does not exist")
    if not path.is_file():
        raise SequenceFormatError(f"{what} {path} is not a regular file (a pipe or a device?): it is opened more "
                                  f"than once (format sniffing, then parsing); write it to a file first")


def _stream_errors() -> tuple:
    """Exceptions a truncated or corrupt (compressed) stream raises while it is read."""
    import zlib
    return EOFError, OSError, zlib.error, lzma.LZMAError


def _stream_error_message(where: object, e: BaseException, after: str = "") -> str:
    """``where``: the file (and record) to name; ``after``: " after record ..." when records were read."""
    if isinstance(e, EOFError):
        return (f"{where}: the data ends early{after}: a truncated file or an interrupted download? "
                f"({type(e).__name__}: {e})")
    return f"{where}: the compressed data is corrupt{after} ({type(e).__name__}: {e})"


class _Decompressed(io.BufferedReader):
    """A decompressing layer that closes the stream below it too (``GzipFile`` and friends leave it open)."""

    def __init__(self, raw, source):
        super().__init__(raw)
        self._source = source

    def close(self) -> None:
        try:
            super().close()
        finally:
            self._source.close()


def _open_binary(path: Path, max_depth: int = 3):
    """A binary stream of the decompressed content; nested gzip layers are unwrapped."""
    stream = open(path, "rb")
    try:
        for _ in range(max_depth + 1):
            kind = detect_compression(stream.peek(8)[:8])
            if kind is None:
                return stream
            if kind == "zstd":
                raise SequenceFormatError(f"{path}: zstd-compressed; decompress it first (`zstd -d`) or use gzip")
            if kind == "gzip":
                layer = gzip.GzipFile(fileobj=stream, mode="rb")
            else:
                layer = {"bz2": bz2.BZ2File, "xz": lzma.LZMAFile}[kind](stream, mode="rb")
            stream = _Decompressed(layer, stream)
        raise SequenceFormatError(f"{path}: more than {max_depth} nested compression layers")
    except _stream_errors() as e:
        stream.close()
        raise SequenceFormatError(_stream_error_message(path, e)) from e
    except BaseException:
        stream.close()
        raise


def open_text(path: PathLike):
    """Open ``path`` for reading as text, decompressing by magic bytes. Bad bytes are an error at read time."""
    path = as_path(path, "sequence file")
    _check_file(path, "sequence file")
    return io.TextIOWrapper(_open_binary(path), encoding="ascii", errors="strict", newline=None)


def detect_format(path: PathLike) -> Optional[str]:
    """``"fasta"``, ``"fastq"`` or ``"genbank"`` from the first non-blank line; ``None`` for an empty file.

    Only the start of the file is read."""
    path = as_path(path, "sequence file")
    with open_text(path) as f:
        try:
            for line in f:
                s = line.strip()
                if not s:
                    continue
                if s.startswith(">"):
                    return "fasta"
                if s.startswith("@"):
                    return "fastq"
                if s.startswith("LOCUS") or "Genetic Sequence Data Bank" in s:  # the latter: release-file header
                    return "genbank"
                raise SequenceFormatError(f"{path}: cannot tell the format from its first line {s[:60]!r} "
                                          f"(expected '>' FASTA, '@' FASTQ or 'LOCUS' GenBank); pass format=")
        except UnicodeDecodeError as e:
            raise SequenceFormatError(f"{path}: unreadable ({type(e).__name__}: {e})") from e
        except _stream_errors() as e:
            raise SequenceFormatError(_stream_error_message(path, e)) from e
    return None


# ---------------------------------------------------------------------------------------------------------------
# Reader
# ---------------------------------------------------------------------------------------------------------------

_PROTEIN_RE = re.compile(f"[{PROTEIN_ONLY}]")
_AMBIG_RE = re.compile(f"[{AMBIGUOUS}]")
_INVALID_RE = re.compile(f"[^{IUPAC}]")
_GENBANK_LENGTH = re.compile(r"Expected sequence length (\d+), found (\d+) \((.*)\)")


class SequenceReader:
    """A re-iterable, streaming view of one sequence file; ``skipped`` counts records dropped by the policy.

    Args:
        path: FASTA / FASTQ / GenBank file, plain or compressed.
        format: ``"fasta"``, ``"fastq"`` or ``"genbank"``; sniffed from the content when ``None``.
        policy: a ``SequencePolicy`` (see the module docstring).
        labels: ``HeaderLabels``, ``CsvLabels`` or any ``f(record_id, header) -> label or None``.
        allow_empty: an empty file yields nothing instead of raising.
    """

    def __init__(self, path: PathLike, format: Optional[str] = None, *, policy: Optional[SequencePolicy] = None,
                 labels: Optional[LabelFn] = None, allow_empty: bool = False):
        self.path = as_path(path, "sequence file")
        _check_file(self.path, "sequence file")
        if format is not None and format not in FORMATS:
            raise ValueError(f"format={format!r}; expected one of {list(FORMATS)} or None to sniff it")
        if policy is not None and not isinstance(policy, SequencePolicy):
            raise TypeError(f"policy must be a SequencePolicy, got {type(policy).__name__}")
        if labels is not None and not callable(labels):
            raise TypeError(f"labels must be HeaderLabels, CsvLabels or a function (record_id, header) -> label, "
                            f"got {type(labels).__name__}")
        self.format = format
        self.policy = policy or SequencePolicy()
        self.labels = labels
        self.allow_empty = allow_empty
        self.skipped: Counter = Counter()
        self.records_read = 0   # records parsed in the last full or partial pass
        self.records_yielded = 0

    def _where(self, number: int, rid: Optional[str] = None) -> str:
        return f"{self.path}, record {number}" + (f" ({rid!r})" if rid is not None else "")

    def _fail_or_skip(self, setting: str, reason: str, message: str) -> None:
        if setting == "error":
            raise SequenceFormatError(message)
        self.skipped[reason] += 1

    def __iter__(self) -> Iterator[NucleotideRecord]:
        fmt = self.format or detect_format(self.path)
        self.skipped = Counter()
        self.records_read = self.records_yielded = 0
        if fmt is None:
            if self.allow_empty:
                return
            raise SequenceFormatError(f"{self.path}: empty file (no records); pass allow_empty=True to accept it")
        SeqIO = _bio_seqio()
        from Bio import BiopythonParserWarning
        seen_nucleotide = 0
        by_id: Optional[Dict[str, int]] = {} if getattr(self.labels, "keyed_by_id", False) else None
        with open_text(self.path) as handle:
            it = None
            number = 0
            last_id = None
            while True:
                after = f" after record {number} ({last_id!r})" if number else ""
                try:
                    with warnings.catch_warnings():
                        if fmt == "genbank":  # biopython only warns when LOCUS and ORIGIN disagree
                            warnings.filterwarnings("error", message=_GENBANK_LENGTH.pattern,
                                                    category=BiopythonParserWarning)
                        if it is None:  # the FASTA parser reads the first line when created
                            it = SeqIO.parse(handle, fmt)
                        rec = next(it)
                except StopIteration:
                    break
                except BiopythonParserWarning as w:
                    m = _GENBANK_LENGTH.match(str(w))
                    if m is None:
                        raise
                    declared, found, rid = m.groups()
                    raise SequenceFormatError(
                        f"{self._where(number + 1, rid)}: LOCUS line says {declared} bp but the sequence has "
                        f"{found} bases (the file ends inside ORIGIN, or the LOCUS line is wrong)") from None
                except _stream_errors() as e:
                    raise SequenceFormatError(_stream_error_message(self._where(number + 1), e, after)) from e
                except (ValueError, UnicodeDecodeError, AssertionError) as e:
                    raise SequenceFormatError(f"{self._where(number + 1)}: malformed {fmt}{after} "
                                              f"({type(e).__name__}: {e})") from e
                number += 1
                last_id = rec.id
                self.records_read = number
                if by_id is not None:
                    if rec.id in by_id:
                        raise SequenceFormatError(f"{self._where(number, rec.id)}: id already used by record "
                                                  f"{by_id[rec.id]}; labels looked up by id ({self.labels!r}) "
                                                  f"cannot tell the two apart")
                    by_id[rec.id] = number
                out = self._apply(rec, number, fmt, seen_nucleotide)
                if out is not None:
                    seen_nucleotide += 1
                    self.records_yielded += 1
                    yield out
        if number == 0 and not self.allow_empty:
            raise SequenceFormatError(f"{self.path}: no {fmt} records found (empty file?); "
                                      f"pass allow_empty=True to accept it")

    def _apply(self, rec, number: int, fmt: str, seen_nucleotide: int) -> Optional[NucleotideRecord]:
        p = self.policy
        rid = rec.id
        where = self._where(number, rid)
        try:
            raw = str(rec.seq)
        except Exception:  # Bio.Seq.UndefinedSequenceError: GenBank record without ORIGIN data
            raw = ""
        raw = "".join(raw.split())
        if not raw:
            self._fail_or_skip(p.empty, "empty", f"{where}: record has no sequence")
            return None
        upper = raw.upper()
        mol = (getattr(rec, "annotations", None) or {}).get("molecule_type", "")
        protein_letters = sorted(set(_PROTEIN_RE.findall(upper)))
        if protein_letters or str(mol).lower() == "protein":
            mixed = (f"mixed DNA/protein input: {seen_nucleotide} earlier record(s) were nucleotide; "
                     if seen_nucleotide else "")
            why = (f"letters {', '.join(protein_letters)} are amino acids, not nucleotide codes" if protein_letters
                   else "GenBank molecule_type is protein")
            self._fail_or_skip(p.protein, "protein", f"{where}: {mixed}looks like a protein sequence ({why}); "
                                                     f"this reader takes DNA/RNA only")
            return None
        if p.rna:
            upper = upper.replace("U", "T")
        bad = _INVALID_RE.search(upper)
        if bad is not None:
            chars = "".join(sorted(set(_INVALID_RE.findall(upper))))
            self._fail_or_skip(p.invalid, "invalid", f"{where}: character {bad.group()!r} at position "
                                                     f"{bad.start() + 1} is not a nucleotide code (all: {chars!r})")
            return None
        amb = _AMBIG_RE.search(upper)
        if amb is not None:
            if p.ambiguous == "error":
                raise SequenceFormatError(f"{where}: ambiguity code {amb.group()!r} at position {amb.start() + 1} "
                                          f"(policy ambiguous='error')")
            if p.ambiguous == "drop":
                self.skipped["ambiguous"] += 1
                return None
            if p.ambiguous == "replace":
                upper = _AMBIG_RE.sub("N", upper)
        label = None
        header = rec.description if fmt != "genbank" else f"{rid} {rec.description}"
        if self.labels is not None:
            label = self.labels(rid, header)
            if label is None:
                self._fail_or_skip(p.missing_label, "missing_label", f"{where}: no label found for this record "
                                                                     f"by {self.labels!r}")
                return None
        soft_mask = None
        if p.case == "mask":
            soft_mask = np.frombuffer(raw.encode("ascii"), dtype=np.uint8) >= ord("a")
        quality = None
        if fmt == "fastq":
            quality = list(rec.letter_annotations.get("phred_quality", []))
        return NucleotideRecord(id=rid, description=header, seq=upper, number=number, label=label,
                                soft_mask=soft_mask, quality=quality)


def read_sequences(path: PathLike, format: Optional[str] = None, **kwargs) -> Iterator[NucleotideRecord]:
    """Stream the records of ``path`` (see ``SequenceReader`` for the arguments)."""
    return iter(SequenceReader(path, format, **kwargs))


def count_records(path: PathLike) -> int:
    """Records in a FASTA/FASTQ/GenBank file counted by the policy-free parser (streamed)."""
    path = as_path(path, "sequence file")
    fmt = detect_format(path)
    if fmt is None:
        return 0
    SeqIO = _bio_seqio()
    with open_text(path) as handle:
        try:
            return sum(1 for _ in SeqIO.parse(handle, fmt))
        except _stream_errors() as e:
            raise SequenceFormatError(_stream_error_message(Path(path), e)) from e
        except (ValueError, UnicodeDecodeError) as e:
            raise SequenceFormatError(f"{path}: malformed {fmt} ({type(e).__name__}: {e})") from e
