"""Streaming FASTA/FASTQ/GenBank readers: real files, labels, the sequence policy and bad input."""
import gzip
import itertools
import warnings
from pathlib import Path

import numpy as np
import pytest
from genomics_test_helpers import require

import Bio  # noqa: F401  (scripts/setup.sh installs the genomics extra; a missing package must fail)

from domains.genomics.io import (CsvLabels, HeaderLabels, SequenceFormatError, SequencePolicy, SequenceReader,
                                 count_records, detect_compression, detect_format, read_sequences,
                                 reverse_complement)

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
    with pytest.raises(SequenceFormatError, match=r"trunc\.fa\.gz, record \d+: malformed fasta \(EOFError"):
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
