"""FUNSD / XFUND loaders on samples written in those formats (no copy of either dataset is installable here)."""
import json
import struct
import zlib
from collections import Counter

import pytest

from domains.documents.document import DocumentFormatError, LayoutPolicy
from domains.documents.funsd import (image_size, read_funsd, read_funsd_dir, read_xfund, to_funsd, to_xfund,
                                     write_funsd, write_xfund)

# a FUNSD form in the official layout: "linking" pairs appear under both entities, an "other" entity without links
FORM = {"form": [
    {"id": 0, "text": "DATE:", "box": [84, 109, 136, 119], "label": "question",
     "words": [{"text": "DATE:", "box": [84, 109, 136, 119]}], "linking": [[0, 1]]},
    {"id": 1, "text": "12/10/98", "box": [141, 110, 207, 119], "label": "answer",
     "words": [{"text": "12/10/98", "box": [141, 110, 207, 119]}], "linking": [[0, 1]]},
    {"id": 2, "text": "FAX COVER SHEET", "box": [260, 40, 480, 62], "label": "header",
     "words": [{"text": "FAX", "box": [260, 40, 310, 62]}, {"text": "COVER", "box": [318, 40, 400, 62]},
               {"text": "SHEET", "box": [405, 40, 480, 62]}], "linking": []},
    {"id": 3, "text": "TO: Dr. Smith", "box": [84, 140, 230, 151], "label": "question",
     "words": [{"text": "TO:", "box": [84, 140, 110, 151]}, {"text": "Dr.", "box": [116, 140, 140, 151]}],
     "linking": [[3, 4]]},
    {"id": 4, "text": "Smith", "box": [146, 140, 230, 151], "label": "answer",
     "words": [{"text": "Smith", "box": [146, 140, 230, 151]}], "linking": [[3, 4]]},
    {"id": 5, "text": "page 1", "box": [700, 980, 760, 992], "label": "other",
     "words": [{"text": "page", "box": [700, 980, 735, 992]}, {"text": "1", "box": [740, 980, 760, 992]}],
     "linking": []},
]}


def _png(width, height):
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    chunk = lambda t, d: struct.pack(">I", len(d)) + t + d + struct.pack(">I", zlib.crc32(t + d))  # noqa: E731
    raw = b"".join(b"\0" + b"\xff" * width for _ in range(height))
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(raw)) + chunk(b"IEND", b"")


def _jpeg_header(width, height):
    app0 = b"\xff\xe0" + struct.pack(">H", 16) + b"JFIF\0\x01\x01\0\0\x01\0\x01\0\0"
    sof0 = b"\xff\xc0" + struct.pack(">HBHHB", 11, 8, height, width, 1) + b"\x01\x11\x00"
    return b"\xff\xd8" + app0 + sof0 + b"\xff\xd9"


@pytest.fixture
def funsd_root(tmp_path):
    root = tmp_path / "training_data"
    (root / "annotations").mkdir(parents=True)
    (root / "images").mkdir()
    (root / "annotations" / "0001.json").write_text(json.dumps(FORM))
    (root / "images" / "0001.png").write_bytes(_png(762, 1000))
    return root


def test_image_size_from_headers(tmp_path):
    (tmp_path / "a.png").write_bytes(_png(37, 21))
    (tmp_path / "b.jpg").write_bytes(_jpeg_header(2480, 3508))
    (tmp_path / "c.gif").write_bytes(b"GIF89a....")
    assert image_size(tmp_path / "a.png") == (37, 21)
    assert image_size(tmp_path / "b.jpg") == (2480, 3508)
    with pytest.raises(DocumentFormatError, match=r"c\.gif: cannot read the image size"):
        image_size(tmp_path / "c.gif")


