"""Streaming FASTA/FASTQ/GenBank readers: real files, labels, the sequence policy and bad input."""
import bz2
import gzip
import itertools
import lzma
import os
import re
import warnings
from pathlib import Path

import numpy as np
import pytest
from genomics_test_helpers import require

import Bio  # noqa: F401  (scripts/setup.sh installs the genomics extra; a missing package must fail)

from domains.genomics.io import (CsvLabels, HeaderLabels, SequenceFormatError, SequencePolicy, SequenceReader,
                                 count_records, detect_compression, detect_format, read_sequences,
                                 reverse_complement)

pytestmark = pytest.mark.debian_data("microbiomeutil-data", "python-biopython-doc")

RRNA = Path("/usr/share/microbiomeutil-data/RESOURCES/rRNA16S.gold.fasta")
GB = Path("/usr/share/doc/python-biopython-doc/Tests/GenBank")
needs_16s = require(RRNA, "microbiomeutil-data")
needs_gb = require(GB, "python-biopython-doc")


def _head_fasta(src: Path, n: int) -> str:
    """The first ``n`` records of a FASTA file, cut by a naive line scan (independent of biopython)."""
    out, seen = [], 0
    with open(src) as f:
        for line in f:
            if line.startswith(">"):
                seen += 1
                if seen > n:
                    break
            out.append(line)
    return "".join(out)


@pytest.fixture(scope="module")
def rrna200(tmp_path_factory):
    if not RRNA.is_file():
        pytest.fail("Debian microbiomeutil-data not installed")
    d = tmp_path_factory.mktemp("rrna")
    text = _head_fasta(RRNA, 200)
    (d / "head.fa").write_text(text)
    with gzip.open(d / "head.fa.gz", "wt") as f:
        f.write(text)
    (d / "no_suffix").write_bytes(gzip.compress(text.encode()))  # gzip without a .gz name
    return d, text


def test_counts_match_naive_header_count(rrna200):
    d, text = rrna200
    naive = sum(1 for line in text.splitlines() if line.startswith(">"))
    assert naive == 200
    for name in ("head.fa", "head.fa.gz", "no_suffix"):
        recs = list(read_sequences(d / name))
        assert len(recs) == naive == count_records(d / name)
        assert [r.number for r in recs] == list(range(1, 201))
    assert detect_compression((d / "no_suffix").read_bytes()[:4]) == "gzip"
    assert detect_format(d / "no_suffix") == "fasta"


def test_sequences_equal_naive_parse_upper_cased(rrna200):
    d, text = rrna200
    naive, cur = [], None
    for line in text.splitlines():
        if line.startswith(">"):
            cur = []
            naive.append(cur)
        else:
            cur.append(line.strip())
    recs = list(read_sequences(d / "head.fa.gz"))
    assert [r.seq for r in recs] == ["".join(c).upper() for c in naive]
    assert all(set(r.seq) <= set("ACGTNRYSWKMBDHV") for r in recs)


def test_streaming_does_not_read_whole_file(rrna200):
    d, _ = rrna200
    it = read_sequences(d / "head.fa")
    first = next(it)
    assert first.number == 1 and len(first.seq) > 1000
    it.close()


def test_soft_mask_channel(tmp_path):
    f = tmp_path / "m.fa"
    f.write_text(">a x\nACgtNn\nAC\n")
    rec, = read_sequences(f, policy=SequencePolicy(case="mask"))
    assert rec.seq == "ACGTNNAC"
    assert rec.soft_mask.tolist() == [False, False, True, True, False, True, False, False]
    rec, = read_sequences(f)
    assert rec.seq == "ACGTNNAC" and rec.soft_mask is None


@pytest.mark.parametrize("policy,expect", [("keep", "ACRYN"), ("replace", "ACNNN")])
def test_ambiguity_keep_replace(tmp_path, policy, expect):
    f = tmp_path / "a.fa"
    f.write_text(">a\nACRYN\n>b\nACGT\n")
    recs = list(read_sequences(f, policy=SequencePolicy(ambiguous=policy)))
    assert [r.seq for r in recs] == [expect, "ACGT"]


