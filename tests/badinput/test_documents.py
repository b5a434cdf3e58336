"""Bad input for the documents domain: every registered document model's forward and every document loader (FUNSD,
XFUND, FUNSD folders and the entity-linking task's reader, the PDF reader and its streaming / rendering entry points,
the R-manual page and dataset loaders, the link extractor, the word vocabulary) fed wrong types, out-of-range values,
empty, truncated and corrupt files, paths that are folders, missing or climb out of their folder, and caches whose
writing was interrupted.

Model cases are generated from ``zoo.list_models(domain="documents")`` and loader cases from the ``FORM_LOADERS`` /
``JSON_LOADERS`` / ``PDF_LOADERS`` tables; ``test_every_loader_is_in_the_matrix`` fails when a module of the domain
gains a public loader that is not in a table. PDFs are 1-2 page slices of the R manuals (Debian r-doc-pdf) or files
written here; FUNSD / XFUND JSON is written here (no copy of either is installable).
"""
from __future__ import annotations

import functools
import json
import struct
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import torch

import zoo
from domains.documents import data as D
from domains.documents import funsd as F
from domains.documents import pdf as P
from domains.documents import pdf_links as L
from domains.documents.document import DocumentFormatError
from domains.documents.task import read_funsd_pages
from zoo.errors import ConfigError, DatasetNotFoundError
from support.pdf_fixtures import encrypted_pdf
from zoo.positions import Positions

from .matrix import Case, check_case, params

pytestmark = pytest.mark.debian_data("r-doc-pdf")

MANUALS = Path("/usr/share/doc/r-doc-pdf/manual")
R_FAQ = MANUALS / "R-FAQ.pdf"
V, N = 60, 6                                                       # vocabulary and words of the model inputs

# ---- files ------------------------------------------------------------------------------------------------------

FORM = [{"id": 0, "text": "DATE:", "box": [84, 109, 136, 119], "label": "question",
         "words": [{"text": "DATE:", "box": [84, 109, 136, 119]}], "linking": [[0, 1]]},
        {"id": 1, "text": "12/10/98", "box": [141, 110, 207, 119], "label": "answer",
         "words": [{"text": "12/10/98", "box": [141, 110, 207, 119]}], "linking": [[0, 1]]}]
W, H = 762, 1000                                                   # the form's image size


def _png(width: int, height: int) -> bytes:
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + struct.pack(">I", 13) + b"IHDR" + ihdr + b"\x00" * 4


@functools.lru_cache(maxsize=None)
def _faq_slice() -> bytes:
    """Pages 1-2 of R-FAQ.pdf (the title page and the table of contents, with its link annotations)."""
    import pypdfium2 as pdfium
    import tempfile
    src, out = pdfium.PdfDocument(str(R_FAQ)), pdfium.PdfDocument.new()
    out.import_pages(src, [0, 1])
    with tempfile.TemporaryDirectory() as d:
        out.save(str(Path(d) / "s.pdf"))
        out.close()
        src.close()
        return (Path(d) / "s.pdf").read_bytes()


NO_PAGES = (b"%PDF-1.4\n1 0 obj\n<< /Type /Catalog /Pages 2 0 R >>\nendobj\n"
            b"2 0 obj\n<< /Type /Pages /Kids [] /Count 0 >>\nendobj\ntrailer\n<< /Root 1 0 R >>\n%%EOF\n")

# ---- loader tables: each entry writes ``raw`` where the loader reads and calls it -------------------------------


def _funsd_file(tmp: Path, raw: bytes):
    (tmp / "form.json").write_bytes(raw)
    return F.read_funsd(tmp / "form.json", size=(W, H))


def _funsd_layout(tmp: Path, raw: bytes) -> Path:
    (tmp / "annotations").mkdir(exist_ok=True)
    (tmp / "images").mkdir(exist_ok=True)
    (tmp / "annotations" / "form.json").write_bytes(raw)
    (tmp / "images" / "form.png").write_bytes(_png(W, H))
    return tmp


def _xfund_file(tmp: Path, raw: bytes):
    (tmp / "de.val.json").write_bytes(raw)
    return F.read_xfund(tmp / "de.val.json")


def _xfund(ents) -> dict:
    return {"lang": "de", "version": "0.1", "split": "val",
            "documents": [{"id": "de_val_0", "img": {"fname": "de_val_0.jpg", "width": W, "height": H},
                           "document": ents}]}