def test_read_funsd_entities_words_links(funsd_root):
    (page,) = read_funsd_dir(funsd_root)
    assert (page.width, page.height) == (762, 1000)  # from the PNG header
    assert [e.id for e in page.entities] == [0, 1, 2, 3, 4, 5]
    assert page.links == [(0, 1), (3, 4)]  # each pair listed under both entities, kept once
    assert len(page.words) == 10
    by_id = {w.id: w for w in page.words}
    header = page.entity_by_id()[2]
    assert [by_id[i].text for i in header.word_ids] == ["FAX", "COVER", "SHEET"]
    assert {by_id[i].label for i in header.word_ids} == {"header"} and by_id[header.word_ids[0]].entity == 2
    assert header.box == (int(1000 * 260 / 762), 40, int(1000 * 480 / 762), 62)
    # reading order: the header line first, then DATE line, TO line, footer
    assert page.texts == ["FAX", "COVER", "SHEET", "DATE:", "12/10/98", "TO:", "Dr.", "Smith", "page", "1"]
    assert [w.line for w in page.words] == [0, 0, 0, 1, 1, 2, 2, 2, 3, 3]
    file_order = read_funsd(funsd_root / "annotations" / "0001.json", order="file")
    assert file_order.texts[:3] == ["DATE:", "12/10/98", "FAX"]
    for w in page.words:
        assert 0 <= w.box[0] <= w.box[2] <= 1000 and 0 <= w.box[1] <= w.box[3] <= 1000


def test_funsd_round_trip_keeps_ids_links_and_boxes(funsd_root, tmp_path):
    page = read_funsd(funsd_root / "annotations" / "0001.json")
    out = tmp_path / "out" / "0001.json"
    write_funsd(page, out)
    assert sorted(p.name for p in out.parent.iterdir()) == ["0001.json"]  # no temporary file left behind
    back = json.loads(out.read_text())
    assert back == FORM  # ids, texts, boxes, labels, words and linking (under both entities) as in the input
    again = read_funsd(out, size=(762, 1000))
    assert [(e.id, e.label, e.box) for e in again.entities] == [(e.id, e.label, e.box) for e in page.entities]
    assert again.links == page.links and again.texts == page.texts
    assert to_funsd(again) == back


def test_dangling_link_error_names_file_and_entity(tmp_path):
    form = json.loads(json.dumps(FORM))
    form["form"][3]["linking"] = [[3, 4], [3, 42]]
    path = tmp_path / "bad_links.json"
    path.write_text(json.dumps(form))
    with pytest.raises(DocumentFormatError, match=r"bad_links\.json page 1 entity 3: link \[3, 42\] points to "
                                                  r"entity id 42"):
        read_funsd(path, size=(762, 1000))
    skipped = Counter()
    page = read_funsd(path, size=(762, 1000), policy=LayoutPolicy(dangling_link="drop"), skipped=skipped)
    assert page.links == [(0, 1), (3, 4)] and skipped["dangling_link"] == 1


