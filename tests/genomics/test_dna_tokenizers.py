"""DNA tokenizers: fixed vocabulary formula, spans, codon frames, leftovers, round trips, save/load, RC aug."""
import json

import numpy as np
import pytest
import torch

from domains.genomics.io import reverse_complement
from domains.genomics.tokenizers import (SPECIAL_TOKENS, DNATokenizer, ReverseComplement, codon_tokenizer,
                                         kmer_tokenizer, nucleotide_tokenizer)

BASE4 = {"A": 0, "C": 1, "G": 2, "T": 3}


def _random_dna(n, seed=0, alphabet="ACGT"):
    return "".join(np.random.default_rng(seed).choice(list(alphabet), n))


def _formula(kmer):
    return len(SPECIAL_TOKENS) + sum(BASE4[b] * 4 ** (len(kmer) - 1 - j) for j, b in enumerate(kmer))


def test_special_tokens_fixed_ids():
    for tok in (nucleotide_tokenizer(), kmer_tokenizer(6), codon_tokenizer(2)):
        assert tok.vocab[:7] == list(SPECIAL_TOKENS)
        assert (tok.pad_id, tok.cls_id, tok.sep_id, tok.mask_id, tok.unk_id, tok.bos_id, tok.eos_id) == tuple(range(7))


@pytest.mark.parametrize("k", [1, 2, 3, 5])
def test_kmer_ids_follow_base4_formula(k):
    tok = kmer_tokenizer(k, overlapping=True)
    seq = _random_dna(40, seed=k)
    enc = tok.encode(seq)
    assert len(enc.ids) == len(seq) - k + 1
    assert enc.ids.tolist() == [_formula(seq[i:i + k]) for i in range(len(seq) - k + 1)]
    assert enc.spans.tolist() == [[i, i + k] for i in range(len(seq) - k + 1)]
    assert tok.vocab_size == 7 + 4 ** k + 1 + (5 if k > 1 else 0)
    assert tok.token_to_id["A" * k] == 7 and tok.token_to_id["T" * k] == 7 + 4 ** k - 1


def test_known_values():
    tok = kmer_tokenizer(3)
    assert tok.encode("ACGT").ids.tolist() == [7 + 6, 7 + 27]  # ACG = 0*16+1*4+2, CGT = 1*16+2*4+3
    assert nucleotide_tokenizer().encode("ACGTN").ids.tolist() == [7, 8, 9, 10, 11]


def test_non_overlapping_and_leftover_bases():
    tok = kmer_tokenizer(4, overlapping=False)
    seq = "ACGTACGTAC"  # 2 whole 4-mers + 2 leftover bases
    enc = tok.encode(seq)
    assert tok.tokens(enc.ids) == ["ACGT", "ACGT", "A", "C"]
    assert enc.spans.tolist() == [[0, 4], [4, 8], [8, 9], [9, 10]]
    assert tok.decode(enc.ids) == seq
    drop = kmer_tokenizer(4, overlapping=False, remainder="drop")
    assert drop.tokens(drop.encode(seq).ids) == ["ACGT", "ACGT"]
    assert drop.decode(drop.encode(seq).ids) == seq[:8]


@pytest.mark.parametrize("frame", [0, 1, 2])
def test_codon_frames(frame):
    seq = _random_dna(31, seed=frame)
    tok = codon_tokenizer(frame, remainder="drop")
    enc = tok.encode(seq)
    starts = list(range(frame, len(seq) - 2, 3))
    assert tok.tokens(enc.ids) == [seq[s:s + 3] for s in starts]
    assert enc.spans[:, 0].tolist() == starts and (enc.spans[:, 1] - enc.spans[:, 0] == 3).all()
    full = codon_tokenizer(frame)
    fe = full.encode(seq)
    assert full.decode(fe.ids) == seq  # frame prefix and tail become single bases
    assert fe.spans[:frame].tolist() == [[i, i + 1] for i in range(frame)]
    # shifting the sequence by one base shifts the frame: frame f on seq == frame f+1 on "A" + seq
    if frame < 2:
        assert codon_tokenizer(frame + 1, "drop").encode("A" + seq).ids.tolist() == enc.ids.tolist()