def _first_page(result):
    """The one page a form loader returned (a Page, a list of pages, or the task's {split: [pages]})."""
    if isinstance(result, dict):
        result = [p for ps in result.values() for p in ps]
    if isinstance(result, list):
        assert len(result) == 1, result
        result = result[0]
    return result


# name -> (write raw JSON and load it, wrap a FUNSD entity list into the loader's JSON)
FORM_LOADERS = {
    "read_funsd": (_funsd_file, lambda ents: {"form": ents}),
    "read_funsd_dir": (lambda tmp, raw: F.read_funsd_dir(_funsd_layout(tmp, raw)), lambda ents: {"form": ents}),
    "read_funsd_pages": (lambda tmp, raw: read_funsd_pages(_funsd_layout(tmp, raw)), lambda ents: {"form": ents}),
    "read_xfund": (_xfund_file, _xfund),
}


def _vocab_file(tmp: Path, raw: bytes):
    (tmp / "word_vocab.json").write_bytes(raw)
    return D.WordVocab.load(tmp / "word_vocab.json")


# JSON loaders: name -> (write raw and load, the path it reads inside tmp, a valid document)
JSON_LOADERS = {
    **{name: (fn, "form.json" if name == "read_funsd" else "de.val.json" if name == "read_xfund"
              else "annotations/form.json", wrap(FORM)) for name, (fn, wrap) in FORM_LOADERS.items()},
    "WordVocab.load": (_vocab_file, "word_vocab.json", {"format": D.WordVocab.FORMAT, "lowercase": False,
                                                        "itos": ["<pad>", "<unk>", "DATE:"]}),
}


def _path_loader(name: str):
    """The loader ``name`` called on a path (for missing files and folders)."""
    return {"read_funsd": lambda p: F.read_funsd(p, size=(W, H)), "read_xfund": F.read_xfund,
            "WordVocab.load": D.WordVocab.load}[name]


# PDF loaders: name -> call on a PDF path. The R-manual loaders take a folder and manual names.
PDF_LOADERS = {
    "read_pdf": lambda p: P.read_pdf(p),
    "iter_pdf": lambda p: list(P.iter_pdf(p)),
    "PdfReader": lambda p: P.PdfReader(p).close(),
    "render_page": lambda p: P.render_page(p, 1, 18),
    "manual_pages": lambda p: D.manual_pages(p, cache_dir=False),
    "extract_links": lambda p: L.extract_links(p, cache_dir=False),
    "r_manual_pages": lambda p: D.r_manual_pages(p.parent, [p.stem], cache_dir=False),
    "r_manual_datasets": lambda p: D.r_manual_datasets(p.parent, [p.stem], cache_dir=False, min_freq=1),
    "r_manual_link_pages": lambda p: L.r_manual_link_pages(p.parent, [p.stem], cache_dir=False),
}
_BY_ROOT = ("r_manual_pages", "r_manual_datasets", "r_manual_link_pages")   # find the file in a folder by name


_NOT_FOUND = r"R manual\(s\) \['R-doc'\] not found; available: \['other'\]"


def _other(tmp: Path) -> None:
    """Another manual in the folder, so that a missing one is named among those present."""
    _write(tmp, _faq_slice(), "other.pdf")


def _write(tmp: Path, raw: bytes, name: str = "R-doc.pdf") -> Path:
    p = tmp / name
    p.write_bytes(raw)
    return p


# ---- loader cases -----------------------------------------------------------------------------------------------

