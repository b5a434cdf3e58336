"""Bad input for the genomics domain: sequence files (every format, plain and every compression), label files, the
dataset loaders, the tokenizers and every registered DNA model.

Cases are built by looping over what the domain declares (``io.FORMATS``, the compressions ``io`` detects,
``data.DATASETS``, the tokenizer factories in ``tokenizers.__all__``, ``zoo.list_models(domain="genomics")``), so a
new format, dataset, tokenizer or model is covered at once.  Samples are cut from the real files scripts/setup.sh
installs (16S FASTA, biopython's GenBank fixtures, the mlbench / kernlab .rda files).
"""
import bz2
import gzip
import json
import lzma
import os
import re
from functools import lru_cache
from pathlib import Path

import numpy as np
import pytest
import torch

import zoo
from domains.genomics import data as gdata
from domains.genomics import io as gio
from domains.genomics import tokenizers as gtok
from domains.genomics.io import SequenceFormatError
from zoo.errors import DatasetNotFoundError

from .matrix import Case, check_case, params

pytestmark = pytest.mark.debian_data("microbiomeutil-data", "python-biopython-doc", "r-cran-kernlab", "r-cran-mlbench")

GB = Path("/usr/share/doc/python-biopython-doc/Tests/GenBank")
COMPRESS = {"gzip": gzip.compress, "bz2": bz2.compress, "xz": lzma.compress}
assert set(COMPRESS) | {"zstd"} == set(gio._MAGIC.values()), "a compression io detects has no cases here"


# ---- samples cut from the real files ---------------------------------------------------------------------------

@lru_cache(None)
def _fasta_records(n: int = 5):
    """(id, header, sequence) of the first ``n`` 16S records, by a naive line scan."""
    out = []
    with open(gdata.RRNA16S_PATH) as f:
        for line in f:
            if line.startswith(">"):
                if len(out) == n:
                    break
                out.append([line[1:].rstrip("\n"), []])
            else:
                out[-1][1].append(line.strip())
    return tuple((h.split()[0], h, "".join(s)) for h, s in out)


def _sample(fmt: str) -> str:
    """A small valid file of ``fmt`` (every entry of ``io.FORMATS`` must have one)."""
    recs = _fasta_records()
    if fmt == "fasta":
        return "".join(f">{h}\n{s[:300]}\n" for _, h, s in recs)
    if fmt == "fastq":
        return "".join(f"@{i}\n{s[:300]}\n+\n{'I' * len(s[:300])}\n" for i, _, s in recs)
    if fmt == "genbank":
        return (GB / "pri1.gb").read_text()
    raise AssertionError(f"no sample for format {fmt!r}")


SAMPLE_COUNT = {"fasta": 5, "fastq": 5, "genbank": 1}


def _assert(ok: bool, what) -> None:
    assert ok, what


def _write(tmp: Path, name: str, data) -> Path:
    f = tmp / name
    f.write_bytes(data.encode() if isinstance(data, str) else data)
    return f


def _read(path, **kw):
    return list(gio.read_sequences(path, **kw))


# sequence-file entry points: each takes a path and reads the whole file
READERS = {"read_sequences": _read, "count_records": gio.count_records, "detect_format": gio.detect_format}


def _fifo(tmp: Path) -> Path:
    f = tmp / "pipe"
    os.mkfifo(f)
    return f


def _dev_zero(tmp: Path) -> Path:
    f = tmp / "endless.fa"
    f.symlink_to("/dev/zero")
    return f


def _mkdir(d: Path) -> Path:
    d.mkdir()
    return d


def _check_all_records(result, tmp_path):
    fmt, recs = result
    assert len(recs) == SAMPLE_COUNT[fmt] and all(len(r) > 0 for r in recs), f"{len(recs)} records"


def _check_prefix_of_cut(recs, tmp_path):
    want = [s[:300].upper() for _, _, s in _fasta_records()]
    assert [r.seq for r in recs[:-1]] == want[:-1]
    assert want[-1].startswith(recs[-1].seq) and len(recs[-1]) < len(want[-1])


CASES = []


def add(*a, **kw):
    CASES.append(Case(*a, **kw))


# ---- sequence files: per entry point --------------------------------------------------------------------------