def test_spans_cover_every_base_once_non_overlapping():
    seq = _random_dna(100, seed=3)
    for tok in (codon_tokenizer(1), kmer_tokenizer(6, overlapping=False), nucleotide_tokenizer()):
        sp = tok.encode(seq, prefix=["<cls>"], suffix=["<eos>"]).spans
        assert sp[0].tolist() == [-1, -1] and sp[-1].tolist() == [-1, -1]
        body = sp[1:-1]
        assert body[0, 0] == 0 and body[-1, 1] == len(seq) and (body[1:, 0] == body[:-1, 1]).all()


@pytest.mark.parametrize("make", [nucleotide_tokenizer, lambda: kmer_tokenizer(3), lambda: kmer_tokenizer(5, False),
                                  lambda: codon_tokenizer(2), lambda: DNATokenizer(k=4, stride=2)])
def test_round_trip_lossless_for_acgt(make):
    tok = make()
    for n in (0, 1, 2, 3, 4, 17, 200):
        seq = _random_dna(n, seed=n)
        assert tok.decode(tok.encode(seq, prefix=["<cls>"], suffix=["<sep>"]).ids) == seq
    assert tok.decode(tok.encode("acgt").ids) == "ACGT"


def test_ambiguity_handling():
    tok = kmer_tokenizer(3)
    enc = tok.encode("ACNTA")
    assert enc.ids.tolist() == [tok.n_kmer_id] * 3 and tok.tokens(enc.ids) == ["NNN"] * 3
    assert tok.encode("AC*GT").ids[0] == tok.unk_id
    nt = nucleotide_tokenizer()
    assert nt.tokens(nt.encode("ARY").ids) == ["A", "N", "N"]
    full = nucleotide_tokenizer(iupac=True)
    s = "ACGTNRYSWKMBDHV"
    assert full.decode(full.encode(s).ids) == s and full.vocab_size == 7 + 15
    assert full.encode("x").ids.tolist() == [full.unk_id]


def test_decode_skips_or_shows_specials():
    tok = nucleotide_tokenizer()
    ids = tok.encode("AC", prefix=["<cls>"], suffix=["<sep>"]).ids.tolist() + [tok.pad_id]
    assert tok.decode(ids) == "AC"
    assert tok.decode(ids, skip_special=False) == "<cls>AC<sep>"
    with pytest.raises(ValueError, match="outside the vocabulary"):
        tok.decode([999])
    with pytest.raises(ValueError, match="not special tokens"):
        tok.encode("A", prefix=["<foo>"])


def test_encode_batch_padding_and_truncation():
    tok = kmer_tokenizer(3)
    b = tok.encode_batch(["ACGTAC", "ACG"], prefix=["<cls>"], suffix=["<sep>"])
    assert b.ids.shape == (2, 6) and b.lengths.tolist() == [6, 3]
    assert b.ids[1, 3:].tolist() == [tok.pad_id] * 3 and b.mask.sum().item() == 9
    assert (b.spans[1, 3:] == -1).all()
    with pytest.raises(ValueError, match="sequence 0 has 6 tokens > max_length=4"):
        tok.encode_batch(["ACGTAC"], max_length=4, prefix=["<cls>"], suffix=["<sep>"])
    t = tok.encode_batch(["ACGTAC"], max_length=4, prefix=["<cls>"], suffix=["<sep>"], truncation=True)
    assert t.ids[0].tolist() == [tok.cls_id, 7 + 6, 7 + 27, tok.sep_id]


def test_save_load_atomic(tmp_path):
    tok = codon_tokenizer(1, remainder="drop")
    path = tok.save(tmp_path / "model")
    assert path.name == "dna_tokenizer.json" and [p.name for p in path.parent.iterdir()] == [path.name]
    back = DNATokenizer.load(tmp_path / "model")
    assert back == tok and back.vocab == tok.vocab
    seq = _random_dna(50)
    assert back.encode(seq).ids.tolist() == tok.encode(seq).ids.tolist()
    doc = json.loads(path.read_text())
    doc["vocab"][10] = "XXX"
    (tmp_path / "edited.json").write_text(json.dumps(doc))
    with pytest.raises(ValueError, match="edited.json: stored vocabulary differs"):
        DNATokenizer.load(tmp_path / "edited.json")
    (tmp_path / "junk.json").write_text("{not json")
    with pytest.raises(ValueError, match="junk.json: not a valid DNA tokenizer"):
        DNATokenizer.load(tmp_path / "junk.json")
    with pytest.raises(FileNotFoundError):
        DNATokenizer.load(tmp_path / "missing")