def test_ambiguity_drop_and_error(tmp_path):
    f = tmp_path / "a.fa"
    f.write_text(">a\nACGT\n>b\nACRT\n>c\nGG\n")
    r = SequenceReader(f, policy=SequencePolicy(ambiguous="drop"))
    assert [x.id for x in r] == ["a", "c"] and r.skipped["ambiguous"] == 1
    with pytest.raises(SequenceFormatError, match=r"a\.fa, record 2 \('b'\).*'R' at position 3"):
        list(read_sequences(f, policy=SequencePolicy(ambiguous="error")))


def test_invalid_characters_error_or_drop(tmp_path):
    f = tmp_path / "bad.fa"
    f.write_text(">ok\nACGT\n>bad1\nAC9T\n>bad2\nAC-T\n>ok2\nTTTT\n")
    with pytest.raises(SequenceFormatError, match=r"bad\.fa, record 2 \('bad1'\): character '9' at position 3"):
        list(read_sequences(f))
    r = SequenceReader(f, policy=SequencePolicy(invalid="drop"))
    assert [x.id for x in r] == ["ok", "ok2"] and r.skipped == {"invalid": 2}


def test_rna_u_read_as_t(tmp_path):
    f = tmp_path / "r.fa"
    f.write_text(">r\nACGUu\n")
    assert next(read_sequences(f)).seq == "ACGTT"
    with pytest.raises(SequenceFormatError, match="'U'"):
        list(read_sequences(f, policy=SequencePolicy(rna=False)))


def test_protein_and_mixed_input(tmp_path):
    f = tmp_path / "p.fa"
    f.write_text(">dna1\nACGT\n>dna2\nGGCC\n>prot\nMKELLPQIF\n>dna3\nAAAA\n")
    with pytest.raises(SequenceFormatError, match=r"record 3 \('prot'\): mixed DNA/protein input: 2 earlier"):
        list(read_sequences(f))
    r = SequenceReader(f, policy=SequencePolicy(protein="drop"))
    assert [x.id for x in r] == ["dna1", "dna2", "dna3"] and r.skipped == {"protein": 1}
    only = tmp_path / "only.fa"
    only.write_text(">p\nMSTNPKPQRKTKRNTNRRPQDVKFPGG\n")
    with pytest.raises(SequenceFormatError, match="looks like a protein.*letters .*P"):
        list(read_sequences(only))


def test_empty_file_and_empty_record(tmp_path):
    empty = tmp_path / "empty.fa"
    empty.write_text("")
    with pytest.raises(SequenceFormatError, match="empty.fa: empty file"):
        list(read_sequences(empty))
    assert list(read_sequences(empty, allow_empty=True)) == []
    blank = tmp_path / "blank.fa.gz"
    blank.write_bytes(gzip.compress(b"\n\n"))
    with pytest.raises(SequenceFormatError, match="empty file"):
        list(read_sequences(blank))
    f = tmp_path / "noseq.fa"
    f.write_text(">a\n>b\nACGT\n")
    with pytest.raises(SequenceFormatError, match=r"noseq\.fa, record 1 \('a'\): record has no sequence"):
        list(read_sequences(f))
    r = SequenceReader(f, policy=SequencePolicy(empty="drop"))
    assert [x.id for x in r] == ["b"] and r.skipped["empty"] == 1


def test_malformed_fasta_names_file(tmp_path):
    f = tmp_path / "mal.fa"
    f.write_text("ACGT\n>a\nACGT\n")
    with pytest.raises(SequenceFormatError, match="mal.fa: cannot tell the format"):
        list(read_sequences(f))
    with pytest.raises(SequenceFormatError, match=r"mal\.fa, record 1: malformed fasta"):
        list(read_sequences(f, "fasta"))