for rname, reader in READERS.items():
    add(f"{rname}-path-int", "wrong type", f"{rname}(123) is a TypeError naming the sequence file argument",
        lambda t, r=reader: r(123), TypeError, r"sequence file must be a path.*int")
    add(f"{rname}-directory", "adversarial path", f"{rname}(a directory) says it is a directory",
        lambda t, r=reader: r(t), IsADirectoryError, r"is a directory")
    add(f"{rname}-missing", "adversarial path", f"{rname}(a missing file) names the file",
        lambda t, r=reader: r(t / "nope.fa"), FileNotFoundError, r"nope\.fa does not exist")
    add(f"{rname}-fifo", "adversarial path", f"{rname}(a FIFO) refuses it without blocking on open",
        lambda t, r=reader: r(_fifo(t)), SequenceFormatError, r"pipe is not a regular file")
    add(f"{rname}-dev-zero", "adversarial path", f"{rname}(a link to /dev/zero) refuses the endless device",
        lambda t, r=reader: r(_dev_zero(t)), SequenceFormatError, r"endless\.fa is not a regular file")
    add(f"{rname}-zstd", "corrupt", f"{rname} on zstd data says to decompress it (no zstd reader)",
        lambda t, r=reader: r(_write(t, "x.fa.zst", b"\x28\xb5\x2f\xfd" + bytes(40))), SequenceFormatError,
        r"x\.fa\.zst: zstd-compressed")
    for kind, comp in COMPRESS.items():
        add(f"{rname}-{kind}-garbage", "corrupt", f"{rname} on a {kind} header followed by noise names the file",
            lambda t, r=reader, k=kind, c=comp: r(_write(t, f"noise.{k}", c(_sample("fasta").encode())[:10]
                                                        + np.random.default_rng(0).bytes(500))),
            SequenceFormatError, r"noise\.\w+: .*(corrupt|ends early)")


# ---- sequence files: per format ----------------------------------------------------------------------------------

for fmt in gio.FORMATS:
    add(f"{fmt}-path-with-spaces-and-unicode", "adversarial path",
        f"a {fmt} file under a path with spaces and non-ASCII letters reads normally",
        lambda t, f=fmt: (f, _read(_write(_mkdir(t / "dir with spaces ä"), "r é.seq", _sample(f)))),
        check=_check_all_records)
    add(f"{fmt}-empty-file", "empty", f"an empty file given as {fmt} is an error naming the file",
        lambda t, f=fmt: _read(_write(t, "empty.seq", ""), format=f), SequenceFormatError,
        r"empty\.seq: .*empty file")
    add(f"{fmt}-empty-file-allowed", "empty", f"an empty {fmt} file with allow_empty=True gives no records",
        lambda t, f=fmt: _read(_write(t, "empty.seq", ""), format=f, allow_empty=True),
        check=lambda recs, t: _assert(recs == [], recs))
    add(f"{fmt}-format-name", "out of range", "an unknown format= is refused, naming the choices",
        lambda t, f=fmt: _read(_write(t, "x.seq", _sample(f)), format=f + "2"), ValueError,
        rf"format='{fmt}2'; expected one of")
    for kind, comp in COMPRESS.items():
        # bz2 decompresses whole 900 kB blocks: a cut small file yields no record before the error
        named = "" if kind == "bz2" else r", record \d+: the data ends early after record \d+ \('[^']+'\)"
        add(f"{fmt}-{kind}-cut-mid-stream", "interrupted",
            f"a {fmt} {kind} stream cut short (interrupted download) names the file"
            + ("" if kind == "bz2" else " and the last record read"),
            lambda t, f=fmt, c=comp: _read(_write(t, "cut.seq.z", c((_sample(f) * 40).encode())[:-40])),
            SequenceFormatError, r"cut\.seq\.z" + (named or ": the data ends early"))
        add(f"{fmt}-{kind}-cut-in-header", "interrupted",
            f"a {fmt}.{kind} cut inside the compression header names the file",
            lambda t, f=fmt, c=comp: _read(_write(t, "head.seq.z", c(_sample(f).encode())[:12])),
            SequenceFormatError, r"head\.seq\.z: the data ends early")
    add(f"{fmt}-empty-gzip", "empty", f"a gzip holding nothing, read as {fmt}, is an error naming the file",
        lambda t, f=fmt: _read(_write(t, "nothing.gz", gzip.compress(b"")), format=f), SequenceFormatError,
        r"nothing\.gz: .*empty file")
    add(f"{fmt}-binary-bytes", "corrupt", f"non-ASCII bytes in a {fmt} file name the file",
        lambda t, f=fmt: _read(_write(t, "bin.seq", _sample(f).encode().replace(b"A", b"\xc3\x84", 1))),
        SequenceFormatError, r"bin\.seq.*(UnicodeDecodeError|unreadable)")
    add(f"{fmt}-policy-dict", "wrong type", "policy= that is not a SequencePolicy is a TypeError",
        lambda t, f=fmt: _read(_write(t, "x.seq", _sample(f)), policy={"case": "mask"}), TypeError,
        r"policy must be a SequencePolicy, got dict")
    add(f"{fmt}-labels-int", "wrong type", "labels= that is not callable is a TypeError",
        lambda t, f=fmt: _read(_write(t, "x.seq", _sample(f)), labels=5), TypeError, r"labels must be .*got int")


