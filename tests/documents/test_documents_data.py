"""Documents datasets: R-manual pages -> cached word arrays -> split -> vocabulary -> tensors + Positions;
FUNSD-format pages -> entity-linking tensors."""
import hashlib
import json
from pathlib import Path

import numpy as np
import pytest
import torch

import domains.documents.pdf as pdf_mod
from domains.documents.data import (FUNSD_BIO, LABELS, PageWords, WordLabelling, WordVocab, bio_labels,
                                    collate_linking, collate_words, find_r_manuals, linking_example, manual_pages,
                                    r_manual_datasets, r_manual_pages, split_of_page)
from domains.documents.document import DocumentFormatError, Page, make_words
from domains.documents.funsd import page_from_entities
from domains.documents.pdf import read_pdf
from zoo.errors import DatasetNotFoundError
from zoo.positions import Positions

R_INTRO = Path("/usr/share/doc/r-doc-pdf/manual/R-intro.pdf")


@pytest.fixture(scope="module")
def slice_pdf(tmp_path_factory):
    """R-intro pages 13-16 and 29 copied into a small PDF (pypdfium2 keeps the embedded fonts)."""
    import pypdfium2 as pdfium
    src = pdfium.PdfDocument(str(R_INTRO))
    out = pdfium.PdfDocument.new()
    out.import_pages(src, [12, 13, 14, 15, 28])
    path = tmp_path_factory.mktemp("manuals") / "R-intro-slice.pdf"
    out.save(str(path))
    out.close()
    src.close()
    return path


def test_find_r_manuals(tmp_path):
    names = [p.name for p in find_r_manuals()]
    assert names == ["R-FAQ.pdf", "R-admin.pdf", "R-data.pdf", "R-exts.pdf", "R-intro.pdf", "R-ints.pdf",
                     "R-lang.pdf", "refman.pdf"]
    assert [p.name for p in find_r_manuals("/usr/share/R/doc/manual")] == names  # fullrefman.pdf left out
    with pytest.raises(DatasetNotFoundError, match="apt-get install r-doc-pdf"):
        find_r_manuals(tmp_path)
    with pytest.raises(DatasetNotFoundError, match=r"\['R-nope'\] not found"):
        r_manual_pages(manuals=["R-nope"])


def test_split_is_a_function_of_page_content():
    texts = ["An", "Introduction", "to", "R"]
    h = hashlib.sha256("\n".join(texts).encode()).hexdigest()
    x = int(h[:16], 16) / 2 ** 64
    assert split_of_page(texts) == ("train" if x < 0.9 else "val" if x < 0.95 else "test")
    assert split_of_page(list(texts)) == split_of_page(texts)
    got = [split_of_page([f"page {i}"]) for i in range(4000)]
    frac = {s: got.count(s) / len(got) for s in ("train", "val", "test")}
    assert abs(frac["train"] - 0.9) < 0.02 and abs(frac["val"] - 0.05) < 0.015 and abs(frac["test"] - 0.05) < 0.015
    assert split_of_page(["x"], fractions=(0, 0, 1)) == "test"


def test_manual_pages_match_the_reader_and_cache_atomically(slice_pdf, tmp_path, monkeypatch):
    cache = tmp_path / "cache"
    pages = manual_pages(slice_pdf, cache_dir=cache)
    assert [p.number for p in pages] == [1, 2, 3, 4, 5] and all(p.source == "R-intro-slice.pdf" for p in pages)
    files = sorted(cache.iterdir())
    assert len(files) == 1 and files[0].suffix == ".npz"  # the cache file only, no temporary left
    ref = read_pdf(slice_pdf, pages=[2])[0]  # R-intro page 14
    p = pages[1]
    assert p.texts == ref.texts and p.texts[2:5] == ["Simple", "manipulations;", "numbers"]
    assert [LABELS[k] for k in p.labels] == ref.labels and p.boxes.tolist() == ref.boxes.tolist()
    assert p.lines.tolist() == [w.line for w in ref.words]
    # second call: from the cache, without parsing the PDF
    monkeypatch.setattr(pdf_mod.PdfReader, "page", lambda *a, **k: pytest.fail("the PDF was parsed again"))
    again = manual_pages(slice_pdf, cache_dir=cache)
    assert [q.texts for q in again] == [q.texts for q in pages]
    assert all(np.array_equal(a.boxes, b.boxes) and np.array_equal(a.labels, b.labels) for a, b in zip(again, pages))
    monkeypatch.undo()
    files[0].write_bytes(b"garbage")  # a damaged cache is rebuilt
    rebuilt = manual_pages(slice_pdf, cache_dir=cache)
    assert [q.texts for q in rebuilt] == [q.texts for q in pages] and np.load(files[0])["format"] == 1


