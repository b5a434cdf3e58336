"""PDF loader on real pages of the R manuals (Debian r-doc-pdf), plus damaged, garbage and encrypted files."""
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from domains.documents.document import DocumentFormatError, normalize_box
from support.pdf_fixtures import encrypted_pdf
from domains.documents.pdf import (INSTALL_HINT, PdfEncryptedError, PdfError, PdfReader, base_font, font_labels,
                                   image_tensor, is_bold, is_math_font, is_monospace, iter_pdf, parse_pages,
                                   read_pdf, render_page)

pytestmark = pytest.mark.debian_data("r-doc-pdf")

MANUALS = Path("/usr/share/doc/r-doc-pdf/manual")
R_INTRO = MANUALS / "R-intro.pdf"
REFMAN = MANUALS / "refman.pdf"


@pytest.fixture(scope="module")
def intro():
    # pages checked by hand: 3 (table of contents), 14 (chapter 2 opening), 29 (formula for the outer product)
    return {p.number: p for p in read_pdf(R_INTRO, pages="3,14,29")}


def test_import_zoo_does_not_import_pdf_libraries():
    code = ("import sys, zoo, domains.documents, domains.documents.document, domains.documents.pdf, "
            "domains.documents.funsd, domains.documents.data; "
            "bad = [m for m in ('pdfplumber', 'pdfminer', 'pypdfium2') if m in sys.modules]; "
            "assert not bad, bad")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                       cwd=Path(__file__).resolve().parents[2])
    assert r.returncode == 0, r.stderr[-2000:]


def test_missing_library_names_the_extra(monkeypatch, tmp_path):
    monkeypatch.setitem(sys.modules, "pdfplumber", None)  # import pdfplumber -> ImportError
    with pytest.raises(ImportError, match=r'pip install "zoo-pe\[documents\]"'):
        PdfReader(R_INTRO)
    monkeypatch.setitem(sys.modules, "pypdfium2", None)
    with pytest.raises(ImportError, match="pypdfium2"):
        render_page(R_INTRO, 1)
    assert INSTALL_HINT == 'pip install "zoo-pe[documents]"'


def test_font_classes():
    assert base_font("GSNRSV+CMTT10") == "CMTT10" and base_font("Helvetica") == "Helvetica"
    assert all(map(is_monospace, ["GSNRSV+CMTT10", "CMSLTT10", "Courier-Bold", "PEWFEW+Inconsolatazi4-Regular",
                                  "DejaVuSansMono"]))
    assert not any(map(is_monospace, ["CMR10", "NimbusRomNo9L-Regu", "CMBX12", "Helvetica"]))
    assert all(map(is_math_font, ["LMUAID+CMMI10", "CMSY7", "CMEX10", "MSBM10", "STIXMath", "Symbol"]))
    assert not any(map(is_math_font, ["CMR10", "CMTI10", "CMTT10"]))
    assert all(map(is_bold, ["CMBX12", "CMB10", "NimbusRomNo9L-Medi", "Helvetica-Bold"]))
    assert not any(map(is_bold, ["CMR10", "CMSL10", "NimbusRomNo9L-Regu"]))


def test_label_rule_on_synthetic_line():
    texts = ["Usage", "f(x)", "x", "said", "strong", "......", "Title"]
    fonts = ["Times-Bold", "CMTT10", "CMMI10", "CMR10", "CMB10", "CMMI12", "CMBX12"]
    sizes = [10, 10, 10, 10, 10, 14, 14]
    lines = [0, 1, 1, 1, 1, 2, 3]
    assert font_labels(texts, fonts, sizes, lines, body_size=10) == \
        ["heading", "code", "math", "body", "body", "body", "heading"]


