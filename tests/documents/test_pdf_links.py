"""Entity linking on the R manuals' own link annotations: TOC / index page numbers (values) and the entry text left of
them (keys), the counted skips, the split, the cache, and a short fine-tune through the entity_linking task."""
import json
from collections import Counter
from pathlib import Path

import numpy as np
import pytest

from domains.documents.data import manual_pages, split_of_page
from domains.documents.document import Page, make_words
from domains.documents.pdf import PdfError, _is_leader
from domains.documents.pdf_links import (KEY_LABEL, VALUE_LABEL, coverage, extract_links, is_page_number,
                                         link_entities, link_windows, r_manual_link_pages)
from domains.documents.task import EntityLinkingTask
from zoo.errors import ConfigError
from zoo.finetune.config import build_config
from zoo.finetune.engine import finetune

pytestmark = pytest.mark.debian_data("r-doc-pdf")

MANUALS = Path("/usr/share/doc/r-doc-pdf/manual")
R_INTRO, R_LANG, R_DATA, REFMAN = (MANUALS / f"{m}.pdf" for m in ("R-intro", "R-lang", "R-data", "refman"))
TINY = {"dim": 32, "depth": 1, "num_heads": 2, "mlp_hidden": 64, "drop": 0.0, "attn_drop": 0.0, "link_dim": 32}


def _need(path: Path) -> Path:
    if not path.is_file():
        pytest.fail(f"{path} is missing: run scripts/setup.sh (apt-get install r-doc-pdf)")
    return path


def _internal_links(path: Path, number: int):
    """(pdfplumber annotation, rect in a top-left frame computed here from the raw PDF Rect) of the /GoTo links."""
    import pdfplumber
    with pdfplumber.open(str(path), pages=[number]) as pdf:
        page = pdf.pages[0]
        out = []
        for a in page.annots:
            action = a["data"].get("A") or {}
            if str(action.get("S")).strip("/'") != "GoTo":
                continue
            x0, y0, x1, y1 = [float(v) for v in a["data"]["Rect"]]
            out.append((min(x0, x1), page.height - max(y0, y1), max(x0, x1), page.height - min(y0, y1)))
        return out, len(page.annots)


def _links(page: Page):
    ents = page.entity_by_id()
    return [(ents[a], ents[b]) for a, b in page.links]


def _same_line(a, b) -> bool:
    ca, cb = (a.box_px[1] + a.box_px[3]) / 2, (b.box_px[1] + b.box_px[3]) / 2
    return abs(ca - cb) <= 0.5 * min(a.box_px[3] - a.box_px[1], b.box_px[3] - b.box_px[1])


# ---- real pages ------------------------------------------------------------------------------------------------

def test_toc_page_links_every_page_number_to_its_entry():
    rects, n_annots = _internal_links(_need(R_INTRO), 3)
    assert n_annots == len(rects) == 36                    # R-intro p. 3: 36 annotations, all internal /GoTo
    ex = extract_links(R_INTRO, pages=[3], cache_dir=False)
    assert [p.number for p in ex.pages] == [3] and ex.stats["links"] == 36
    page = ex.pages[0]
    links = _links(page)
    assert len(links) == 36 and sum(e.label == KEY_LABEL for e in page.entities) == 36
    first_key, first_value = links[0]
    assert (first_key.text, first_value.text) == ("Preface", "1")
    for key, value in links:
        assert key.label == KEY_LABEL and value.label == VALUE_LABEL
        assert all(is_page_number(page.words[i].text) for i in value.word_ids)
        assert _same_line(key, value) and key.box_px[2] < value.box_px[0]
        assert not any(_is_leader(page.words[i].text) for i in key.word_ids)
    assert not any(_is_leader(w.text) for w in page.words)  # leader dots are dropped from the page
    # words and annotations share one frame: each value word lies mostly inside an annotation rectangle computed
    # here from the raw PDF Rect (origin bottom-left)
    values = np.asarray([page.words[i].box_px for _, v in links for i in v.word_ids])
    assert (coverage(values, np.asarray(rects)).max(1) > 0.5).all()
    # labels are FUNSD's: words of keys / values carry them, the rest none
    assert {w.label for w in page.words} == {KEY_LABEL, VALUE_LABEL, None}


