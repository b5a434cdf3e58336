"""domains.code.tokenizer: byte-level BPE, exact byte spans, lossless round trip, atomic save/load."""
import os
import sys

import numpy as np
import pytest

import tokenizers  # noqa: F401

from domains.code.data import find_cpython_stdlib  # noqa: E402
from domains.code.tokenizer import SPECIAL_TOKENS, CodeTokenizer, train_bpe  # noqa: E402

FILES = ("textwrap.py", "colorsys.py", "bisect.py", "fnmatch.py", "shlex.py", "queue.py", "heapq.py", "keyword.py")
SAMPLES = [
    "def f(x):\n    return x + 1\n",
    "s = 'café naïve 日本語 ✓ 🐍'  # ünïcödé\n",
    "tabs\tand\r\nCRLF\r\n   trailing   \n\n",
    "x = '<eos>' + '<pad>'\n",
    "",
    "é",
    "🐍🐍🐍",
]


@pytest.fixture(scope="module")
def stdlib_paths():
    root = find_cpython_stdlib()
    return [root / f for f in FILES]


@pytest.fixture(scope="module")
def tok(stdlib_paths):
    return train_bpe(stdlib_paths, vocab_size=600)


def test_special_tokens_and_vocab(tok):
    assert (tok.pad_id, tok.bos_id, tok.eos_id, tok.unk_id) == (0, 1, 2, 3)
    assert tok.vocab_size == 600
    assert [tok.token_bytes(i) for i in range(4)] == [t.encode() for t in SPECIAL_TOKENS]
    # merges were learned from the corpus: common Python words are single tokens
    assert len(tok.encode(" return").ids) == 1 and len(tok.encode(" self").ids) == 1


@pytest.mark.parametrize("text", SAMPLES)
def test_round_trip_and_byte_spans(tok, text):
    enc = tok.encode(text)
    data = text.encode("utf-8")
    assert tok.decode(enc.ids) == text
    assert tok.decode_bytes(enc.ids) == data
    assert enc.spans.shape == (len(enc.ids), 2) and enc.ids.dtype == np.int64
    if len(enc.ids):
        assert enc.spans[0, 0] == 0 and enc.spans[-1, 1] == len(data)
        assert (enc.spans[1:, 0] == enc.spans[:-1, 1]).all(), "spans tile the bytes"
    for tid, (s, e) in zip(enc.ids, enc.spans):
        assert data[s:e] == tok.token_bytes(tid)


def test_spans_match_hf_char_offsets_converted_to_bytes(tok):
    text = "naïve = '日本語'  # ✓ done\nprint(naïve)\n"
    enc = tok.encode(text)
    hf = tok.tokenizer.encode(text, add_special_tokens=False)
    assert hf.ids == enc.ids.tolist()
    char_to_byte = np.concatenate([[0], np.cumsum([len(c.encode()) for c in text])])
    data = text.encode()
    whole = partial = 0
    for (cs, ce), (bs, be) in zip(hf.offsets, enc.spans):
        token = data[bs:be]
        try:
            token.decode("utf-8")
        except UnicodeDecodeError:
            partial += 1  # part of a character: HF gives the whole character's offsets, ours are exact
            continue
        assert (char_to_byte[cs], char_to_byte[ce]) == (bs, be)
        whole += 1
    assert whole >= len(enc.ids) // 2
    assert partial > 0, "the sample must exercise a multi-byte character split across tokens"


def test_literal_special_token_text_is_not_special(tok):
    enc = tok.encode("a <eos> b")
    assert tok.eos_id not in enc.ids.tolist()
    assert tok.decode(enc.ids) == "a <eos> b"


def test_real_files_round_trip(tok, stdlib_paths):
    texts = [p.read_text(encoding="utf-8") for p in stdlib_paths]
    batch = tok.encode_batch(texts)
    for text, enc in zip(texts, batch):
        assert np.array_equal(enc.ids, tok.encode(text).ids)
        assert tok.decode(enc.ids) == text
        assert enc.spans[-1, 1] == len(text.encode())
    total_bytes = sum(len(t.encode()) for t in texts)
    total_tokens = sum(len(e.ids) for e in batch)
    assert total_bytes / total_tokens > 2.0, "BPE compresses the code it was trained on"