def test_known_page_labels(intro):
    p14 = intro[14]
    assert p14.width == 612 and p14.height == 792 and p14.body_size == pytest.approx(10.91)
    by_text = {}
    for w in p14.words:
        by_text.setdefault(w.text, w)
    # "2.1 Vectors and assignment" is the section heading (CMBX12 14.35 pt)
    heading = [w.text for w in p14.words if w.label == "heading"]
    assert heading[:10] == ["2", "Simple", "manipulations;", "numbers", "and", "vectors", "2.1", "Vectors", "and",
                            "assignment"]
    # "> x <- c(10.4, 5.6, 3.1, 6.4, 21.7)" is set in Courier-like CMTT10: code
    for t in ["c(10.4,", "21.7)", "<-", "assign()"]:
        assert by_text[t].font == "CMTT10" and by_text[t].label == "code"
    assert by_text["operates"].label == "body" and by_text["structures"].font == "CMTI10"
    assert by_text["structures"].label == "body"  # italic emphasis is body, not math
    p29 = intro[29]
    math = [w for w in p29.words if w.label == "math"]
    assert len(math) >= 10 and all(w.font.startswith(("CMMI", "CMSY")) for w in math)
    # table of contents: leader dots in CMMI12 at 14.35 pt are body, chapter titles in CMBX12 headings
    p3 = intro[3]
    dots = [w for w in p3.words if w.text == "." and w.font == "CMMI12"]
    assert len(dots) > 20 and {w.label for w in dots} == {"body"}
    assert [w.text for w in p3.words if w.label == "heading"][:3] == ["Table", "of", "Contents"]


def test_bold_line_headings_in_refman():
    with PdfReader(REFMAN) as pdf:
        assert pdf.num_pages == 2415
        page = pdf.page(101)
    heads = [w for w in page.words if w.label == "heading"]
    assert {"Description", "Usage", "Arguments", "Details", "Examples"} <= {w.text for w in heads}
    assert all(w.font == "NimbusRomNo9L-Medi" for w in heads)
    for h in heads:  # each on a line of its own
        assert [w.text for w in page.words if w.line == h.line] == [h.text]
    assert sum(w.label == "code" and w.font.startswith("Inconsolata") for w in page.words) > 10


def test_boxes_normalised_and_ordered(intro):
    for page in intro.values():
        assert page.words
        for w in page.words:
            x0, y0, x1, y1 = w.box
            assert 0 <= x0 <= x1 <= 1000 and 0 <= y0 <= y1 <= 1000
            assert w.box == normalize_box(w.box_px, page.width, page.height)
            assert w.box[0] == int(1000 * w.box_px[0] / 612) and w.box[3] == int(1000 * w.box_px[3] / 792)


def test_reading_order_is_monotone_by_line(intro):
    for page in intro.values():
        lines = [w.line for w in page.words]
        assert lines == sorted(lines) and [w.order for w in page.words] == list(range(len(page.words)))
        centres = {}
        for w in page.words:
            centres.setdefault(w.line, []).append((w.box_px[1] + w.box_px[3]) / 2)
        means = [np.mean(centres[k]) for k in sorted(centres)]
        assert means == sorted(means)
        for a, b in zip(page.words, page.words[1:]):
            if a.line == b.line:
                assert a.box_px[0] <= b.box_px[0]
    # the running head comes first and the chapter title before the first paragraph
    t = intro[14].texts
    assert t[0] == "8" and t.index("Simple") < t.index("operates")


def test_page_ranges_and_streaming(capsys):
    assert parse_pages("1-3,7", 10) == [1, 2, 3, 7] and parse_pages("9-", 10) == [9, 10]
    assert parse_pages(range(2, 4), 10) == [2, 3] and parse_pages(None, 3) == [1, 2, 3] and parse_pages(5, 5) == [5]
    for bad, msg in [("0", "page 0 is out of range"), ("11", "page 11 is out of range"), ("5-2", "backwards"),
                     ("a-b", "cannot read page range"), (True, "not a page number")]:
        with pytest.raises(PdfError, match=msg):
            parse_pages(bad, 10, "x.pdf")
    with pytest.raises(PdfError, match=r"R-intro\.pdf: page 114 is out of range: the file has 113 page"):
        read_pdf(R_INTRO, pages=[114])
    it = iter_pdf(R_INTRO, pages="9,8", progress=True)
    first = next(it)
    assert first.number == 9 and first.source == str(R_INTRO)
    assert [p.number for p in it] == [8]  # backwards access restarts the page-tree walk
    assert "R-intro.pdf" in capsys.readouterr().err  # tqdm bar on stderr