def test_index_page_two_columns_and_continuation_lines():
    rects, _ = _internal_links(_need(R_LANG), 67)
    ex = extract_links(R_LANG, pages=[67], cache_dir=False)
    page = ex.pages[0]
    # every internal link of the index page is a used value or a counted skip
    assert ex.stats["links"] + sum(ex.skipped.values()) - ex.skipped["external_link"] == len(rects)
    mid = page.width / 2
    by_key = {}
    for key, value in _links(page):
        by_key.setdefault(key.text, []).append(value.text)
        left = lambda e: (e.box_px[0] + e.box_px[2]) / 2 < mid  # noqa: E731
        assert value.box_px[1] >= key.box_px[1] - 1 or (left(key) and not left(value)), (key.text, value.text)
        assert left(key) == left(value) or value.box_px[1] < key.box_px[1]   # a right column may continue the left
    # "assignment . . . 5, 11, 12, 20, 22, 27, 28, 33, 40, 42, 57": one key, eleven values
    assert by_key["assignment"] == ["5,", "11,", "12,", "20,", "22,", "27,", "28,", "33,", "40,", "42,", "57"]
    assert "frame" in by_key and "#line" in by_key        # the two columns of one line are two entries


def test_refman_index_ranges_separators_and_continuations():
    ex = extract_links(_need(REFMAN), pages=[2380], cache_dir=False)
    page = ex.pages[0]
    by_key = {}
    for key, value in _links(page):
        by_key.setdefault(key.text, []).append(value.text)
    assert not any(k.endswith(",") or k == "," for k in by_key)   # commas between numbers separate values
    assert len(by_key["gpar"]) >= 30                       # a page list wrapped over six lines
    assert "1037\u20131040" in by_key["graphical parameters"]    # a range under two links is one value
    assert ex.skipped["link_shares_a_word"] >= 1 and ex.stats["continued_values"] > 0


def test_windows_are_crops_of_whole_lines_that_keep_the_links():
    pairs = lambda p: [(p.entity_by_id()[a].text, p.entity_by_id()[b].text) for a, b in p.links]  # noqa: E731
    toc = extract_links(_need(R_INTRO), pages=[3], cache_dir=False).pages[0]
    skipped = Counter()
    (whole,) = link_windows(toc, 10_000, skipped)          # one column, room for every word: the whole page
    assert pairs(whole) == pairs(toc) and whole.texts == toc.texts and skipped["link_across_windows"] == 0
    page = extract_links(_need(R_LANG), pages=[67], cache_dir=False).pages[0]
    left, right = link_windows(page, 10_000, skipped)     # an index page: one crop per column
    assert len(left.links) + len(right.links) + skipped["link_across_windows"] == len(page.links)
    skipped = Counter()
    wins = link_windows(page, 40, skipped)
    assert len(wins) > 4 and all(len(w.words) <= 40 for w in wins)
    kept = [x for w in wins for x in pairs(w)]
    assert len(kept) + skipped["link_across_windows"] == len(page.links) and set(kept) <= set(pairs(page))
    assert len(kept) > 0.8 * len(page.links)
    for w in wins:
        b = w.boxes                                        # 0..1000 over the crop, not over the page
        assert b[:, 0].min() == 0 and b[:, 1].min() == 0 and b[:, 2].max() == 1000 and b[:, 3].max() == 1000
        assert w.width < page.width / 2                    # a crop holds lines of one column of the index
        assert [x.line for x in w.words] == sorted(x.line for x in w.words)
        for e in w.entities:
            assert all(w.words[i].entity == e.id for i in e.word_ids)
    with pytest.raises(ValueError, match="max_words"):
        link_windows(page, 0)


def test_page_without_annotations_gives_no_page(tmp_path):
    import pypdfium2 as pdfium
    _, n = _internal_links(_need(R_INTRO), 13)
    assert n == 0                                          # R-intro p. 13 has no annotation
    ex = extract_links(R_INTRO, pages=[13], cache_dir=False)
    assert ex.pages == [] and ex.stats["pages"] == 1 and ex.stats["pages_with_internal_links"] == 0
    src, out = pdfium.PdfDocument(str(R_INTRO)), pdfium.PdfDocument.new()
    out.import_pages(src, [12])
    out.save(str(tmp_path / "plain.pdf"))
    out.close()
    src.close()
    ex = extract_links(tmp_path / "plain.pdf", cache_dir=tmp_path / "cache")
    assert ex.pages == [] and ex.stats["pages"] == 1
    assert extract_links(tmp_path / "plain.pdf", cache_dir=tmp_path / "cache").pages == []