def test_constructor_arguments_checked():
    with pytest.raises(ValueError, match="stride=4"):
        DNATokenizer(k=3, stride=4)
    with pytest.raises(ValueError, match="frame=3"):
        DNATokenizer(k=3, frame=3)
    with pytest.raises(ValueError, match="iupac"):
        DNATokenizer(k=2, iupac=True)
    with pytest.raises(ValueError, match="remainder"):
        DNATokenizer(k=2, remainder="pad")


def test_reverse_complement_augmentation():
    aug = ReverseComplement(p=1.0, seed=0)
    mask = np.array([True, False, False, True, True])
    s, m = aug("AACGR", mask)
    assert s == "YCGTT" and m.tolist() == mask[::-1].tolist()
    assert aug(*aug("ACGTN", None))[0] == "ACGTN"
    assert ReverseComplement(p=0.0)("ACG")[0] == "ACG"
    a, b = ReverseComplement(0.5, seed=7), ReverseComplement(0.5, seed=7)
    flips_a = [a("AAC")[0] for _ in range(20)]
    assert flips_a == [b("AAC")[0] for _ in range(20)] and len(set(flips_a)) == 2
    # reverse complement then tokenize == the k-mers of the reverse complement, by the formula
    seq = _random_dna(30, seed=5)
    tok = kmer_tokenizer(3)
    rc = reverse_complement(seq)
    assert tok.encode(rc).ids.tolist() == [_formula(rc[i:i + 3]) for i in range(28)]


@pytest.mark.parametrize("make", [nucleotide_tokenizer, lambda: kmer_tokenizer(3), lambda: codon_tokenizer(1)])
def test_empty_sequences_are_named(make):
    tok = make()
    with pytest.raises(ValueError, match=r"sequences 0, 1 \(2 of 2\) are empty"):
        tok.encode_batch(["", ""])
    with pytest.raises(ValueError, match=r"sequence 1 \(1 of 3\) is empty"):
        tok.encode_batch(["ACGT", "", "GG"], prefix=["<cls>"])
    assert tok.encode("").ids.tolist() == [] and tok.encode("", ["<cls>"]).ids.tolist() == [tok.cls_id]
    assert tok.num_tokens(0) == 0


def test_sequences_too_short_for_whole_kmers_are_named():
    tok = codon_tokenizer(remainder="drop")
    with pytest.raises(ValueError, match=r"sequence 1 \(1 of 2\) gives no tokens: 2 bases.*frame 0 \+ k=3.*remainder"):
        tok.encode_batch(["ACGTAC", "AC"])


@pytest.mark.parametrize("arg,value", [("k", 2.7), ("k", "3"), ("k", True), ("k", None), ("stride", 1.5),
                                       ("frame", "1")])
def test_tokenizer_integer_arguments_must_be_int(arg, value):
    with pytest.raises(TypeError, match=rf"{arg} must be an int, got {value!r}"):
        DNATokenizer(**{"k": 3, arg: value})


def test_encode_batch_argument_types():
    tok = nucleotide_tokenizer()
    with pytest.raises(TypeError, match=r"encode_batch\(\) takes a list of str, got str"):
        tok.encode_batch("ACGT")
    with pytest.raises(TypeError, match=r"max_length must be an int or None, got 'x'"):
        tok.encode_batch(["ACGT"], max_length="x")
    with pytest.raises(TypeError, match=r"sequence 1 is int, not str"):
        tok.encode_batch(["ACGT", 7])


def test_decode_takes_integer_ids_only():
    tok = nucleotide_tokenizer()
    with pytest.raises(TypeError, match=r"decode\(\) takes integer token ids, got .*str"):
        tok.decode("ACGT")
    with pytest.raises(TypeError, match=r"tokens\(\) takes integer token ids, got float"):
        tok.tokens([7.5])
    assert tok.decode(torch.tensor([[7, 8], [9, 10]])) == "ACGT" and tok.decode([]) == ""