def _json_cases():
    out = []
    for name, (load, rel, valid) in JSON_LOADERS.items():
        text = json.dumps(valid).encode()
        fname = Path(rel).name.replace(".", r"\.")
        out += [
            Case(f"{name}-truncated-json", "truncated", "JSON cut half-way: DocumentFormatError/ValueError naming the "
                 "file ('not valid JSON')", lambda t, load=load, text=text: load(t, text[:len(text) // 2]),
                 ValueError, rf"{fname}: not (valid JSON|a WordVocab file)"),
            Case(f"{name}-invalid-utf8", "corrupt", "bytes that are not UTF-8: an error naming the file",
                 lambda t, load=load, text=text: load(t, text[:12] + b"\xff\xfe\xfa" + text[12:]),
                 ValueError, rf"{fname}: not (valid JSON|a WordVocab file).*utf-8"),
            Case(f"{name}-empty-file", "empty", "a 0-byte file: an error naming the file",
                 lambda t, load=load: load(t, b""), ValueError, rf"{fname}: not (valid JSON|a WordVocab file)"),
        ]
        if name in ("read_funsd", "read_xfund", "WordVocab.load"):
            fn = _path_loader(name)
            out += [
                Case(f"{name}-directory", "adversarial path", "a folder where a file is expected: IsADirectoryError "
                     "naming it", lambda t, fn=fn: fn(t), IsADirectoryError, "[Ii]s a directory"),
                Case(f"{name}-missing-file", "adversarial path", "a missing file: FileNotFoundError naming it",
                     lambda t, fn=fn: fn(t / "nope.json"), FileNotFoundError, r"nope\.json"),
            ]
    out += [
        Case("WordVocab.load-wrong-type-itos", "wrong type", "'itos' holding a number and a list: ValueError naming "
             "the file and the entry", lambda t: _vocab_file(t, json.dumps(
                 {"format": D.WordVocab.FORMAT, "itos": ["<pad>", "<unk>", 5, ["x"]]}).encode()),
             ValueError, r"word_vocab\.json: not a WordVocab file \(entry 5 is not a string\)"),
        Case("read_funsd_dir-missing-folder", "adversarial path", "a root without annotations/: FileNotFoundError "
             "naming the root and the layout", lambda t: F.read_funsd_dir(t / "nope"), FileNotFoundError,
             r"nope: no annotations/ folder"),
        Case("read_funsd_dir-json-named-folder", "adversarial path", "a folder named *.json among the annotations: "
             "IsADirectoryError naming it", lambda t: (t / "annotations" / "x.json").mkdir(parents=True)
             or F.read_funsd_dir(t), IsADirectoryError, r"x\.json"),
        Case("read_funsd_pages-root-is-a-file", "adversarial path", "data.root pointing at a file: ConfigError "
             "naming data.root", lambda t: read_funsd_pages(_write(t, b"x", "f")), ConfigError,
             r"data\.root=.*f': no such folder"),
    ]
    return out


def _form_cases():
    out = []
    ent = FORM[0]
    for name, (load, wrap) in FORM_LOADERS.items():
        def run(ents, load=load, wrap=wrap):
            return lambda t: load(t, json.dumps(wrap(ents)).encode())
        out += [
            Case(f"{name}-missing-key", "corrupt", "an entity without 'words': DocumentFormatError naming the file "
                 "and the entity", run([{k: v for k, v in ent.items() if k != "words"}]), DocumentFormatError,
                 r"\.json.* entity #0: missing key\(s\) \['words'\]"),
            Case(f"{name}-link-to-unknown-id", "corrupt", "a link to an entity id not in the file: "
                 "DocumentFormatError naming the entity and the id", run([dict(ent, linking=[[0, 42]])]),
                 DocumentFormatError, r"\.json.* entity 0: link \[0, 42\] points to entity id 42"),
            Case(f"{name}-non-numeric-box", "wrong type", "a box of strings: DocumentFormatError naming the entity "
                 "and the box", run([dict(ent, box=["a", "b", "c", "d"])]), DocumentFormatError,
                 r"\.json.* entity 0 has a malformed box \['a', 'b', 'c', 'd'\]"),
            Case(f"{name}-entities-not-a-list", "wrong type", "an object where the entity list belongs: "
                 "DocumentFormatError naming the file", run({"0": ent}), DocumentFormatError,
                 r"\.json.*expected a list of entities, got dict"),
            Case(f"{name}-swapped-corners", "out of range", "a word box with x1 < x0: the corners are sorted "
                 "(documented clamp policy)", run([dict(ent, linking=[], words=[{"text": "x", "box": [136, 119, 84,
                                                                                                      109]}])]),
                 check=lambda r, t: _check_box(r, (84.0, 109.0, 136.0, 119.0))),
            Case(f"{name}-box-outside-the-page", "out of range", "a box past the page edge and negative: clamped to "
                 "the page (documented clamp policy), boxes stay in 0..1000",
                 run([dict(ent, linking=[], box=[-5, 109, 900, 1200], words=[{"text": "x", "box": [-5, 109, 900,
                                                                                                    1200]}])]),
                 check=lambda r, t: _check_box(r, (0.0, 109.0, float(W), float(H)), (0, 109, 1000, 1000))),
            Case(f"{name}-empty-form", "empty", "an empty entity list: a page with no words, entities or links "
                 "(documented empty_page=keep)", run([]), check=lambda r, t: _check_empty(r)),
        ]
    return out


def _check_box(result, box_px, box=None):
    (w,) = _first_page(result).words
    assert w.box_px == box_px
    if box is not None:
        assert w.box == box


def _check_empty(result):
    p = _first_page(result)
    assert (p.words, p.entities, p.links) == ([], [], [])


def _pdf_cases():
    out = []
    enc = encrypted_pdf()
    for name, load in PDF_LOADERS.items():
        by_root = name in _BY_ROOT
        out += [
            Case(f"{name}-truncated-pdf", "truncated", "a PDF cut half-way: PdfError naming the file",
                 lambda t, load=load: load(_write(t, R_FAQ.read_bytes()[:R_FAQ.stat().st_size // 2])), P.PdfError,
                 r"R-doc\.pdf.*not a readable PDF"),
            Case(f"{name}-not-a-pdf", "corrupt", "text bytes named .pdf: PdfError naming the file",
                 lambda t, load=load: load(_write(t, b"this is not a PDF file\n" * 40)), P.PdfError,
                 r"R-doc\.pdf.*not a readable PDF"),
            Case(f"{name}-encrypted", "corrupt", "an encrypted PDF without its password: PdfEncryptedError naming "
                 "the file", lambda t, load=load: load(_write(t, enc)), P.PdfEncryptedError,
                 r"R-doc\.pdf.*encrypted"),
            Case(f"{name}-empty-file", "empty", "a 0-byte .pdf: PdfError naming the file",
                 lambda t, load=load: load(_write(t, b"")), P.PdfError, r"R-doc\.pdf.*not a readable PDF"),
            Case(f"{name}-missing-file", "adversarial path", "a missing PDF: FileNotFoundError naming it"
                 + (" (DatasetNotFoundError naming the manual and the ones there)" if by_root else ""),
                 lambda t, load=load: _other(t) or load(t / "R-doc.pdf"), FileNotFoundError,
                 _NOT_FOUND if by_root else r"R-doc\.pdf does not exist"),
            Case(f"{name}-directory", "adversarial path", "a folder named like the PDF: "
                 + ("the manual is not found (DatasetNotFoundError naming it)" if by_root else
                    "IsADirectoryError naming it"),
                 lambda t, load=load: _other(t) or (t / "R-doc.pdf").mkdir() or load(t / "R-doc.pdf"),
                 DatasetNotFoundError if by_root else IsADirectoryError,
                 _NOT_FOUND if by_root else r"R-doc\.pdf: is a directory"),
        ]
        if name != "render_page":        # PDFium renders a page tree it can walk; pdfminer's count is the one used
            out.append(Case(f"{name}-no-pages", "empty", "a PDF with an empty page tree: PdfError naming the file",
                            lambda t, load=load: load(_write(t, NO_PAGES)), P.PdfError,
                            r"R-doc\.pdf: the PDF has no pages"))
    out += [
        Case("read_pdf-page-beyond-the-end", "out of range", "page 3 of a 2-page PDF: PdfError naming the file and "
             "the page", lambda t: P.read_pdf(_write(t, _faq_slice()), pages=3), P.PdfError,
             r"R-doc\.pdf: page 3 is out of range: the file has 2 page"),
        Case("read_pdf-page-zero", "out of range", "page 0 (pages are 1-based): PdfError naming the page",
             lambda t: P.read_pdf(_write(t, _faq_slice()), pages="0-1"), P.PdfError, r"page 0 is out of range"),
        Case("extract_links-page-beyond-the-end", "out of range", "a page range past the end: PdfError naming the "
             "file and the page", lambda t: L.extract_links(_write(t, _faq_slice()), pages="2-9", cache_dir=False),
             P.PdfError, r"R-doc\.pdf: page 3 is out of range"),
        Case("render_page-page-beyond-the-end", "out of range", "rendering page 5 of 2: PdfError naming the page",
             lambda t: P.render_page(_write(t, _faq_slice()), 5), P.PdfError, r"R-doc\.pdf: page 5 is out of range"),
        Case("read_pdf-fractional-pages", "wrong type", "pages=[1.5]: PdfError, never silently page 1",
             lambda t: P.read_pdf(_write(t, _faq_slice()), pages=[1.5]), P.PdfError,
             r"R-doc\.pdf: pages=\[1\.5\] is not a page number"),
        Case("read_pdf-policy-wrong-type", "wrong type", "policy='strict': TypeError naming policy",
             lambda t: P.read_pdf(_write(t, _faq_slice()), policy="strict"), TypeError, r"policy must be"),
        Case("r_manual_pages-dotdot-manual", "adversarial path", "a manual name climbing out of the folder "
             "('../R-FAQ' beside it): not found, nothing outside the folder is read", _dotdot,
             DatasetNotFoundError, r"\['\.\./R-FAQ'\] not found; available: \['x'\]"),
        Case("r_manual_link_pages-absolute-manual", "adversarial path", "an absolute path as a manual name: not "
             "found in the folder", lambda t: L.r_manual_link_pages(MANUALS, [str(R_FAQ.with_suffix(""))],
                                                                   cache_dir=False),
             DatasetNotFoundError, r"R-FAQ'\] not found"),
        Case("manual_pages-interrupted-cache", "interrupted", "a page cache cut short (an interrupted copy): rebuilt "
             "from the PDF, the same pages, the cache rewritten whole", lambda t: _interrupted_cache(t, "pages"),
             check=lambda r, t: _check_rebuilt(r)),
        Case("extract_links-interrupted-cache", "interrupted", "a link cache cut short: rebuilt, the same links, "
             "the cache rewritten whole", lambda t: _interrupted_cache(t, "links"),
             check=lambda r, t: _check_rebuilt(r)),
        Case("manual_pages-interrupted-write", "interrupted", "an interruption while the cache is written: no "
             "cache file and no temporary left, the next call builds it", lambda t: _interrupted_write(t),
             check=lambda r, t: _check_interrupted_write(r)),
    ]
    return out


def _dotdot(t: Path):
    _write(t, _faq_slice(), "R-FAQ.pdf")
    (t / "sub").mkdir()
    _write(t / "sub", _faq_slice(), "x.pdf")
    return D.r_manual_pages(t / "sub", ["../R-FAQ"], cache_dir=False)


def _interrupted_cache(t: Path, kind: str):
    pdf, cache = _write(t, _faq_slice()), t / "cache"
    load = (lambda: D.manual_pages(pdf, cache_dir=cache)) if kind == "pages" else \
        (lambda: L.extract_links(pdf, cache_dir=cache))
    first = load()
    (f,) = cache.iterdir()
    whole = f.read_bytes()
    f.write_bytes(whole[:len(whole) // 2])
    again = load()
    return first, again, whole, f.read_bytes()


def _check_rebuilt(r):
    first, again, whole, now = r
    if isinstance(first, list):
        assert [p.texts for p in again] == [p.texts for p in first] and len(first) == 2
    else:
        assert [p.links for p in again.pages] == [p.links for p in first.pages] and first.pages
    assert now == whole


def _interrupted_write(t: Path):
    pdf, cache = _write(t, _faq_slice()), t / "cache"
    orig = np.savez

    def savez(f, **arrays):                      # half the arrays written, then the process is interrupted
        f.write(b"PK\x03\x04partial")
        raise KeyboardInterrupt

    np.savez = savez
    try:
        D.manual_pages(pdf, cache_dir=cache)
    except KeyboardInterrupt:
        pass
    finally:
        np.savez = orig
    left = sorted(p.name for p in cache.iterdir()) if cache.exists() else []
    return left, D.manual_pages(pdf, cache_dir=cache), sorted(p.name for p in cache.iterdir())


def _check_interrupted_write(r):
    left, pages, after = r
    assert left == [] and len(pages) == 2 and len(after) == 1 and after[0].endswith(".npz")


# ---- model cases ------------------------------------------------------------------------------------------------

@functools.lru_cache(maxsize=None)
def _model(name: str):
    return zoo.create(name, vocab_size=V, depth=1).eval()


def _inputs(n: int = N, b: int = 2):
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(2, V, (b, n), generator=g)
    xy = torch.randint(0, 900, (b, n, 2), generator=g)
    return ids, torch.cat([xy, xy + torch.randint(1, 100, (b, n, 2), generator=g)], -1)


def _fwd(name: str, ids, boxes, **kw):
    with torch.no_grad():
        return _model(name)(ids, boxes, **kw)


def _model_cases():
    out = []
    ids, boxes = _inputs()
    for name in zoo.list_models(domain="documents"):
        def case(tag, category, does, ids_, boxes_, match, raises=ValueError, name=name, **kw):
            out.append(Case(f"{name}-{tag}", category, does, lambda t: _fwd(name, ids_, boxes_, **kw), raises, match))
        wrong, wide = ids.clone(), boxes.clone()
        wrong[1, 2] = V
        wide[0, 1, 2] = 1001
        case("ids-list", "wrong type", "input_ids as a Python list: ValueError naming input_ids", ids.tolist(), boxes,
             r"input_ids must be an int \[b, n\] tensor, got list")
        case("ids-float", "wrong type", "float input_ids: ValueError naming input_ids", ids.float(), boxes,
             r"input_ids must be an int \[b, n\] tensor")
        case("boxes-list", "wrong type", "boxes as a Python list: ValueError naming boxes", ids, boxes.tolist(),
             r"boxes must be a Tensor")
        case("id-beyond-vocab", "out of range", "a token id = vocab_size: ValueError naming the id and vocab_size",
             wrong, boxes, rf"input_ids holds token id {V}, .*vocab_size={V}")
        case("negative-id", "out of range", "a token id -1: ValueError naming the id and vocab_size",
             torch.where(torch.arange(N) == 0, -1, ids), boxes, r"input_ids holds token id -1\b.*vocab_size")
        case("boxes-0..1", "out of range", "boxes normalised to 0..1 (HF BROS's convention): refused, naming the "
             "0..1000 convention, never rounded to 0/1", ids, boxes.float() / 1000, r"boxes .*0\.\.1\b.*0\.\.1000")
        case("boxes-above-1000", "out of range", "a coordinate of 1001: ValueError naming 0..1000", ids, wide,
             r"boxes .*0\.\.1000")
        case("negative-boxes", "out of range", "a negative coordinate: ValueError naming 0..1000", ids, boxes - 950,
             r"boxes .*0\.\.1000")
        case("length-0", "empty", "a length-0 sequence: ValueError 'input_ids has no tokens'", ids[:, :0],
             boxes[:, :0], r"input_ids has no tokens")
        case("batch-0", "empty", "an empty batch: ValueError 'input_ids has no tokens'", ids[:0], boxes[:0],
             r"input_ids has no tokens")
        case("boxes-ids-shape-mismatch", "corrupt", "boxes for one word fewer than input_ids: ValueError naming both "
             "shapes", ids, boxes[:, :-1], rf"boxes must be \[b, n, 4\] = \[2, {N}, 4\], got \(2, {N - 1}, 4\)")
        case("boxes-nan", "corrupt", "a NaN coordinate: ValueError naming boxes", ids,
             torch.where(torch.arange(4) == 1, float("nan"), boxes.float()), r"boxes holds NaN")
        case("mask-shape", "corrupt", "a mask of the wrong shape: ValueError naming mask", ids, boxes,
             r"mask must be \[b, n\]", mask=torch.ones(2, N + 1, dtype=torch.bool))
    return out


CASES = _json_cases() + _form_cases() + _pdf_cases() + _model_cases()


@pytest.mark.parametrize("case", params(CASES))
def test_case(case, tmp_path):
    check_case(case, tmp_path)


def test_every_loader_is_in_the_matrix():
    """Each public reader of the domain's modules (read_*, iter_*, extract_*, *_pages, *_datasets, PdfReader,
    WordVocab.load) has cases in a loader table, so a new loader cannot go unchecked."""
    tables = set(FORM_LOADERS) | set(JSON_LOADERS) | set(PDF_LOADERS)
    found = set()
    for mod in (F, P, D, L):
        for name in mod.__all__:
            if name == "parse_pages":            # parses a page-range argument; its cases run through read_pdf
                continue
            if name.startswith(("read_", "iter_", "extract_", "render_")) or name.endswith(("_pages", "_datasets")) \
                    or name == "PdfReader":
                found.add(name)
    found.add("WordVocab.load")
    found.add("read_funsd_pages")
    assert found <= tables, f"loaders without bad-input cases: {sorted(found - tables)}"


def test_every_registered_model_is_in_the_matrix():
    names = {c.id.split("-")[0] for c in CASES if c.id.startswith("doc_")}
    assert names == set(zoo.list_models(domain="documents"))
