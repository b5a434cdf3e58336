"""Genomics datasets on the real Debian files: labels, counts, decoding of DNA.rda, splits, tensors, windows."""
from collections import Counter

import numpy as np
import pytest
from genomics_test_helpers import require
import torch

import Bio  # noqa: F401  (scripts/setup.sh installs the genomics extra; a missing package must fail)

from domains.genomics import data as gdata
from domains.genomics.data import (classification_tensors, find_dataset, lm_windows, load_16s, load_promoters,
                                   load_splice_junctions, mlm_mask, parse_taxonomy, stratified_split)
from domains.genomics.tokenizers import codon_tokenizer, kmer_tokenizer, nucleotide_tokenizer
from zoo.errors import DatasetNotFoundError

pytestmark = pytest.mark.debian_data("microbiomeutil-data", "r-cran-kernlab", "r-cran-mlbench")

needs = {name: require(path)
         for name, path in [("16s", gdata.RRNA16S_PATH), ("splice", gdata.SPLICE_PATH),
                            ("prom", gdata.PROMOTER_PATH)]}


@pytest.fixture(scope="module")
def rrna():
    if not gdata.RRNA16S_PATH.is_file():
        pytest.fail("microbiomeutil-data not installed")
    return load_16s(limit=200)


@pytest.fixture(scope="module")
def splice():
    import rdata  # noqa: F401
    if not gdata.SPLICE_PATH.is_file():
        pytest.fail("r-cran-mlbench not installed")
    return load_splice_junctions()


def _naive_headers(n):
    out = []
    with open(gdata.RRNA16S_PATH) as f:
        for line in f:
            if line.startswith(">"):
                out.append(line[1:].rstrip("\n"))
                if len(out) == n:
                    break
    return out


def test_16s_labels_follow_header(rrna):
    headers = _naive_headers(200)
    assert len(rrna) == 200
    assert rrna.ids == [h.split()[0] for h in headers]
    assert rrna.labels == [h.split("\t")[-1].split("; ")[1] for h in headers]
    assert rrna.labels[0] == "Actinobacteria" and rrna.ids[0] == "7000004128189528"
    assert sum(rrna.class_counts().values()) == 200
    assert all(1000 < len(s) < 2000 and s == s.upper() for s in rrna.seqs)


def test_parse_taxonomy_both_header_kinds():
    a = "7000004128189528\tAcidothermus x. \t7000|16s_rRNA|ATC1|x.|351607\tBacteria; Actinobacteria; " \
        "Actinobacteria; Actinomycetales; Acidothermaceae; Acidothermus"
    b = "S000000010 Aeromicrobium (T); DSM 10552T; Z78209 A. f.\tBacteria; Actinobacteria; Actinobacteria; " \
        "Actinomycetales; Nocardioidaceae; Aeromicrobium"
    assert parse_taxonomy(a)[1] == parse_taxonomy(b)[1] == "Actinobacteria"
    assert parse_taxonomy(b)[5] == "Aeromicrobium"
    with pytest.raises(ValueError, match="no tab-separated taxonomy"):
        parse_taxonomy("S1 no taxonomy")
    with pytest.raises(ValueError, match="does not have the 6 ranks"):
        parse_taxonomy("S1\tBacteria; Firmicutes")


def test_16s_top_n_drop_and_merge(rrna):
    counts = Counter(rrna.labels)
    top2 = [c for c, _ in sorted(counts.items(), key=lambda kv: (-kv[1], kv[0]))[:2]]
    dropped = load_16s(limit=200, top_n=2)
    assert set(dropped.labels) == set(top2) and len(dropped) == counts[top2[0]] + counts[top2[1]]
    assert dropped.skipped["rare_class"] == 200 - len(dropped)
    merged = load_16s(limit=200, top_n=2, other="merge")
    assert len(merged) == 200 and set(merged.labels) == set(top2) | {"Other"}
    assert merged.class_counts()["Other"] == 200 - len(dropped)
    genus = load_16s(limit=20, rank="genus")
    assert genus.labels[0] == "Acidothermus"


def test_splice_decoded_sequences(splice):
    assert len(splice) == 3186
    assert all(len(s) == 60 and set(s) <= set("ACGT") for s in splice.seqs)
    assert set(splice.labels) == {"EI", "IE", "N"} and splice.classes == ["EI", "IE", "N"]
    assert splice.class_counts() == {"N": 1654, "EI": 767, "IE": 765}
    # biology checks the StatLog decoding (A=100 C=010 G=001 T=000): donors (EI) start the intron with GT right
    # after base 30, acceptors (IE) end it with AG right before base 31
    ei = [s for s, lab in zip(splice.seqs, splice.labels) if lab == "EI"]
    ie = [s for s, lab in zip(splice.seqs, splice.labels) if lab == "IE"]
    assert sum(s[30:32] == "GT" for s in ei) / len(ei) > 0.95
    assert sum(s[28:30] == "AG" for s in ie) / len(ie) > 0.95