def test_split_is_the_word_labelling_split_and_deterministic():
    a = extract_links(_need(R_DATA), pages="3,38-40", cache_dir=False)
    b = extract_links(R_DATA, pages="3,38-40", cache_dir=False)
    assert a.splits == b.splits and [p.number for p in a.pages] == [3, 38, 39, 40]
    words = {p.number: p for p in manual_pages(R_DATA, pages="3,38-40", cache_dir=False)}
    assert a.splits == [split_of_page(words[n].texts) for n in (3, 38, 39, 40)]
    assert "test" in a.splits and "train" in a.splits      # p. 40 is a test page, the others train


def test_cache_round_trip_and_damaged_cache(tmp_path):
    import pypdfium2 as pdfium
    src, out = pdfium.PdfDocument(str(_need(R_DATA))), pdfium.PdfDocument.new()
    out.import_pages(src, [2, 39])                         # TOC p. 3 and index p. 40 keep their annotations
    out.save(str(tmp_path / "R-data.pdf"))
    out.close()
    src.close()
    fresh = extract_links(tmp_path / "R-data.pdf", cache_dir=tmp_path / "c")
    (cache,) = (tmp_path / "c").glob("R-data-*-links-v*.json")
    cached = extract_links(tmp_path / "R-data.pdf", cache_dir=tmp_path / "c")
    assert len(fresh.pages) == 2 and fresh.splits == cached.splits == ["train", "test"]
    for p, q in zip(fresh.pages, cached.pages):
        assert p.texts == q.texts and p.links == q.links and p.boxes.tolist() == q.boxes.tolist()
        entities = lambda page: [(e.label, e.word_ids, e.text) for e in page.entities]  # noqa: E731
        assert entities(p) == entities(q)
        assert [w.entity for w in p.words] == [w.entity for w in q.words]
    assert fresh.stats == cached.stats and fresh.skipped == cached.skipped
    cache.write_text("{not json")
    again = extract_links(tmp_path / "R-data.pdf", cache_dir=tmp_path / "c")
    assert again.stats == fresh.stats and json.loads(cache.read_text())["format"] >= 1
    # valid JSON whose records do not fit together (an entity naming a word the page does not have) is rebuilt too
    data = json.loads(cache.read_text())
    data["pages"][0]["entities"][0][1] = [10 ** 6]
    cache.write_text(json.dumps(data))
    again = extract_links(tmp_path / "R-data.pdf", cache_dir=tmp_path / "c")
    assert [p.links for p in again.pages] == [p.links for p in fresh.pages]
    assert json.loads(cache.read_text())["pages"][0]["entities"][0][1] != [10 ** 6]


def test_bad_files_name_the_file(tmp_path):
    bad = tmp_path / "broken.pdf"
    bad.write_bytes(b"%PDF-1.4\nnot really a pdf")
    with pytest.raises(PdfError, match="broken.pdf"):
        extract_links(bad, cache_dir=False)
    with pytest.raises(PdfError, match=r"R-intro.pdf: page 500 is out of range"):
        extract_links(_need(R_INTRO), pages=[500], cache_dir=False)
    with pytest.raises(FileNotFoundError, match="nope.pdf"):
        extract_links(tmp_path / "nope.pdf", cache_dir=False)
    with pytest.raises(IsADirectoryError, match=rf"{tmp_path.name}: is a directory, not a PDF file"):
        extract_links(tmp_path, cache_dir=False)


# ---- the rule on a made-up page --------------------------------------------------------------------------------

def _page(items):
    texts, boxes = [t for t, _ in items], [(x0, y, x1, y + 10) for _, (x0, x1, y) in items]
    return Page(words=make_words(texts, boxes, 612, 792, where="made-up page 1"), width=612, height=792,
                source="made-up").order_words()


def _box(items, text):
    (x0, x1, y), = [b for t, b in items if t == text]
    return (x0, y, x1, y + 10)


