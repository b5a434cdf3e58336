"""Document data model: box normalisation and validation, bad input, reading order, links."""
import random
from collections import Counter

import pytest

from domains.documents.document import (DocumentFormatError, Entity, LayoutPolicy, Page, check_box, make_words,
                                        normalize_box, reading_order)
from zoo.errors import ZooError


def test_normalize_box_is_layoutlm_formula():
    # int(1000 * x / W): 123.4 / 612 * 1000 = 201.63 -> 201; 700.9 / 792 * 1000 = 884.97 -> 884
    assert normalize_box((123.4, 10.0, 611.9, 700.9), 612, 792) == (201, 12, 999, 884)
    assert normalize_box((0, 0, 612, 792), 612, 792) == (0, 0, 1000, 1000)
    for _ in range(200):
        w, h = random.uniform(10, 3000), random.uniform(10, 3000)
        x0, x1 = sorted(random.uniform(0, w) for _ in range(2))
        y0, y1 = sorted(random.uniform(0, h) for _ in range(2))
        assert normalize_box((x0, y0, x1, y1), w, h) == (int(1000 * x0 / w), int(1000 * y0 / h),
                                                         int(1000 * x1 / w), int(1000 * y1 / h))


def test_check_box_policies():
    inside = (10, 20, 30, 40)
    for policy in ("clamp", "error", "drop"):
        assert check_box(inside, 100, 100, policy=policy) == (10.0, 20.0, 30.0, 40.0)
    assert check_box((-5, 20, 130, 40), 100, 100, policy="clamp") == (0.0, 20.0, 100.0, 40.0)
    assert check_box((30, 40, 10, 20), 100, 100, policy="clamp") == (10.0, 20.0, 30.0, 40.0)  # swapped corners
    assert check_box((-5, 20, 130, 40), 100, 100, policy="drop") is None
    with pytest.raises(DocumentFormatError, match=r"form\.json page 2 word 7.*outside the 100x100 page"):
        check_box((-5, 20, 130, 40), 100, 100, policy="error", where="form.json page 2 word 7")
    with pytest.raises(DocumentFormatError, match="x0 > x1"):
        check_box((30, 40, 10, 20), 100, 100, policy="error", where="w")
    for bad in [(1, 2, 3), (1, 2, 3, float("nan")), ("a", 2, 3, 4), None]:
        with pytest.raises(DocumentFormatError, match="not 4 finite numbers"):
            check_box(bad, 100, 100)
    with pytest.raises(DocumentFormatError, match="page size must be positive"):
        check_box(inside, 0, 100)


def test_clamped_boxes_are_valid_for_any_input():
    rng = random.Random(0)
    texts = [f"w{i}" for i in range(300)]
    boxes = [[rng.uniform(-200, 900) for _ in range(4)] for _ in texts]
    words = make_words(texts, boxes, 612, 792, policy=LayoutPolicy(box="clamp"))
    assert len(words) == 300
    for w in words:
        x0, y0, x1, y1 = w.box
        assert 0 <= x0 <= x1 <= 1000 and 0 <= y0 <= y1 <= 1000
        assert w.box == normalize_box(w.box_px, 612, 792)
    skipped = Counter()
    kept = make_words(texts, boxes, 612, 792, policy=LayoutPolicy(box="drop"), skipped=skipped)
    assert len(kept) + skipped["box_out_of_range"] == 300 and 0 < len(kept) < 300
    assert [w.id for w in kept] == list(range(len(kept)))  # ids count kept words


def test_make_words_bad_input_names_file_page_and_word():
    with pytest.raises(DocumentFormatError, match=r"scan\.json page 3: 2 words but 1 boxes"):
        make_words(["a", "b"], [(0, 0, 1, 1)], 10, 10, where="scan.json page 3")
    with pytest.raises(DocumentFormatError, match=r"2 words but 3 labels"):
        make_words(["a", "b"], [(0, 0, 1, 1)] * 2, 10, 10, labels=["x"] * 3)
    with pytest.raises(DocumentFormatError, match=r"scan\.json page 3 word 1 \('total'\) has no box"):
        make_words(["a", "total"], [(0, 0, 1, 1), None], 10, 10, where="scan.json page 3")
    skipped = Counter()
    words = make_words(["a", "total", "", "  ", "c"], [(0, 0, 1, 1), None, (0, 0, 1, 1), (0, 0, 1, 1), (1, 1, 2, 2)],
                       10, 10, policy=LayoutPolicy(missing_box="drop"), skipped=skipped)
    assert [w.text for w in words] == ["a", "c"] and skipped == Counter(missing_box=1, empty_word=2)
    with pytest.raises(DocumentFormatError, match=r"word 0 \(''\): empty text"):
        make_words([""], [(0, 0, 1, 1)], 10, 10, policy=LayoutPolicy(empty_word="error"))
    err = pytest.raises(ZooError, make_words, ["a"], [(0, 0, 1, 1)], -1, 10)
    assert isinstance(err.value, ValueError)


def test_layout_policy_rejects_unknown_choices():
    with pytest.raises(ValueError, match=r"LayoutPolicy.box='skip'"):
        LayoutPolicy(box="skip")
    assert LayoutPolicy.coerce({"dangling_link": "drop"}).dangling_link == "drop"
    with pytest.raises(TypeError):
        LayoutPolicy.coerce("clamp")


def test_reading_order_lines_top_to_bottom_left_to_right():
    # line 1 at y~100 mixes a tall heading word and a small word (same centre band); line 2 at y~130
    boxes = {"second": (200, 92, 260, 108), "First": (100, 88, 180, 112), "next": (150, 122, 190, 138),
             "line": (100, 123, 140, 137), "tail": (300, 124, 330, 136)}
    names = list(boxes)
    random.Random(1).shuffle(names)
    order, lines = reading_order([boxes[n] for n in names])
    assert [names[i] for i in order] == ["First", "second", "line", "next", "tail"]
    assert lines == [0, 0, 1, 1, 1]
    assert reading_order([]) == ([], [])


def test_page_order_words_sets_line_and_order_monotone():
    rng = random.Random(2)
    texts, boxes = [], []
    for line in range(12):
        y = 50 + 20 * line + rng.uniform(-2, 2)
        for k in range(rng.randint(1, 8)):
            x = 40 + 60 * k
            texts.append(f"l{line}w{k}")
            boxes.append((x, y, x + 50, y + 11))
    perm = list(range(len(texts)))
    rng.shuffle(perm)
    page = Page(make_words([texts[i] for i in perm], [boxes[i] for i in perm], 612, 792), 612, 792)
    page.order_words()
    assert page.texts == texts
    assert [w.order for w in page.words] == list(range(len(texts)))
    lines = [w.line for w in page.words]
    assert lines == sorted(lines) and lines[-1] == 11
    for a, b in zip(page.words, page.words[1:]):
        if a.line == b.line:
            assert a.box_px[0] <= b.box_px[0]


def test_check_links_dangling_and_duplicates():
    ents = [Entity(id=i, text=str(i), box_px=(0, 0, 1, 1), box=(0, 0, 1, 1)) for i in (0, 1, 2)]
    page = Page([], 10, 10, number=4, source="f.json", entities=ents, links=[(0, 1), (0, 1), (1, 9)])
    with pytest.raises(DocumentFormatError, match=r"f\.json page 4: link \(1, 9\) names entity id 9"):
        page.check_links()
    skipped = Counter()
    page.check_links(LayoutPolicy(dangling_link="drop"), skipped)
    assert page.links == [(0, 1)] and skipped["dangling_link"] == 1