def test_bad_boxes_and_structure(tmp_path):
    form = json.loads(json.dumps(FORM))
    form["form"][4]["words"][0]["box"] = [146, 140, 900, 151]  # beyond the 762 px wide image
    path = tmp_path / "wide.json"
    path.write_text(json.dumps(form))
    page = read_funsd(path, size=(762, 1000))  # default: clamp
    smith = next(w for w in page.words if w.text == "Smith")
    assert smith.box_px[2] == 762 and smith.box[2] == 1000
    with pytest.raises(DocumentFormatError, match=r"wide\.json page 1 entity 4 word 0 \('Smith'\): box .* outside"):
        read_funsd(path, size=(762, 1000), policy=LayoutPolicy(box="error"))
    form["form"][4]["box"] = [146, 140, 900, 151]
    path.write_text(json.dumps(form))
    skipped = Counter()
    page = read_funsd(path, size=(762, 1000), policy=LayoutPolicy(box="drop"), skipped=skipped)
    assert 4 not in page.entity_by_id() and page.links == [(0, 1)]  # the dropped entity takes its link along
    assert skipped == Counter(entity_box_out_of_range=1, link_to_dropped_entity=2)

    cases = [({"form": [{"id": 0, "text": "x", "box": [0, 0, 1, 1]}]}, r"entity #0: missing key\(s\) \['words'\]"),
             ({"form": [FORM["form"][0], dict(FORM["form"][1], id=0)]}, "entity 0: duplicate entity id"),
             ({"form": [dict(FORM["form"][0], id="a")]}, r"entity #0: id 'a' is not an integer"),
             ({"form": [dict(FORM["form"][0], linking=[[0, 1, 2]])]}, r"entity 0: link \[0, 1, 2\] is not a pair"),
             ({"form": [dict(FORM["form"][0], words=[{"text": "DATE:"}])]}, r"entity 0 word 0 \('DATE:'\) has no box"),
             ({"forms": []}, "no top-level 'form' list")]
    for k, (data, msg) in enumerate(cases):
        p = tmp_path / f"case{k}.json"
        p.write_text(json.dumps(data))
        with pytest.raises(DocumentFormatError, match=rf"case{k}\.json.*{msg}"):
            read_funsd(p, size=(762, 1000))
    broken = tmp_path / "broken.json"
    broken.write_text(json.dumps(FORM)[:200])
    with pytest.raises(DocumentFormatError, match=r"broken\.json: not valid JSON"):
        read_funsd(broken, size=(762, 1000))
    lonely = tmp_path / "annotations" / "lonely.json"
    lonely.parent.mkdir()
    lonely.write_text(json.dumps(FORM))
    with pytest.raises(DocumentFormatError, match=r"lonely\.json: the image size is unknown.*size=\(width, height\)"):
        read_funsd(lonely)


def test_xfund_file_and_round_trip(tmp_path):
    docs = {"lang": "de", "version": "0.1", "split": "val", "documents": [
        {"id": "de_val_0", "uid": "x", "img": {"fname": "de_val_0.jpg", "width": 2480, "height": 3508},
         "document": FORM["form"]},
        {"id": "de_val_1", "img": {"fname": "de_val_1.jpg", "width": 1240, "height": 1754},
         "document": [{"id": 7, "text": "Name", "box": [10, 10, 90, 40], "label": "question",
                       "words": [{"text": "Name", "box": [10, 10, 90, 40]}], "linking": [[7, 8]]},
                      {"id": 8, "text": "Anna", "box": [100, 10, 190, 40], "label": "answer",
                       "words": [{"text": "Anna", "box": [100, 10, 190, 40]}], "linking": [[7, 8]]}]}]}
    path = tmp_path / "de.val.json"
    path.write_text(json.dumps(docs, ensure_ascii=False))
    pages = read_xfund(path)
    assert [p.source for p in pages] == [f"{path}#de_val_0", f"{path}#de_val_1"]
    assert (pages[1].width, pages[1].height) == (1240, 1754) and pages[1].links == [(7, 8)]
    assert pages[1].words[1].box == (int(1000 * 100 / 1240), int(1000 * 10 / 1754), int(1000 * 190 / 1240),
                                     int(1000 * 40 / 1754))
    out = tmp_path / "copy.json"
    write_xfund(pages, out, lang="de", split="val", fnames=["de_val_0.jpg", "de_val_1.jpg"])
    back = json.loads(out.read_text())
    for d in docs["documents"]:
        d.pop("uid", None)
    assert back == docs
    assert to_xfund(read_xfund(out), lang="de", split="val",
                    fnames=["de_val_0.jpg", "de_val_1.jpg"]) == back

    docs["documents"][1]["document"][0]["linking"] = [[7, 99]]
    path.write_text(json.dumps(docs))
    with pytest.raises(DocumentFormatError, match=r"de\.val\.json#de_val_1 page 1 entity 7: link \[7, 99\]"):
        read_xfund(path)
    docs["documents"][0]["img"] = {"fname": "x.jpg"}
    path.write_text(json.dumps(docs))
    with pytest.raises(DocumentFormatError, match=r"document 'de_val_0': 'img' needs numeric 'width'"):
        read_xfund(path)
    path.write_text(json.dumps({"form": []}))
    with pytest.raises(DocumentFormatError, match="not an XFUND file"):
        read_xfund(path)