def test_vocab_build_save_load(tmp_path):
    vocab = WordVocab.build(["b", "a", "b", "c", "a", "b", "d"], min_freq=2)
    assert vocab.itos == ["<pad>", "<unk>", "b", "a"] and len(vocab) == 4
    assert vocab.encode(["a", "zzz", "b"]) == [3, 1, 2]
    path = tmp_path / "v" / "vocab.json"
    vocab.save(path)
    assert sorted(p.name for p in path.parent.iterdir()) == ["vocab.json"]
    loaded = WordVocab.load(path)
    assert loaded.itos == vocab.itos and loaded.encode(["a"]) == [3]
    low = WordVocab.build(["The", "the", "THE"], min_freq=3, lowercase=True)
    assert low.encode(["tHe"]) == [2] and WordVocab.load(low.save(tmp_path / "low.json")).lowercase
    assert len(WordVocab.build(["a", "b", "c"] * 3, max_size=3)) == 3
    (tmp_path / "bad.json").write_text(json.dumps({"itos": ["a"]}))
    with pytest.raises(ValueError, match=r"bad\.json: not a WordVocab file"):
        WordVocab.load(tmp_path / "bad.json")


def test_word_labelling_tensors_and_positions(slice_pdf, tmp_path):
    pages = manual_pages(slice_pdf, cache_dir=False)
    vocab = WordVocab.build((t for p in pages for t in p.texts), min_freq=1)
    ds = WordLabelling(pages, vocab, max_len=128)
    assert len(ds) == sum(-(-len(p) // 128) for p in pages)  # every page cut into windows of <= 128 words
    first = ds[0]
    assert first["page"] == 1 and first["start"] == 0 and len(first["input_ids"]) == min(len(pages[0]), 128)
    assert max(len(ds[i]["input_ids"]) for i in range(len(ds))) == 128 and len(ds) > len(pages)
    assert vocab.itos[int(first["input_ids"][0])] == pages[0].texts[0]
    batch = collate_words([ds[i] for i in range(len(ds) - 3, len(ds))])
    b, L = batch["input_ids"].shape
    assert batch["boxes"].shape == (b, L, 4) and batch["boxes"].dtype == torch.long
    assert batch["mask"].sum(1).tolist() == [len(ds[i]["input_ids"]) for i in range(len(ds) - 3, len(ds))]
    m = batch["mask"]
    assert (batch["labels"][~m] == -100).all() and (batch["labels"][m] >= 0).all()
    assert (batch["labels"][m] < len(LABELS)).all()
    assert (batch["boxes"] >= 0).all() and (batch["boxes"] <= 1000).all()
    bx = batch["boxes"]
    assert (bx[..., 0] <= bx[..., 2]).all() and (bx[..., 1] <= bx[..., 3]).all()
    pos = batch["positions"]
    assert isinstance(pos, Positions) and pos.boxes is batch["boxes"] and pos.mask is batch["mask"]
    assert pos.ids.shape == (b, L) and pos.num_tokens == L
    assert pos.ids[0, : int(m[0].sum())].tolist() == list(range(int(m[0].sum())))
    # labels follow the font rule: the code words of page 14 ("c(10.4,") are label "code"
    code = LABELS.index("code")
    p14 = pages[1]
    k = p14.texts.index("c(10.4,")
    assert p14.labels[k] == code and ds.label_counts()["code"] > 100


def test_r_manual_datasets_split_disjoint_and_vocab_saved(slice_pdf, tmp_path):
    root = slice_pdf.parent
    vpath = tmp_path / "vocab.json"
    data, vocab = r_manual_datasets(root, max_len=64, vocab_path=vpath, min_freq=1, cache_dir=tmp_path / "c")
    seen = [(it.source, it.number) for s in ("train", "val", "test") for it in data[s].pages]
    assert sorted(seen) == [("R-intro-slice.pdf", n) for n in range(1, 6)]  # every page exactly once
    for s, ds in data.items():
        assert all(p.split == s for p in ds.pages)
    assert WordVocab.load(vpath).itos == vocab.itos
    train_words = {t for p in data["train"].pages for t in p.texts}
    assert set(vocab.itos[2:]) == train_words  # built on the train split only (min_freq=1)
    same, _ = r_manual_datasets(root, vocab=vpath, cache_dir=tmp_path / "c")
    assert [p.number for p in same["train"].pages] == [p.number for p in data["train"].pages]


def test_page_words_rejects_unknown_labels():
    page = Page(make_words(["x"], [(0, 0, 1, 1)], 10, 10, labels=["question"]), 10, 10, source="f.json")
    page.order_words()
    with pytest.raises(DocumentFormatError, match=r"f\.json page 1: label 'question'"):
        PageWords.from_page(page)


def _funsd_page():
    ents = [
        {"id": 0, "text": "DATE:", "box": [84, 109, 136, 119], "label": "question",
         "words": [{"text": "DATE:", "box": [84, 109, 136, 119]}], "linking": [[0, 1]]},
        {"id": 1, "text": "12/10/98", "box": [141, 110, 207, 119], "label": "answer",
         "words": [{"text": "12/10", "box": [141, 110, 180, 119]}, {"text": "/98", "box": [181, 110, 207, 119]}],
         "linking": [[0, 1]]},
        {"id": 2, "text": "FAX", "box": [260, 40, 310, 62], "label": "header",
         "words": [{"text": "FAX", "box": [260, 40, 310, 62]}], "linking": []},
        {"id": 3, "text": "x", "box": [700, 980, 735, 992], "label": "other",
         "words": [{"text": "x", "box": [700, 980, 735, 992]}], "linking": []}]
    return page_from_entities(ents, 762, 1000, source="form.json")


def test_entity_linking_tensors():
    page = _funsd_page()
    assert page.texts == ["FAX", "DATE:", "12/10", "/98", "x"]
    assert bio_labels(page) == ["B-HEADER", "B-QUESTION", "B-ANSWER", "I-ANSWER", "O"]
    vocab = WordVocab.build(page.texts, min_freq=1)
    item = linking_example(page, vocab)
    assert item["labels"].tolist() == [FUNSD_BIO.index(t) for t in bio_labels(page)]
    ents = item["word_entity"].tolist()
    assert ents == [2, 0, 1, 1, 3]  # words in reading order; entity indices in file order (FAX is entity 2)
    assert item["links"].tolist() == [[0, 1]] and item["entity_labels"].tolist() == [1, 2, 0, 3]
    short = linking_example(page, vocab, max_len=2)  # words FAX, DATE: -> the answer entity and its link drop out
    assert short["links"].shape == (0, 2) and short["word_entity"].tolist() == [1, 0]
    assert short["entity_labels"].tolist() == [1, 0]
    batch = collate_linking([item, short])
    assert batch["link_matrix"].shape == (2, 4, 4)
    assert batch["link_matrix"][0].nonzero().tolist() == [[0, 1]] and not batch["link_matrix"][1].any()
    assert batch["entity_mask"].sum(1).tolist() == [4, 2] and (batch["entity_labels"][1, 2:] == -100).all()
    assert (batch["word_entity"][1, 2:] == -1).all() and batch["positions"].boxes.shape == (2, 5, 4)
    assert batch["entity_boxes"][0, 2].tolist() == [int(1000 * 260 / 762), 40, int(1000 * 310 / 762), 62]


def test_truncated_cache_is_rebuilt(slice_pdf, tmp_path):
    # a cache cut short (a copy interrupted half-way, a full disk) is unreadable: rebuilt, never an error
    cache = tmp_path / "cache"
    pages = manual_pages(slice_pdf, cache_dir=cache)
    (f,) = cache.iterdir()
    data = f.read_bytes()
    for cut in (len(data) // 2, 10, 0):
        f.write_bytes(data[:cut])
        again = manual_pages(slice_pdf, cache_dir=cache)
        assert [q.texts for q in again] == [q.texts for q in pages]
        assert f.read_bytes() == data                                  # rewritten whole


def test_vocab_load_errors_name_the_file(tmp_path):
    fmt = WordVocab.FORMAT
    cases = {"dup.json": {"format": fmt, "itos": ["<pad>", "<unk>", "a", "a"]},
             "kinds.json": {"format": fmt, "itos": ["<pad>", "<unk>", 5, ["x"]]}}
    for name, data in cases.items():
        (tmp_path / name).write_text(json.dumps(data))
        with pytest.raises(ValueError, match=rf"{name}: not a WordVocab file"):
            WordVocab.load(tmp_path / name)
    (tmp_path / "cut.json").write_text(json.dumps({"format": fmt, "itos": ["<pad>", "<unk>", "a"]})[:25])
    with pytest.raises(ValueError, match=r"cut\.json: not a WordVocab file"):
        WordVocab.load(tmp_path / "cut.json")
    with pytest.raises(IsADirectoryError, match=rf"{tmp_path.name}: is a directory"):
        WordVocab.load(tmp_path)
    with pytest.raises(FileNotFoundError, match=r"nope\.json"):
        WordVocab.load(tmp_path / "nope.json")