def test_splice_rda_raw_bits_match(splice):
    import warnings

    import rdata
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # "Unknown encoding. Assumed ASCII." (old R file, ASCII factors)
        frame = rdata.read_rda(str(gdata.SPLICE_PATH))["DNA"]
    bits = frame.iloc[0, :180].astype(str).astype(int).to_numpy().reshape(60, 3)
    code = {"A": (1, 0, 0), "C": (0, 1, 0), "G": (0, 0, 1), "T": (0, 0, 0)}
    assert [code[b] for b in splice.seqs[0]] == [tuple(r) for r in bits.tolist()]


@needs["prom"]
def test_promoters():
    import rdata  # noqa: F401
    p = load_promoters()
    assert len(p) == 106 and {len(s) for s in p.seqs} == {57}
    assert p.class_counts() == {"promoter": 53, "non-promoter": 53}
    assert all(set(s) <= set("ACGT") for s in p.seqs)


def test_missing_files_raise_dataset_not_found(tmp_path, monkeypatch):
    with pytest.raises(DatasetNotFoundError, match="apt-get install microbiomeutil-data"):
        load_16s(path=tmp_path / "none.fasta")
    with pytest.raises(DatasetNotFoundError, match="apt-get install r-cran-mlbench"):
        load_splice_junctions(path=tmp_path / "DNA.rda")
    monkeypatch.setitem(gdata._PACKAGES, "ecoli_promoters", ("r-cran-kernlab", tmp_path / "promotergene.rda"))
    with pytest.raises(DatasetNotFoundError, match=r"promotergene\.rda not found.*r-cran-kernlab"):
        load_promoters()
    with pytest.raises(FileNotFoundError):  # DatasetNotFoundError is a FileNotFoundError too
        find_dataset("splice_junctions", tmp_path / "x")


def test_corrupt_rda_is_clear(tmp_path):
    import rdata  # noqa: F401
    bad = tmp_path / "DNA.rda"
    bad.write_bytes(b"RDX2\nnot really")
    with pytest.raises(ValueError, match=r"DNA\.rda: not a readable R data file"):
        load_splice_junctions(path=bad)


def test_stratified_split_deterministic_disjoint(splice):
    a = stratified_split(splice.labels, seed=0)
    b = stratified_split(splice.labels, seed=0)
    c = stratified_split(splice.labels, seed=1)
    assert all(np.array_equal(a[s], b[s]) for s in a)
    assert not np.array_equal(a["test"], c["test"])
    allidx = np.concatenate([a["train"], a["val"], a["test"]])
    assert len(allidx) == len(set(allidx.tolist())) == len(splice)
    for s, frac in (("val", 0.1), ("test", 0.1)):
        got = Counter(splice.labels[i] for i in a[s])
        for cls, n in splice.class_counts().items():
            assert got[cls] == round(n * frac)
    tiny = stratified_split(["a", "b", "b", "b"], (0.5, 0.25, 0.25))
    assert 0 in tiny["train"].tolist()  # a class of one stays in train
    with pytest.raises(ValueError, match="summing to 1"):
        stratified_split(["a"], (0.5, 0.5, 0.5))


def test_classification_tensors(splice):
    split = stratified_split(splice.labels)
    tok = kmer_tokenizer(3)
    out = classification_tensors(splice, tok, indices=split["val"])
    n = len(split["val"])
    assert out["input_ids"].shape == (n, 1 + 58) and out["input_ids"].dtype == torch.long
    assert (out["input_ids"][:, 0] == tok.cls_id).all() and out["mask"].all()
    i = int(split["val"][0])
    assert out["labels"][0].item() == splice.classes.index(splice.labels[i])
    assert tok.decode(out["input_ids"][0]) == splice.seqs[i]
    assert out["positions"].mask.shape == out["mask"].shape and out["classes"] == ["EI", "IE", "N"]