def test_rule_keys_values_columns_and_skips():
    items = [("alpha", (90, 120, 100)), (".", (125, 128, 100)), (".", (131, 134, 100)), ("3,", (200, 210, 100)),
             ("7", (214, 222, 100)),
             ("beta", (90, 115, 115)), ("gamma", (118, 150, 115)), ("12", (200, 212, 115)),
             ("20,", (110, 122, 130)), ("21", (126, 136, 130)),             # continues "beta gamma"
             ("see", (90, 105, 145)), ("also", (108, 125, 145)),          # under a cross-reference link
             ("60", (340, 352, 85)),                                      # top of the right column: continues
             ("delta", (320, 350, 160)), (",", (351, 353, 160)), ("40", (356, 368, 160)), (",,", (368, 370, 160)),
             ("41", (373, 385, 160)), ("50", (340, 352, 175))]
    values = ["3,", "7", "12", "20,", "21", "60", "40", "41", "50"]
    rects = [_box(items, v) for v in values] + [(88, 143, 127, 157), (400, 700, 420, 710)]
    skipped, stats = Counter(), Counter()
    page = link_entities(_page(items), rects, skipped, stats)
    got = sorted((k.text, v.text) for k, v in _links(page))
    assert got == sorted([("alpha", "3,"), ("alpha", "7"), ("beta gamma", "12"), ("beta gamma", "20,"),
                          ("beta gamma", "21"), ("beta gamma", "60"), ("delta", "40"), ("delta", "41"),
                          ("delta", "50")])
    assert skipped == Counter({"cross_reference": 1, "link_covers_no_word": 1})
    assert stats["continued_values"] == 4                  # 20, 21, 60, 50
    assert [w.text for w in page.words].count(".") == 0 and "see" in page.texts


def test_rule_bad_links_are_counted_never_raised():
    items = [("5", (100, 110, 100)), ("word", (200, 240, 300))]
    skipped = Counter()
    assert link_entities(_page(items), [_box(items, "5")], skipped) is None      # a number with no key
    assert skipped == Counter({"value_without_key": 1})
    skipped = Counter()
    assert link_entities(_page(items), [(400, 400, 420, 420), (0, 0, 0, 0)], skipped) is None
    assert skipped == Counter({"link_covers_no_word": 2})
    assert link_entities(_page([]), [(1, 1, 5, 5)], skipped) is None and skipped["link_covers_no_word"] == 3


# ---- through the entity_linking task ---------------------------------------------------------------------------

@pytest.fixture(scope="module")
def manuals_dir(tmp_path_factory):
    import pypdfium2 as pdfium
    src, out = pdfium.PdfDocument(str(_need(R_DATA))), pdfium.PdfDocument.new()
    out.import_pages(src, [2, 37, 38, 39])                 # TOC p. 3, index pp. 38-40 (p. 40: test split)
    folder = tmp_path_factory.mktemp("link_manuals")
    out.save(str(folder / "R-data.pdf"))
    out.close()
    src.close()
    return folder


def _cfg(root, out, **data):
    return build_config({
        "task": "entity_linking", "model": {"name": "doc_layoutlm_tiny", "kwargs": dict(TINY)},
        "data": {"name": "r_manual_links", "root": str(root), "manuals": ["R-data"], "cache": False,
                 "seq_len": 64, "min_freq": 1, "eval_split": "test", **data},
        "optim": {"lr": 3e-3, "warmup_steps": 0},
        "train": {"steps": 6, "batch_size": 2, "progress": False, "log_every": 1, "eval_batch_size": 4},
        "output": {"dir": str(out)}})


def test_finetune_on_manual_links(manuals_dir, tmp_path):
    pages = r_manual_link_pages(manuals_dir, ["R-data"], cache_dir=False)
    crops = r_manual_link_pages(manuals_dir, ["R-data"], cache_dir=False, max_words=64)
    assert [len(pages[s]) for s in ("train", "val", "test")] == [3, 0, 1]
    s = finetune(_cfg(manuals_dir, tmp_path / "run"))
    d = s["data"]                                          # the task cuts pages into crops of data.seq_len words
    assert d["dataset"] == "r_manual_links" and d["train_forms"] == len(crops["train"]) > 3
    assert d["eval_forms"] == len(crops["test"]) > 1
    assert d["train_links"] == sum(len(p.links) for p in crops["train"])
    assert 0.8 * 64 < d["eval_links"] == sum(len(p.links) for p in crops["test"]) <= 64   # p. 40 has 64 links
    assert set(s["final"]) >= {"link_f1", "link_precision", "link_recall", "loss"}
    assert 0.0 <= s["final"]["link_f1"] <= 1.0 and np.isfinite(s["final"]["loss"])
    losses = [json.loads(ln)["loss"] for ln in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()
              if json.loads(ln).get("event") == "train"]
    assert len(losses) == 6 and losses[-1] < losses[0]


def test_task_bad_manual_names_it(manuals_dir, tmp_path):
    with pytest.raises(ConfigError, match=r"r_manual_links.*R-nope.*not found"):
        EntityLinkingTask().build_data(_cfg(manuals_dir, tmp_path / "o", manuals=["R-nope"]))
    with pytest.raises(ConfigError, match=r"no val pages"):
        EntityLinkingTask().build_data(_cfg(manuals_dir, tmp_path / "o", eval_split="val"))