def _fasta_bad(t, body: str, name="bad.fa", **kw):
    return _read(_write(t, name, body), **kw)


add("fasta-non-iupac", "corrupt", "a character that is no nucleotide code names file, record and position",
    lambda t: _fasta_bad(t, ">ok\nACGT\n>bad\nACXT\n"), SequenceFormatError,
    r"bad\.fa, record 2 \('bad'\): character 'X' at position 3")
add("fasta-protein", "corrupt", "an amino-acid sequence names the record and the letters",
    lambda t: _fasta_bad(t, ">p\nMKELLPQIF\n"), SequenceFormatError, r"bad\.fa, record 1 \('p'\): .*protein")
add("fasta-text-before-first-header", "corrupt", "text before the first '>' is an error naming the file",
    lambda t: _fasta_bad(t, "ACGT\n>a\nACGT\n", format="fasta"), SequenceFormatError,
    r"bad\.fa, record 1: malformed fasta")
add("fasta-no-header-sniffed", "corrupt", "a file whose first line is no header cannot be sniffed and says so",
    lambda t: _fasta_bad(t, "ACGT\nACGT\n"), SequenceFormatError, r"bad\.fa: cannot tell the format")
add("fasta-record-without-sequence", "empty", "a header with no sequence names the record",
    lambda t: _fasta_bad(t, ">a\n>b\nACGT\n"), SequenceFormatError,
    r"bad\.fa, record 1 \('a'\): record has no sequence")
add("fasta-cut-after-header", "truncated", "a FASTA cut right after a header names the empty last record",
    lambda t: _read(_write(t, "cut.fa", "".join(f">{h}\n{s[:300]}\n" for _, h, s in _fasta_records()[:2])
                           + f">{_fasta_records()[2][1]}\n")),
    SequenceFormatError, r"cut\.fa, record 3 \('[^']+'\): record has no sequence")
add("fasta-cut-inside-sequence", "truncated",
    "FASTA carries no lengths: a cut inside the last sequence reads the records before it intact and the cut one "
    "as the prefix it is (compressed input detects the cut, see the interrupted cases)",
    lambda t: _read(_write(t, "cut.fa", _sample("fasta")[:-100])),
    check=_check_prefix_of_cut)
add("fastq-quality-length", "corrupt", "FASTQ quality shorter than the sequence names file and record",
    lambda t: _read(_write(t, "q.fq", "@r1\nACGT\n+\nIIII\n@r2\nACGT\n+\nIII\n")), SequenceFormatError,
    r"q\.fq, record 2: malformed fastq after record 1 \('r1'\).*differ")
add("fastq-missing-plus-line", "corrupt", "a FASTQ record without its '+' line names file and record",
    lambda t: _read(_write(t, "q.fq", "@r1\nACGT\nIIII\n")), SequenceFormatError, r"q\.fq, record 1: malformed fastq")
add("fastq-cut-mid-record", "truncated", "a FASTQ cut inside a record names the record after the last good one",
    lambda t: _read(_write(t, "cut.fq", _sample("fastq")[:-150])), SequenceFormatError,
    r"cut\.fq, record 5: malformed fastq after record 4 \('[^']+'\)")


def _pri1_cut(marker: str, extra: int) -> str:
    text = (GB / "pri1.gb").read_text()
    return text[:text.index(marker) + extra]


add("genbank-cut-inside-origin", "truncated", "a GenBank record cut inside ORIGIN gives both lengths, file and record",
    lambda t: _read(_write(t, "cut.gb", _pri1_cut("\nORIGIN", 400))), SequenceFormatError,
    r"cut\.gb, record 1 \('U05344\.1'\): LOCUS line says 741 bp but the sequence has \d+ bases")