def test_truncated_gzip(tmp_path, rrna200):
    d, _ = rrna200
    data = (d / "head.fa.gz").read_bytes()
    f = tmp_path / "trunc.fa.gz"
    f.write_bytes(data[: len(data) // 2])
    got = []
    with pytest.raises(SequenceFormatError, match=r"trunc\.fa\.gz, record \d+: .*ends early.*EOFError"):
        for rec in read_sequences(f):
            got.append(rec)
    assert 0 < len(got) < 200  # records before the cut were delivered, then a clear error


def test_fastq_quality_and_length_mismatch(tmp_path):
    good = tmp_path / "r.fq"
    good.write_text("@r1\nACGT\n+\nIIII\n@r2\nGGNA\n+\n!!#I\n")
    recs = list(read_sequences(good))
    assert [r.seq for r in recs] == ["ACGT", "GGNA"] and recs[1].quality == [0, 0, 2, 40]
    bad = tmp_path / "bad.fq"
    bad.write_text("@r1\nACGT\n+\nIIII\n@r2\nACGT\n+\nIII\n")
    with pytest.raises(SequenceFormatError, match=r"bad\.fq, record 2: malformed fastq.*differ"):
        list(read_sequences(bad))


def test_labels_from_header_regex_and_field(rrna200):
    d, text = rrna200
    headers = [line[1:] for line in text.splitlines() if line.startswith(">")]
    naive = [h.split("\t")[-1].split(";")[1].strip() for h in headers]
    by_regex = [r.label for r in read_sequences(d / "head.fa", labels=HeaderLabels(r"\t[^\t;]+; (?P<label>[^;]+);"))]
    by_field = [r.label for r in read_sequences(d / "head.fa", labels=HeaderLabels(field=-5, sep=";"))]
    assert by_regex == by_field == naive
    assert "Proteobacteria" in naive


def test_label_forms(tmp_path):
    f = tmp_path / "l.fa"
    f.write_text(">s1|kingdom|classA extra\nACGT\n>s2|kingdom|classB\nACGT\n>s3\nACGT\n")
    assert HeaderLabels(field=2, sep="|")("s1", "s1|kingdom|classA extra") == "classA extra"
    assert HeaderLabels(r"\|(class\w)")("s1", "s1|kingdom|classA") == "classA"
    assert HeaderLabels(field=1)("x", "x y z") == "y"
    with pytest.raises(SequenceFormatError, match=r"record 3 \('s3'\): no label found"):
        list(read_sequences(f, labels=HeaderLabels(field=2, sep="|")))
    r = SequenceReader(f, labels=HeaderLabels(field=2, sep="|"), policy=SequencePolicy(missing_label="drop"))
    assert [x.label for x in r] == ["classA extra", "classB"] and r.skipped["missing_label"] == 1
    with pytest.raises(ValueError, match="exactly one"):
        HeaderLabels()


def test_labels_from_csv(tmp_path):
    f = tmp_path / "l.fa"
    f.write_text(">s1 a\nACGT\n>s2\nACGT\n>s3\nACGT\n")
    csvf = tmp_path / "labels.csv"
    csvf.write_text("id,label\ns1,pos\ns3,neg\n")
    labels = CsvLabels(csvf)
    assert len(labels) == 2
    with pytest.raises(SequenceFormatError, match=r"l\.fa, record 2 \('s2'\): no label"):
        list(read_sequences(f, labels=labels))
    r = SequenceReader(f, labels=labels, policy=SequencePolicy(missing_label="drop"))
    assert [(x.id, x.label) for x in r] == [("s1", "pos"), ("s3", "neg")]
    dup = tmp_path / "dup.tsv"
    dup.write_text("id\tlabel\ns1\tpos\ns1\tneg\n")
    with pytest.raises(ValueError, match=r"dup\.tsv, line 3: id 's1' has two labels"):
        CsvLabels(dup)


@needs_gb
def test_genbank_fixtures():
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        rec, = read_sequences(GB / "NC_005816.gb.gz")  # gzip, named .gb.gz
        assert rec.id == "NC_005816.1" and len(rec) == 9609 and rec.seq.startswith("TGTAACGAAC")
        fna, = read_sequences(GB / "NC_005816.fna.gz")
        assert fna.seq == rec.seq  # same genome as FASTA
        nested = list(read_sequences(GB / "cor6_6.gb.bgz.gz"))  # BGZF inside gzip
        plain = list(read_sequences(GB / "cor6_6.gb.gz"))
        assert len(nested) == 6 and [r.seq for r in nested] == [r.seq for r in plain]
        assert detect_format(GB / "gbvrl1_start.seq.gz") == "genbank"
        with pytest.raises(SequenceFormatError, match=r"protein_refseq\.gb, record 1 \('NP_034640\.1'\).*protein"):
            list(read_sequences(GB / "protein_refseq.gb"))
        r = SequenceReader(GB / "NT_019265.gb", policy=SequencePolicy(empty="drop"))  # CONTIG, no ORIGIN
        assert list(r) == [] and r.skipped == {"empty": 1}
        with pytest.raises(SequenceFormatError, match=r"no_origin_no_end\.gb, record 1: malformed genbank"):
            list(read_sequences(GB / "no_origin_no_end.gb"))
        r = SequenceReader(GB / "NC_005816.faa", policy=SequencePolicy(protein="drop"))
        assert list(r) == [] and r.skipped["protein"] == 10


def test_reverse_complement_iupac():
    assert reverse_complement("ACGTN") == "NACGT"
    assert reverse_complement("RYKMBVDHSW") == "WSDHBVKMRY"
    assert reverse_complement("acGT") == "ACgt"
    alphabet = "ACGTNRYSWKMBDHVacgtnryswkmbdhv"
    rng = np.random.default_rng(0)
    for n in (0, 1, 7, 100):
        s = "".join(rng.choice(list(alphabet), n))
        assert reverse_complement(reverse_complement(s)) == s
    with pytest.raises(ValueError, match="no IUPAC complement for 'U'"):
        reverse_complement("ACGU")


def test_policy_arguments_checked(tmp_path):
    with pytest.raises(ValueError, match=r"SequencePolicy.ambiguous='maybe'"):
        SequencePolicy(ambiguous="maybe")
    with pytest.raises(FileNotFoundError, match="nope.fa"):
        SequenceReader(tmp_path / "nope.fa")
    f = tmp_path / "x.fa"
    f.write_text(">a\nAC\n")
    with pytest.raises(ValueError, match="format='embl'"):
        SequenceReader(f, "embl")
    assert list(itertools.islice(read_sequences(f), 1))[0].seq == "AC"


def test_missing_biopython_is_a_clear_error(tmp_path, monkeypatch):
    import sys
    f = tmp_path / "x.fa"
    f.write_text(">a\nAC\n")
    monkeypatch.setitem(sys.modules, "Bio", None)
    with pytest.raises(ImportError, match=r'pip install "zoo-pe\[genomics\]"'):
        list(read_sequences(f))


@needs_gb
@pytest.mark.parametrize("keep", [400, 900])
def test_genbank_cut_inside_origin_is_an_error(tmp_path, keep):
    text = (GB / "pri1.gb").read_text()
    declared = int(re.search(r"^LOCUS\s+\S+\s+(\d+) bp", text, re.M).group(1))
    origin = text.index("\nORIGIN")
    cut = text[:origin + keep]                            # the file ends inside the sequence data
    found = sum(ch.isalpha() for line in cut[origin:].splitlines()[2:] for ch in line)
    assert 0 < found < declared
    f = tmp_path / "cut.gb"
    f.write_text(cut)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        with pytest.raises(SequenceFormatError, match=rf"cut\.gb, record 1 \('U05344\.1'\): LOCUS line says "
                                                      rf"{declared} bp but the sequence has {found}"):
            list(read_sequences(f))


@needs_gb
def test_genbank_locus_length_disagreeing_with_sequence_is_an_error(tmp_path):
    text = (GB / "pri1.gb").read_text()
    f = tmp_path / "relabelled.gb"
    f.write_text(re.sub(r"^(LOCUS\s+\S+\s+)741 bp", r"\g<1>600 bp", text, flags=re.M))
    with pytest.raises(SequenceFormatError, match=r"relabelled\.gb, record 1 \('U05344\.1'\).*600 bp.*741"):
        list(read_sequences(f))
    rec, = read_sequences(GB / "pri1.gb")              # the intact file still reads, at its declared length
    assert len(rec) == 741


def _fastq_text(fasta_text: str, n: int) -> str:
    out, seen = [], 0
    for block in fasta_text.split(">")[1:n + 1]:
        head, *lines = block.splitlines()
        seq = "".join(x.strip() for x in lines)
        out.append(f"@{head.split()[0]}\n{seq}\n+\n{'I' * len(seq)}\n")
    return "".join(out)


@pytest.mark.parametrize("kind", ["fa.gz", "fq.gz", "fa.bz2", "fa.xz"])
def test_truncated_compressed_file_names_file_and_last_record(tmp_path, rrna200, kind):
    _, text = rrna200
    plain = (text if kind.startswith("fa") else _fastq_text(text, 200)).encode()
    comp = {"gz": gzip.compress, "bz2": bz2.compress, "xz": lzma.compress}[kind.split(".")[1]]
    data = comp(plain)
    whole = tmp_path / f"whole.{kind}"
    whole.write_bytes(data)
    assert len(list(read_sequences(whole))) == 200
    for n in (12, 30, 100, len(data) // 2, len(data) - 3):
        f = tmp_path / f"cut{n}.{kind}"
        f.write_bytes(data[:n])
        got = []
        with pytest.raises(SequenceFormatError, match=rf"cut{n}\.{re.escape(kind)}.*ends early") as info:
            for rec in read_sequences(f):
                got.append(rec)
        assert len(got) < 200
        if got:                                       # the last record delivered is named
            assert f"after record {got[-1].number} ({got[-1].id!r})" in str(info.value)


def test_gzip_with_garbage_names_file(tmp_path, rrna200):
    _, text = rrna200
    data = gzip.compress(text.encode())
    f = tmp_path / "garbage.fa.gz"
    f.write_bytes(data[:10] + np.random.default_rng(0).bytes(400))    # a gzip header, then noise
    with pytest.raises(SequenceFormatError, match=r"garbage\.fa\.gz.*corrupt"):
        list(read_sequences(f))
    with pytest.raises(SequenceFormatError, match=r"garbage\.fa\.gz"):
        count_records(f)


def test_compressed_files_are_closed(tmp_path, rrna200, monkeypatch):
    import gc
    import sys
    d, _ = rrna200
    leaked = []
    monkeypatch.setattr(sys, "unraisablehook", leaked.append)   # a file closed only by the GC warns from __del__
    with warnings.catch_warnings():
        warnings.simplefilter("error", ResourceWarning)
        for name in ("head.fa.gz", "no_suffix"):
            assert count_records(d / name) == 200
            assert detect_format(d / name) == "fasta"
            assert len(list(read_sequences(d / name))) == 200
        gc.collect()
    assert not leaked, [str(u.exc_value) for u in leaked]


def test_not_a_regular_file_is_named_as_such(tmp_path):
    with pytest.raises(IsADirectoryError, match=rf"{re.escape(str(tmp_path))} is a directory"):
        SequenceReader(tmp_path)
    fifo = tmp_path / "pipe.fa"
    os.mkfifo(fifo)
    with pytest.raises(SequenceFormatError, match=r"pipe\.fa is not a regular file"):
        SequenceReader(fifo)
    with pytest.raises(FileNotFoundError, match=r"missing\.fa does not exist"):
        SequenceReader(tmp_path / "missing.fa")


def test_duplicate_ids_with_id_keyed_labels(tmp_path):
    f = tmp_path / "dup.fa"
    f.write_text(">s1\nACGT\n>s2\nGGGG\n>s1\nTTTT\n")
    csvf = tmp_path / "labels.csv"
    csvf.write_text("id,label\ns1,pos\ns2,neg\n")
    with pytest.raises(SequenceFormatError, match=r"dup\.fa, record 3 \('s1'\): id already used by record 1"):
        list(read_sequences(f, labels=CsvLabels(csvf)))
    assert [r.id for r in read_sequences(f)] == ["s1", "s2", "s1"]    # without id-keyed labels ids may repeat


def test_label_file_not_text_or_without_rows(tmp_path):
    bad = tmp_path / "bin.csv"
    bad.write_bytes(b"id,label\ns1,\xff\xfe\n")
    with pytest.raises(ValueError, match=r"bin\.csv: not UTF-8 text"):
        CsvLabels(bad)
    empty = tmp_path / "header_only.csv"
    empty.write_text("id,label\n")
    with pytest.raises(ValueError, match=r"header_only\.csv: no labels"):
        CsvLabels(empty)
    with pytest.raises(IsADirectoryError, match="is a directory"):
        CsvLabels(tmp_path)