def test_page_images_lazy_and_eager():
    doc = read_pdf(R_INTRO, pages=[1], image_resolution=36)
    page = doc[0]
    assert page.image is None and page.image_loader is not None  # lazy by default
    img = page.get_image()
    assert img.dtype == np.uint8 and img.shape == (396, 306, 3)
    assert page.get_image() is img  # cached
    assert img.min() < 100 < 250 < img.max()  # dark title text on a white page
    t = image_tensor(page)
    assert tuple(t.shape) == (3, 396, 306) and t.dtype == torch.uint8
    assert torch.equal(t.permute(1, 2, 0), torch.from_numpy(img))
    eager = read_pdf(R_INTRO, pages=[1], image_resolution=36, lazy_images=False)[0]
    assert eager.image is not None and np.array_equal(eager.image, img)
    assert image_tensor(read_pdf(R_INTRO, pages=[2])[0]) is None


def test_truncated_and_garbage_files_name_the_file(tmp_path):
    data = R_INTRO.read_bytes()
    trunc = tmp_path / "R-intro-truncated.pdf"
    trunc.write_bytes(data[: len(data) // 2])
    garbage = tmp_path / "garbage.pdf"
    garbage.write_bytes(b"this is not a PDF file\n" * 50)
    empty = tmp_path / "empty.pdf"
    empty.write_bytes(b"")
    for path in (trunc, garbage, empty):
        with pytest.raises(PdfError, match=rf"{path.name}: not a readable PDF"):
            read_pdf(path)
        with pytest.raises(PdfError, match=rf"{path.name}: not a readable PDF"):
            render_page(path, 1)
    assert isinstance(PdfError("x"), DocumentFormatError) and isinstance(PdfError("x"), ValueError)
    with pytest.raises(FileNotFoundError, match="nope.pdf"):
        PdfReader(tmp_path / "nope.pdf")


def test_encrypted_pdf(tmp_path):
    path = tmp_path / "locked.pdf"
    path.write_bytes(encrypted_pdf())
    with pytest.raises(PdfEncryptedError, match=r"locked\.pdf: the PDF is encrypted .*password"):
        read_pdf(path)
    with pytest.raises(PdfEncryptedError, match=r"locked\.pdf"):
        read_pdf(path, password="wrong")
    with pytest.raises(PdfEncryptedError, match=r"locked\.pdf: .*encrypted"):
        render_page(path, 1)
    doc = read_pdf(path, password="secret")  # decrypts: the words are there
    (w,) = doc[0].words
    assert w.text == "Hello" and w.font == "Helvetica" and w.size == pytest.approx(24)
    assert render_page(path, 1, 18, password="secret").shape == (198, 153, 3)


def test_empty_page_policy(tmp_path):
    import pypdfium2 as pdfium
    path = tmp_path / "blank.pdf"
    doc = pdfium.PdfDocument.new()
    doc.new_page(200, 100)
    doc.save(str(path))
    doc.close()
    (page,) = read_pdf(path).pages
    assert page.words == [] and (page.width, page.height) == (200, 100)
    assert read_pdf(path, policy={"empty_page": "drop"}).skipped["empty_page"] == 1
    with pytest.raises(DocumentFormatError, match=r"blank\.pdf page 1: the page has no words"):
        read_pdf(path, policy={"empty_page": "error"})


def test_directory_and_fractional_pages_are_refused(tmp_path):
    # a folder is not "a file that does not exist": the error says what the path is
    with pytest.raises(IsADirectoryError, match=rf"{tmp_path.name}: is a directory, not a PDF file"):
        PdfReader(tmp_path)
    # page numbers are whole numbers: 1.7 is not silently page 1
    for bad in ([1.7], [2.0000001], 3.5):
        with pytest.raises(PdfError, match=r"R-intro\.pdf: pages=.* is not a page number"):
            parse_pages(bad, 10, str(R_INTRO))
    assert parse_pages([1.0, 2], 10) == [1, 2]


def test_zero_page_pdf_names_the_file(tmp_path):
    path = tmp_path / "nopages.pdf"
    path.write_bytes(b"%PDF-1.4\n1 0 obj\n<< /Type /Catalog /Pages 2 0 R >>\nendobj\n"
                     b"2 0 obj\n<< /Type /Pages /Kids [] /Count 0 >>\nendobj\ntrailer\n<< /Root 1 0 R >>\n%%EOF\n")
    with pytest.raises(PdfError, match=r"nopages\.pdf: the PDF has no pages"):
        read_pdf(path)