add("genbank-cut-inside-features", "truncated", "a GenBank record cut inside FEATURES names file and record",
    lambda t: _read(_write(t, "cut.gb", _pri1_cut("FEATURES", 300))), SequenceFormatError,
    r"cut\.gb, record 1: malformed genbank")
add("genbank-locus-length-wrong", "corrupt", "a LOCUS length that disagrees with ORIGIN is an error",
    lambda t: _read(_write(t, "relabel.gb", re.sub(r"741 bp", "600 bp", (GB / "pri1.gb").read_text(), count=1))),
    SequenceFormatError, r"relabel\.gb, record 1 \('U05344\.1'\): LOCUS line says 600 bp .* 741 bases")
add("genbank-protein", "corrupt", "a protein GenBank record is refused, naming the record",
    lambda t: _read(GB / "protein_refseq.gb"), SequenceFormatError, r"protein_refseq\.gb, record 1 .*protein")
add("genbank-no-origin-no-end", "truncated", "a GenBank file with neither ORIGIN nor '//' names the file",
    lambda t: _read(GB / "no_origin_no_end.gb"), SequenceFormatError, r"no_origin_no_end\.gb, record 1: malformed")
add("policy-rna-str", "wrong type", "SequencePolicy(rna='no') is refused, not read as True",
    lambda t: gio.SequencePolicy(rna="no"), TypeError, r"SequencePolicy\.rna='no'")
add("policy-choice", "out of range", "a policy value outside its choices names the field and the choices",
    lambda t: gio.SequencePolicy(ambiguous="guess"), ValueError, r"SequencePolicy\.ambiguous='guess'; expected")
add("header-labels-bad-regex", "corrupt", "an invalid label regex names the pattern",
    lambda t: gio.HeaderLabels("(label"), ValueError, r"HeaderLabels pattern '\(label' is not a regular expression")
add("reverse-complement-int", "wrong type", "reverse_complement of a non-str is a TypeError",
    lambda t: gio.reverse_complement(5), TypeError, r"reverse_complement\(\) takes a str")
add("reverse-complement-invalid", "corrupt", "reverse_complement names the characters without a complement",
    lambda t: gio.reverse_complement("ACGX"), ValueError, r"no IUPAC complement for 'X'")
add("reader-closed-early", "interrupted", "a reader abandoned after one record closes its file; a new pass reads all",
    lambda t: _reopen_after_close(t), check=lambda n, t: _assert(n == 5, f"{n} records on the second pass"))


def _reopen_after_close(t):
    f = _write(t, "r.fa.gz", gzip.compress(_sample("fasta").encode()))
    reader = gio.SequenceReader(f)
    it = iter(reader)
    next(it)
    it.close()
    return len(list(reader))


# ---- label files ---------------------------------------------------------------------------------------------------

def _labelled(t, csv_text, fasta=">s1\nACGT\n>s2\nGGGG\n", name="labels.csv"):
    labels = gio.CsvLabels(_write(t, name, csv_text))
    return _read(_write(t, "s.fa", fasta), labels=labels)


add("labels-path-int", "wrong type", "CsvLabels(123) is a TypeError naming the label file",
    lambda t: gio.CsvLabels(123), TypeError, r"label file must be a path")
add("labels-directory", "adversarial path", "CsvLabels(a directory) says so",
    lambda t: gio.CsvLabels(t), IsADirectoryError, r"label file .* is a directory")
add("labels-missing", "adversarial path", "CsvLabels(a missing file) names it",
    lambda t: gio.CsvLabels(t / "none.csv"), FileNotFoundError, r"none\.csv does not exist")
add("labels-header-only", "empty", "a label file without rows names the file",
    lambda t: _labelled(t, "id,label\n"), ValueError, r"labels\.csv: no labels")
add("labels-empty-file", "empty", "an empty label file names the file and the missing columns",
    lambda t: _labelled(t, ""), ValueError, r"labels\.csv: header \[\] lacks column")
add("labels-not-utf8", "corrupt", "a label file that is not UTF-8 names the file",
    lambda t: gio.CsvLabels(_write(t, "labels.csv", b"id,label\ns1,\xff\xfe\n")), ValueError,
    r"labels\.csv: not UTF-8 text")