def test_classification_tensors_padding(rrna):
    tok = codon_tokenizer(0)
    out = classification_tensors(rrna, tok, indices=range(10), max_length=600)
    assert out["input_ids"].shape == (10, 600)
    lengths = out["mask"].sum(1)
    assert (lengths < 600).all() and (out["input_ids"][~out["mask"]] == tok.pad_id).all()
    assert lengths.tolist() == [1 + len(tok.encode(s).ids) for s in rrna.seqs[:10]]
    assert (out["spans"][:, 1:, 1] - out["spans"][:, 1:, 0])[out["mask"][:, 1:]].max() == 3
    cut = classification_tensors(rrna, tok, indices=range(10), max_length=400, truncation=True)
    assert cut["mask"].all() and torch.equal(cut["input_ids"], out["input_ids"][:, :400])
    with pytest.raises(ValueError, match="max_length=400"):
        classification_tensors(rrna, tok, indices=range(10), max_length=400)


def test_lm_windows_and_mlm(rrna):
    tok = nucleotide_tokenizer()
    seqs = rrna.seqs[:20]
    w = lm_windows(seqs, tok, window=256, stride=128)
    expected = sum(len(range(0, len(s) - 256 + 1, 128)) for s in seqs)
    assert w["input_ids"].shape == (expected, 256)
    k = 5
    si, st = int(w["seq_index"][k]), int(w["start"][k])
    assert tok.decode(w["input_ids"][k]) == seqs[si][st:st + 256]
    w6 = lm_windows(seqs, kmer_tokenizer(6), window=100)
    assert w6["input_ids"].shape[1] == 95
    assert lm_windows(["ACGT"], tok, window=10)["input_ids"].shape == (0, 10)
    ids = lm_windows(seqs, tok, window=64, prefix=["<cls>"])["input_ids"]
    inp, tgt = mlm_mask(ids, tok, prob=0.15, seed=0)
    inp2, tgt2 = mlm_mask(ids, tok, prob=0.15, seed=0)
    assert torch.equal(inp, inp2) and torch.equal(tgt, tgt2)
    chosen = tgt != -100
    assert 0.12 < chosen.float().mean().item() * 65 / 64 < 0.18
    assert not chosen[:, 0].any()  # <cls> is never masked
    assert torch.equal(tgt[chosen], ids[chosen]) and torch.equal(inp[~chosen], ids[~chosen])
    frac_mask = (inp[chosen] == tok.mask_id).float().mean().item()
    assert 0.7 < frac_mask < 0.9


def _rda_frame(path, name):
    import rdata
    import warnings
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return rdata.read_rda(str(path))[name]


def _write_rda(path, objects):
    import rdata
    rdata.write_rda(str(path), objects)
    return path


@needs["splice"]
def test_splice_rda_of_wrong_shape_is_named(tmp_path):
    import numpy as np
    vec = _write_rda(tmp_path / "vector.rda", {"DNA": np.array([1.0, 2.0])})
    with pytest.raises(ValueError, match=r"vector\.rda: object 'DNA' is a ndarray, not a data frame"):
        load_splice_junctions(path=vec)
    head = _rda_frame(gdata.SPLICE_PATH, "DNA").head(4).reset_index(drop=True).astype(str)
    head.loc[2, "V5"] = "x"
    bad = _write_rda(tmp_path / "notbits.rda", {"DNA": head})
    with pytest.raises(ValueError, match=r"notbits\.rda: row 3, column V5: 'x' is not a 0/1 indicator"):
        load_splice_junctions(path=bad)
    good = _write_rda(tmp_path / "good.rda", {"DNA": head.drop(index=2).reset_index(drop=True)})
    assert len(load_splice_junctions(path=good)) == 3


@needs["prom"]
def test_promoter_rda_with_a_non_nucleotide_letter_is_named(tmp_path):
    head = _rda_frame(gdata.PROMOTER_PATH, "promotergene").head(4).reset_index(drop=True).astype(str)
    head.loc[1, "V7"] = "x"
    bad = _write_rda(tmp_path / "letters.rda", {"promotergene": head})
    with pytest.raises(ValueError, match=r"letters\.rda: row 2 has 'X' at position 6 \(column V7\), not A/C/G/T"):
        load_promoters(path=bad)
    frame = _write_rda(tmp_path / "list.rda", {"promotergene": ["a", "c"]})
    with pytest.raises(ValueError, match=r"list\.rda: object 'promotergene' is a list, not a data frame"):
        load_promoters(path=frame)


def test_dataset_path_that_is_a_directory_is_named(tmp_path):
    for loader in (load_16s, load_splice_junctions, load_promoters):
        with pytest.raises(IsADirectoryError, match=rf"{tmp_path.name} is a directory"):
            loader(path=tmp_path)


@needs["16s"]
@pytest.mark.parametrize("limit", [0, -3, 2.5, "10"])
def test_16s_limit_must_be_a_positive_int(limit):
    with pytest.raises((ValueError, TypeError), match=rf"limit={limit!r}"):
        load_16s(limit=limit)