def test_malformed_values_name_the_file_and_entity(tmp_path):
    # JSON allows NaN / Infinity; ids, labels, texts and boxes of the wrong kind are refused, never converted
    ent = lambda **kw: dict(dict(FORM["form"][0], linking=[]), **kw)  # noqa: E731
    raw_cases = [(b'{"form": [{"id": NaN, "box": [1, 1, 2, 2], "words": []}]}', r"entity #0: id nan is not an integer"),
                 (b'{"form": [{"id": Infinity, "box": [1, 1, 2, 2], "words": []}]}',
                  r"entity #0: id inf is not an integer")]
    cases = [({"form": [ent(label=5)]}, r"entity 0: label 5 is not a string"),
             ({"form": [ent(words=[{"text": {"a": 1}, "box": [84, 109, 136, 119]}])]},
              r"entity 0 word 0: text \{'a': 1\} is not a string"),
             ({"form": [ent(box=[True, 109, 136, 119])]}, r"entity 0 has a malformed box \[True, 109, 136, 119\]"),
             ({"form": [ent(words=[{"text": "DATE:", "box": ["84", 109, 136, 119]}])]},
              r"entity 0 word 0 \('DATE:'\) has a malformed box \['84', 109, 136, 119\]")]
    for k, (data, msg) in enumerate(raw_cases + [(json.dumps(d).encode(), m) for d, m in cases]):
        p = tmp_path / f"bad{k}.json"
        p.write_bytes(data)
        with pytest.raises(DocumentFormatError, match=rf"bad{k}\.json page 1 {msg}"):
            read_funsd(p, size=(762, 1000))
    good = tmp_path / "good.json"
    good.write_text(json.dumps(FORM))
    for size in ((float("inf"), 1000), (762, float("nan")), ("762", 1000), (True, 1000), (0, 1000)):
        with pytest.raises(DocumentFormatError, match=r"good\.json page 1: image size must be positive and finite "
                                                      r"number"):
            read_funsd(good, size=size)
    docs = {"documents": [{"id": "d0", "img": {"width": True, "height": 10}, "document": []}]}
    xf = tmp_path / "x.json"
    for img in ({"width": True, "height": 10}, {"width": 10, "height": 1e999}):
        docs["documents"][0]["img"] = img
        xf.write_text(json.dumps(docs))
        with pytest.raises(DocumentFormatError, match=r"x\.json document 'd0': 'img' needs"):
            read_xfund(xf)


def test_damaged_image_headers_name_the_file(tmp_path):
    png, jpg = tmp_path / "cut.png", tmp_path / "cut.jpg"
    png.write_bytes(_png(30, 20)[:20])
    jpg.write_bytes(_jpeg_header(2480, 3508)[:24])
    for p in (png, jpg):
        with pytest.raises(DocumentFormatError, match=rf"{p.name}: cannot read the image size"):
            image_size(p)


def test_empty_form_is_a_page_without_words(tmp_path):
    # an empty "form" list is a valid annotation: a page with no words, no entities and no links (empty_page=keep),
    # or an error naming the file with empty_page=error
    p = tmp_path / "blank.json"
    p.write_text(json.dumps({"form": []}))
    page = read_funsd(p, size=(762, 1000))
    assert (page.words, page.entities, page.links) == ([], [], [])
    with pytest.raises(DocumentFormatError, match=r"blank\.json page 1: the page has no words"):
        read_funsd(p, size=(762, 1000), policy=LayoutPolicy(empty_page="error"))