add("labels-conflicting", "corrupt", "one id with two labels names the file and line",
    lambda t: _labelled(t, "id,label\ns1,a\ns1,b\n"), ValueError, r"labels\.csv, line 3: id 's1' has two labels")
add("labels-missing-record", "corrupt", "a record the label file does not cover names file and record",
    lambda t: _labelled(t, "id,label\ns1,a\n"), SequenceFormatError, r"s\.fa, record 2 \('s2'\): no label found")
add("labels-duplicate-ids", "corrupt", "repeated record ids with id-keyed labels name both records",
    lambda t: _labelled(t, "id,label\ns1,a\ns2,b\n", fasta=">s1\nACGT\n>s2\nGG\n>s1\nTT\n"), SequenceFormatError,
    r"s\.fa, record 3 \('s1'\): id already used by record 1")
add("labels-short-row", "truncated", "a label row cut short names the file and line",
    lambda t: _labelled(t, "id,label\ns1,a\ns2\n"), ValueError, r"labels\.csv, line 3: 1 columns")


# ---- dataset loaders ---------------------------------------------------------------------------------------------

def _other_dataset_file(name: str) -> Path:
    return next(p for k, (_, p) in gdata._PACKAGES.items() if k != name)


for dname, loader in gdata.DATASETS.items():
    default = gdata._PACKAGES[dname][1]
    add(f"{dname}-path-int", "wrong type", f"{dname} loader with path=123 is a TypeError naming the path",
        lambda t, f=loader: f(path=123), TypeError, r"path must be a path")
    add(f"{dname}-directory", "adversarial path", f"{dname} loader given a directory says so",
        lambda t, f=loader: f(path=t), IsADirectoryError, r"is a directory")
    add(f"{dname}-missing", "adversarial path", f"{dname} loader given a missing file names the Debian package",
        lambda t, f=loader, d=default: f(path=t / d.name), DatasetNotFoundError,
        rf"{re.escape(default.name)} not found.*apt-get")
    add(f"{dname}-fifo", "adversarial path", f"{dname} loader given a FIFO refuses it without blocking",
        lambda t, f=loader: f(path=_fifo(t)), ValueError, r"pipe is not a regular file")
    add(f"{dname}-empty-file", "empty", f"{dname} loader given an empty file names the file",
        lambda t, f=loader: f(path=_write(t, "empty.dat", b"")), ValueError, r"empty\.dat: ")
    other = _other_dataset_file(dname)
    add(f"{dname}-another-datasets-file", "corrupt", f"{dname} loader given another dataset's file names it",
        lambda t, f=loader, o=other: f(path=o), ValueError, re.escape(other.name))
    if default.suffix == ".rda":
        add(f"{dname}-rda-cut", "truncated", f"{dname}: an .rda cut in half names the file",
            lambda t, f=loader, d=default: f(path=_write(t, "cut.rda", d.read_bytes()[:d.stat().st_size // 2])),
            ValueError, r"cut\.rda: not a readable R data file")


def _rda(t, name, obj):
    import rdata
    f = t / "x.rda"
    rdata.write_rda(str(f), {name: obj})
    return f


def _rda_head(path, name, n=4):
    import warnings

    import rdata
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return rdata.read_rda(str(path))[name].head(n).reset_index(drop=True).astype(str)


def _splice_with(t, row, col, value):
    frame = _rda_head(gdata.SPLICE_PATH, "DNA")
    frame.loc[row, col] = value
    return gdata.load_splice_junctions(path=_rda(t, "DNA", frame))


def _promoters_with(t, row, col, value):
    frame = _rda_head(gdata.PROMOTER_PATH, "promotergene")
    frame.loc[row, col] = value
    return gdata.load_promoters(path=_rda(t, "promotergene", frame))


add("splice-rda-vector", "corrupt", "an .rda whose DNA object is no data frame names the file and the type",
    lambda t: gdata.load_splice_junctions(path=_rda(t, "DNA", np.arange(3.0))), ValueError,
    r"x\.rda: object 'DNA' is a ndarray, not a data frame")
add("splice-rda-missing-columns", "corrupt", "an .rda data frame without V1..V180 names the missing columns",
    lambda t: gdata.load_splice_junctions(path=_rda(t, "DNA", _rda_head(gdata.SPLICE_PATH, "DNA").iloc[:, :50])),
    ValueError, r"x\.rda: object DNA lacks columns \['V51'")
add("splice-rda-not-indicator", "corrupt", "a cell that is no 0/1 indicator names row and column",
    lambda t: _splice_with(t, 2, "V5", "x"), ValueError, r"x\.rda: row 3, column V5: 'x' is not a 0/1 indicator")
def _splice_bad_triple(t):
    frame = _rda_head(gdata.SPLICE_PATH, "DNA")
    frame.loc[1, "V1"] = frame.loc[1, "V2"] = "1"                 # A and C at once: no base
    return gdata.load_splice_junctions(path=_rda(t, "DNA", frame))


add("splice-rda-bad-triple", "corrupt", "an indicator triple that is no base names the row",
    _splice_bad_triple, ValueError, r"x\.rda: row 2 has indicator triple")
add("promoters-rda-letter", "corrupt", "a letter that is not A/C/G/T names the row and the column",
    lambda t: _promoters_with(t, 1, "V7", "x"), ValueError, r"x\.rda: row 2 has 'X' at position 6 \(column V7\)")
add("promoters-rda-class", "corrupt", "an unknown class names it",
    lambda t: _promoters_with(t, 0, "Class", "?"), ValueError, r"x\.rda: unexpected classes \['\?'\]")
add("promoters-rda-list", "corrupt", "an .rda whose object is a list names the file and the type",
    lambda t: gdata.load_promoters(path=_rda(t, "promotergene", ["a", "c"])), ValueError,
    r"x\.rda: object 'promotergene' is a list, not a data frame")
add("16s-header-without-taxonomy", "corrupt", "a 16S header without the taxonomy field names the record",
    lambda t: gdata.load_16s(path=_write(t, "16s.fa", ">x no taxonomy\nACGT\n")), SequenceFormatError,
    r"16s\.fa, record 1 \('x'\): no label found")
add("16s-limit-zero", "out of range", "load_16s(limit=0) is refused (it would still read one record)",
    lambda t: gdata.load_16s(limit=0), ValueError, r"limit=0: must be a positive int")
add("16s-limit-float", "wrong type", "load_16s(limit=2.5) is refused, not rounded",
    lambda t: gdata.load_16s(limit=2.5), ValueError, r"limit=2\.5")
add("16s-top-n-zero", "out of range", "load_16s(top_n=0) names the argument",
    lambda t: gdata.load_16s(limit=5, top_n=0), ValueError, r"top_n=0")
add("16s-rank", "out of range", "an unknown taxonomy rank names the choices",
    lambda t: gdata.load_16s(limit=5, rank="species"), ValueError, r"rank='species'; expected one of")
add("split-fractions", "out of range", "split fractions that do not sum to 1 are refused",
    lambda t: gdata.stratified_split(["a", "b"], (0.5, 0.5, 0.5)), ValueError, r"fractions must be three")
add("lm-windows-zero", "out of range", "a window of 0 bases is refused",
    lambda t: gdata.lm_windows(["ACGT"], gtok.nucleotide_tokenizer(), 0), ValueError, r"window=0")
add("mlm-mask-list", "wrong type", "mlm_mask of a list is a TypeError",
    lambda t: gdata.mlm_mask([[7, 8]], gtok.nucleotide_tokenizer()), TypeError, r"mlm_mask\(\) takes an int tensor")
add("classification-tensors-str", "wrong type", "classification_tensors of a non-SequenceSet is a TypeError",
    lambda t: gdata.classification_tensors("ACGT", gtok.nucleotide_tokenizer()), TypeError, r"takes a SequenceSet")
add("classification-tensors-none-selected", "empty", "selecting no sequences names the dataset",
    lambda t: gdata.classification_tensors(gdata.SequenceSet("toy", ["a"], ["ACGT"], ["x"]),
                                           gtok.nucleotide_tokenizer(), indices=[]),
    ValueError, r"toy: no sequences selected")
add("sequence-set-mismatch", "corrupt", "labels that do not match the sequences in number are refused",
    lambda t: gdata.SequenceSet("toy", ["a", "b"], ["ACGT", "GG"], ["x"]), ValueError, r"toy: 2 ids, 2 seqs, 1 labels")


# ---- tokenizers --------------------------------------------------------------------------------------------------

TOKENIZER_ARGS = {"nucleotide_tokenizer": {}, "kmer_tokenizer": {"k": 3}, "codon_tokenizer": {"frame": 1}}
FACTORIES = {n: getattr(gtok, n) for n in gtok.__all__ if n.endswith("_tokenizer")}
assert set(FACTORIES) == set(TOKENIZER_ARGS), "a tokenizer factory has no sample arguments here"

for tname, make in FACTORIES.items():
    def tok(make=make, tname=tname):
        return make(**TOKENIZER_ARGS[tname])

    add(f"{tname}-encode-int", "wrong type", "encode(123) is a TypeError", lambda t, m=tok: m().encode(123),
        TypeError, r"encode\(\) takes a str, got int")
    add(f"{tname}-encode-batch-str", "wrong type", "encode_batch('ACGT') (a str, not a list) is a TypeError",
        lambda t, m=tok: m().encode_batch("ACGT"), TypeError, r"encode_batch\(\) takes a list of str, got str")
    add(f"{tname}-encode-batch-item", "wrong type", "a non-str item in encode_batch is named by index",
        lambda t, m=tok: m().encode_batch(["ACGT", None]), TypeError, r"sequence 1 is NoneType, not str")
    add(f"{tname}-max-length-str", "wrong type", "max_length='8' is refused, not parsed",
        lambda t, m=tok: m().encode_batch(["ACGT"], max_length="8"), TypeError, r"max_length must be an int")
    add(f"{tname}-decode-str", "wrong type", "decode('ACGT') is a TypeError",
        lambda t, m=tok: m().decode("ACGT"), TypeError, r"decode\(\) takes integer token ids")
    add(f"{tname}-decode-id-vocab-size", "out of range", "decode of id vocab_size names the id and the size",
        lambda t, m=tok: m().decode([7, m().vocab_size]), ValueError,
        r"token id \d+ is outside the vocabulary \(size \d+\)")
    add(f"{tname}-decode-negative", "out of range", "decode of a negative id names it",
        lambda t, m=tok: m().decode([-1]), ValueError, r"token id -1 is outside the vocabulary")
    add(f"{tname}-max-length-too-small", "out of range", "a max_length with no room beside the specials is refused",
        lambda t, m=tok: m().encode_batch(["ACGTACGT"], max_length=2, prefix=["<cls>"], suffix=["<sep>"]),
        ValueError, r"max_length=2 leaves no room")
    add(f"{tname}-too-long", "out of range", "a sequence over max_length without truncation names it",
        lambda t, m=tok: m().encode_batch(["ACGT", "ACGT" * 10], max_length=6), ValueError,
        r"sequence 1 has \d+ tokens > max_length=6")
    add(f"{tname}-not-special", "out of range", "a prefix that is no special token is named",
        lambda t, m=tok: m().encode("ACGT", prefix=["<start>"]), ValueError, r"prefix \['<start>'\] are not special")
    add(f"{tname}-all-empty", "empty", "a batch of empty strings says they are empty, naming which",
        lambda t, m=tok: m().encode_batch(["", ""]), ValueError, r"sequences 0, 1 \(2 of 2\) are empty")
    add(f"{tname}-one-empty", "empty", "one empty string in a batch is named",
        lambda t, m=tok: m().encode_batch(["ACGT", ""], prefix=["<cls>"]), ValueError,
        r"sequence 1 \(1 of 2\) is empty")
    add(f"{tname}-no-sequences", "empty", "an empty batch is refused", lambda t, m=tok: m().encode_batch([]),
        ValueError, r"got no sequences")
    add(f"{tname}-encode-empty", "empty", "encode('') gives the specials only (documented; the round trip holds)",
        lambda t, m=tok: (m(), m().encode("", ["<cls>"])),
        check=lambda r, t: _assert(r[1].ids.tolist() == [r[0].cls_id] and r[0].decode(r[1].ids) == "", r))
    add(f"{tname}-saved-cut", "truncated", "a saved tokenizer file cut in half names the file",
        lambda t, m=tok: gtok.DNATokenizer.load(_write(t, "tok.json", m().save(t / "full.json").read_text()[:200])),
        ValueError, r"tok\.json: not a valid DNA tokenizer file")
    add(f"{tname}-saved-edited", "corrupt", "a saved tokenizer whose vocabulary was edited names the file",
        lambda t, m=tok: gtok.DNATokenizer.load(_edited_tokenizer(t, m())), ValueError,
        r"edited\.json: stored vocabulary differs")

add("codon-short-drop", "empty", "sequences too short for one codon with remainder='drop' are named",
    lambda t: gtok.codon_tokenizer(remainder="drop").encode_batch(["ACGTAC", "AC"]), ValueError,
    r"sequence 1 \(1 of 2\) gives no tokens")
for arg, value in (("k", 2.5), ("k", "3"), ("k", True), ("stride", 1.5), ("frame", None)):
    add(f"tokenizer-{arg}-{type(value).__name__}", "wrong type", f"DNATokenizer({arg}={value!r}) is refused, not cast",
        lambda t, a=arg, v=value: gtok.DNATokenizer(**{"k": 3, a: v}), TypeError, rf"{arg} must be an int")
for k in (0, -1, 13):
    add(f"kmer-k{k}", "out of range", f"kmer_tokenizer({k}) names k and the range",
        lambda t, k=k: gtok.kmer_tokenizer(k), ValueError, rf"k={k}: must be between 1 and 12")
add("codon-frame-3", "out of range", "codon_tokenizer(frame=3) names the frame", lambda t: gtok.codon_tokenizer(3),
    ValueError, r"frame=3")
add("tokenizer-load-int", "wrong type", "DNATokenizer.load(123) is a TypeError",
    lambda t: gtok.DNATokenizer.load(123), TypeError, r"tokenizer path must be a path")
add("tokenizer-load-directory", "adversarial path", "a folder without dna_tokenizer.json names the file looked for",
    lambda t: gtok.DNATokenizer.load(t), FileNotFoundError, r"no DNA tokenizer at .*dna_tokenizer\.json")


def _edited_tokenizer(t, tok):
    f = tok.save(t / "edited.json")
    doc = json.loads(f.read_text())
    doc["vocab"][8] = "XX"
    f.write_text(json.dumps(doc))
    return f


# ---- every registered genomics model ----------------------------------------------------------------------------

MODELS = zoo.list_models(domain="genomics")
assert MODELS, "no genomics models registered"


@lru_cache(None)
def _model(name: str):
    return zoo.create(name, depth=1, dim=32, num_heads=2, max_seq_len=16).eval()


def _ids(n: int, value=None):
    ids = torch.arange(n, dtype=torch.long)[None] % 5 + gtok.SPECIAL_TOKENS.__len__()
    if value is not None:
        ids[0, n // 2] = value
    return ids


for mname in MODELS:
    add(f"{mname}-list-input", "wrong type", "a nested list instead of a tensor names input_ids",
        lambda t, m=mname: _model(m)([[7, 8, 9]]), ValueError, r"input_ids must be an int \[b, n\] tensor")
    add(f"{mname}-float-input", "wrong type", "a float tensor names input_ids and its dtype",
        lambda t, m=mname: _model(m)(torch.ones(1, 4)), ValueError, r"input_ids must be an int .*float32")
    add(f"{mname}-id-vocab-size", "out of range", "a token id >= vocab_size names the id and vocab_size",
        lambda t, m=mname: _model(m)(_ids(6, _model(m).vocab_size)), ValueError, r"token id 12\b.*vocab_size=12")
    add(f"{mname}-id-negative", "out of range", "a negative token id names the id and vocab_size",
        lambda t, m=mname: _model(m)(_ids(6, -3)), ValueError, r"token id -3\b.*vocab_size=12")
    add(f"{mname}-too-long", "out of range", "more tokens than max_seq_len names the limit and allow_longer",
        lambda t, m=mname: _model(m)(_ids(17)), ValueError, r"17 tokens .* exceed max_seq_len=16.*allow_longer")
    add(f"{mname}-length-0", "empty", "a length-0 batch is refused at the entry, naming input_ids",
        lambda t, m=mname: _model(m)(torch.zeros(2, 0, dtype=torch.long)), ValueError, r"input_ids has no tokens")
    if mname.startswith("dna_lm_"):
        add(f"{mname}-generate-empty-prompt", "empty", "generate() on an empty prompt is refused, naming input_ids",
            lambda t, m=mname: _model(m).generate(torch.zeros(1, 0, dtype=torch.long), 2), ValueError,
            r"input_ids has no tokens")
        add(f"{mname}-generate-id-vocab-size", "out of range", "generate() on a prompt with id >= vocab_size names it",
            lambda t, m=mname: _model(m).generate(_ids(4, 12), 2), ValueError, r"token id 12\b.*vocab_size=12")


@pytest.mark.parametrize("case", params(CASES))
def test_case(case, tmp_path):
    check_case(case, tmp_path)