def test_decode_skip_special_and_bad_ids(tok):
    ids = [tok.bos_id] + tok.encode("x = 1").ids.tolist() + [tok.eos_id]
    assert tok.decode(ids) == "<bos>x = 1<eos>"
    assert tok.decode(ids, skip_special=True) == "x = 1"
    with pytest.raises(ValueError, match="out of range"):
        tok.decode([10 ** 6])
    with pytest.raises(TypeError, match="str"):
        tok.encode(b"bytes")


def test_save_load(tok, tmp_path):
    path = tok.save(tmp_path / "tk")
    assert path == tmp_path / "tk" / "tokenizer.json"
    assert os.listdir(tmp_path / "tk") == ["tokenizer.json"]
    for src in (tmp_path / "tk", path):
        loaded = CodeTokenizer.load(src)
        assert loaded.fingerprint == tok.fingerprint
        for text in SAMPLES:
            assert np.array_equal(loaded.encode(text).ids, tok.encode(text).ids)
            assert np.array_equal(loaded.encode(text).spans, tok.encode(text).spans)


def test_failed_save_leaves_previous_file_intact(tok, tmp_path, monkeypatch):
    tok.save(tmp_path)
    before = (tmp_path / "tokenizer.json").read_bytes()

    def boom(*a, **k):
        raise OSError("disk full")
    monkeypatch.setattr(os, "replace", boom)
    with pytest.raises(OSError, match="disk full"):
        tok.save(tmp_path)
    monkeypatch.undo()
    assert (tmp_path / "tokenizer.json").read_bytes() == before
    assert os.listdir(tmp_path) == ["tokenizer.json"], "no temporary file left behind"


def test_load_errors_name_the_file(tmp_path):
    with pytest.raises(FileNotFoundError, match="no tokenizer at"):
        CodeTokenizer.load(tmp_path)
    bad = tmp_path / "tokenizer.json"
    bad.write_text('{"version": "1.0", "model": ')
    with pytest.raises(ValueError, match="tokenizer.json"):
        CodeTokenizer.load(tmp_path)


def test_train_inputs(stdlib_paths):
    with pytest.raises(ValueError, match="vocab_size=100 is too small"):
        train_bpe(["x"], vocab_size=100)
    with pytest.raises(TypeError, match="source 1 is int"):
        train_bpe(["x", 3], vocab_size=300)
    text = stdlib_paths[0].read_text()
    a = train_bpe([text], vocab_size=400)
    b = train_bpe([text.encode()], vocab_size=400)
    c = train_bpe([stdlib_paths[0]], vocab_size=400)
    assert a.fingerprint == b.fingerprint == c.fingerprint, "str, bytes and Path sources train the same tokenizer"


def test_missing_package_error_names_extra(monkeypatch):
    monkeypatch.setitem(sys.modules, "tokenizers", None)
    with pytest.raises(ImportError, match=r'pip install "zoo-pe\[code\]"'):
        train_bpe(["x"], vocab_size=300)


def test_ids_outside_the_vocabulary_are_refused(tok):
    # a negative id must not wrap around to the last tokens of the table
    for bad in (-1, tok.vocab_size):
        with pytest.raises(ValueError, match=rf"token id {bad}\b.*vocabulary of {tok.vocab_size}"):
            tok.decode([5, bad])
        with pytest.raises(ValueError, match=rf"token id {bad}\b.*vocabulary of {tok.vocab_size}"):
            tok.token_bytes(bad)


def test_save_into_a_file_path_names_it(tok, tmp_path):
    target = tmp_path / "model.py"
    target.write_text("x = 1\n")
    with pytest.raises(NotADirectoryError, match="model.py"):
        tok.save(target)
    assert target.read_text() == "x = 1\n"                                # the user's file is untouched
