"""Born-digital PDFs -> ``Document``: words, boxes, fonts, reading order, font-derived labels, page images.

Text comes from pdfplumber (pdfminer.six), images from pypdfium2; both are imported on first use, so ``import zoo``
and ``import domains.documents.pdf`` work without them (a missing one raises ImportError naming
``pip install "zoo-pe[documents]"``)::

    with PdfReader("R-intro.pdf") as pdf:                 # opens once, streams page by page
        for page in pdf.pages("8-12", progress=True):      # 1-based page range: "3", "1-5,9", range, [1, 4]
            page.words[0].text, .box_px, .box, .font, .size, .label, .line
    doc = read_pdf("R-intro.pdf", pages=range(1, 11), image_resolution=72)   # lazy images: page.get_image()

Words: ``extract_words(x_tolerance_ratio=0.15, extra_attrs=["fontname", "size"])`` -- the gap that splits words is
15 % of the font size rather than pdfplumber's fixed 3 pt, which glues TeX's bold words together ("Avectorof...");
a change of font or size also ends a word, so every word has one font and one size. Words are then put in the
"lines-ltr" reading order of ``domains.documents.document``.

Label rule (``font_labels``; fonts named without the subset prefix ``ABCDEF+``), first match wins::

    body     a word made only of leader dots / bullets (". . ." in table-of-contents lines, list bullets "•"),
             in a non-monospace font -- TeX sets these in math fonts (CMMI, CMSY), they are not math
    heading  size >= 1.1 x the page's body size (the most common size, by characters, among regular text fonts)
    code     a monospace font: "Courier", "Mono", "Inconsolata", "Consol", "Menlo", "Monaco", "Typewriter", or a
             TeX typewriter font (name containing "TT": CMTT, CMSLTT, CMITT, LMMono...)
    math     a math font: TeX's CMMI/CMSY/CMEX/CMBSY/MSAM/MSBM/EU*/rsfs/wasy/stmary families, or a name containing
             "Math" or "Symbol"
    heading  a bold font (Bold, Black, Heavy, Demi, -Medi, CMBX, CMB) on a line whose words are all bold or
             punctuation: refman's "Description"/"Usage" (NimbusRomNo9L-Medi at body size); bold words inside a
             regular line (texinfo @strong, CMB10) stay body
    body     everything else (roman, italic CMTI, slanted CMSL, small caps CMCSC)

Errors (``PdfError``, a ``DocumentFormatError``) name the file: not a PDF / truncated / damaged
(``PdfError``), encrypted without the right password (``PdfEncryptedError``), page numbers out of range.
"""
from __future__ import annotations

import os
import re
import sys
from collections import Counter
from pathlib import Path
from typing import Iterator, List, Optional, Sequence, Union

import numpy as np

from domains.documents.document import DocumentFormatError, Document, LayoutPolicy, Page, make_words

__all__ = [
    "INSTALL_HINT", "LABELS", "PdfError", "PdfEncryptedError", "PdfReader", "read_pdf", "iter_pdf",
    "render_page", "image_tensor", "parse_pages", "base_font", "is_monospace", "is_math_font", "is_bold",
    "font_labels", "body_size_of",
]

PathLike = Union[str, os.PathLike]
INSTALL_HINT = 'pip install "zoo-pe[documents]"'
LABELS = ("body", "heading", "code", "math")
HEADING_RATIO = 1.1

_MONO = re.compile(r"courier|mono|inconsolata|consol|menlo|monaco|typewriter", re.I)
_MATH = re.compile(r"^(cmmi|cmsy|cmex|cmbsy|cmmib|msam|msbm|eufm|eufb|eurm|eurb|eusm|eusb|euex|rsfs|wasy|stmary)"
                   r"|math|symbol", re.I)
_BOLD = re.compile(r"bold|black|heavy|demi|-medi|^cmbx|^cmb\d", re.I)
_LEADER = frozenset(".•·∙‧…")
_EXTRACT = dict(x_tolerance_ratio=0.15, y_tolerance=3, keep_blank_chars=False, use_text_flow=False,
                extra_attrs=["fontname", "size"])


class PdfError(DocumentFormatError):
    """A PDF that cannot be read: not a PDF, truncated, damaged, or a page that fails to parse."""


class PdfEncryptedError(PdfError):
    """An encrypted PDF opened without (the right) password."""


def _pdfplumber():
    try:
        import pdfplumber
    except ImportError as e:
        raise ImportError(f"reading PDFs needs pdfplumber ({e}); install it with: {INSTALL_HINT}") from e
    return pdfplumber


def _pdfium():
    try:
        import pypdfium2
    except ImportError as e:
        raise ImportError(f"rendering PDF pages needs pypdfium2 ({e}); install it with: {INSTALL_HINT}") from e
    return pypdfium2


# ---------------------------------------------------------------------------------------------------------------
# Fonts -> labels
# ---------------------------------------------------------------------------------------------------------------

def base_font(fontname: Optional[str]) -> str:
    """The font name without the 6-letter subset prefix: ``"GSNRSV+CMTT10"`` -> ``"CMTT10"``."""
    name = fontname or ""
    return name.split("+", 1)[1] if re.match(r"^[A-Z]{6}\+", name) else name


def is_monospace(fontname: Optional[str]) -> bool:
    name = base_font(fontname)
    return bool(_MONO.search(name)) or "TT" in name


def is_math_font(fontname: Optional[str]) -> bool:
    return bool(_MATH.search(base_font(fontname)))


def is_bold(fontname: Optional[str]) -> bool:
    return bool(_BOLD.search(base_font(fontname)))


def _is_leader(text: str) -> bool:
    t = text.replace(" ", "")
    return bool(t) and all(c in _LEADER for c in t)


def _is_punct(text: str) -> bool:
    return not any(c.isalnum() for c in text)


def body_size_of(texts: Sequence[str], fonts: Sequence[Optional[str]], sizes: Sequence[float]) -> Optional[float]:
    """The most common size, weighted by characters, among words in regular fonts (not monospace, math or bold);
    among all words when there are none; None for an empty page. Sizes are rounded to 0.01 pt."""
    for regular_only in (True, False):
        c: Counter = Counter()
        for t, f, s in zip(texts, fonts, sizes):
            if s is None or (regular_only and (is_monospace(f) or is_math_font(f) or is_bold(f))):
                continue
            c[round(float(s), 2)] += len(t)
        if c:
            return max(c.items(), key=lambda kv: (kv[1], -kv[0]))[0]
    return None


def font_labels(texts: Sequence[str], fonts: Sequence[Optional[str]], sizes: Sequence[float],
                lines: Sequence[int], body_size: Optional[float] = None,
                heading_ratio: float = HEADING_RATIO) -> List[str]:
    """Labels (``LABELS``) of the words of one page by the rule in the module docstring; ``lines`` are the words'
    line indices (same order as ``texts``); ``body_size`` defaults to ``body_size_of`` the page."""
    if body_size is None:
        body_size = body_size_of(texts, fonts, sizes)
    bold_line: dict = {}
    for t, f, ln in zip(texts, fonts, lines):
        ok = is_bold(f) and not is_monospace(f) and not is_math_font(f)
        if not ok and not _is_punct(t):
            bold_line[ln] = False
        elif ok:
            bold_line.setdefault(ln, True)
    out = []
    for t, f, s, ln in zip(texts, fonts, sizes, lines):
        mono = is_monospace(f)
        if not mono and _is_leader(t):
            out.append("body")
        elif body_size and s is not None and s >= heading_ratio * body_size:
            out.append("heading")
        elif mono:
            out.append("code")
        elif is_math_font(f):
            out.append("math")
        elif is_bold(f) and bold_line.get(ln, False):
            out.append("heading")
        else:
            out.append("body")
    return out


# ---------------------------------------------------------------------------------------------------------------
# Page ranges, errors
# ---------------------------------------------------------------------------------------------------------------

def parse_pages(pages, num_pages: int, source: str = "<pdf>") -> List[int]:
    """1-based page numbers from None (all), an int, a string ``"1-5,9"`` (``"7-"`` = 7 to the end), a ``range``
    or an iterable of ints. Out-of-range or malformed numbers raise ``PdfError`` naming ``source``."""
    if pages is None:
        return list(range(1, num_pages + 1))
    if isinstance(pages, bool):
        raise PdfError(f"{source}: pages={pages!r} is not a page number, range or list")
    if isinstance(pages, int):
        nums = [pages]
    elif isinstance(pages, str):
        nums = []
        for part in pages.replace(" ", "").split(","):
            m = re.fullmatch(r"(\d+)(?:-(\d*))?", part)
            if not m:
                raise PdfError(f"{source}: cannot read page range {pages!r} (use e.g. '3', '1-5,9', '7-')")
            lo = int(m.group(1))
            hi = lo if m.group(2) is None else (int(m.group(2)) if m.group(2) else num_pages)
            if hi < lo:
                raise PdfError(f"{source}: page range {part!r} runs backwards")
            nums.extend(range(lo, hi + 1))
    else:
        try:
            items = list(pages)
            nums = [int(p) for p in items]
            whole = all(not isinstance(p, bool) and p == n for p, n in zip(items, nums))
        except (TypeError, ValueError, OverflowError):
            whole = False
        if not whole:
            raise PdfError(f"{source}: pages={pages!r} is not a page number, range or list of whole numbers") \
                from None
    bad = [p for p in nums if not 1 <= p <= num_pages]
    if bad:
        raise PdfError(f"{source}: page {bad[0]} is out of range: the file has {num_pages} page(s) (1-based)")
    return nums


def check_pdf_path(path: Path) -> None:
    """A missing path is a FileNotFoundError, a folder an IsADirectoryError, both naming the path."""
    if path.is_dir():
        raise IsADirectoryError(f"{path}: is a directory, not a PDF file")
    if not path.is_file():
        raise FileNotFoundError(f"PDF file {path} does not exist")


def _encryption_cause(exc: BaseException) -> Optional[BaseException]:
    """The pdfminer encryption exception inside ``exc`` (pdfplumber wraps it in PdfminerException), if any."""
    seen, todo = set(), [exc]
    while todo:
        e = todo.pop()
        if e is None or id(e) in seen:
            continue
        seen.add(id(e))
        if type(e).__name__ in ("PDFPasswordIncorrect", "PDFEncryptionError", "PDFEncryptionWarning"):
            return e
        todo.extend(a for a in getattr(e, "args", ()) if isinstance(a, BaseException))
        todo.extend([e.__cause__, e.__context__])
    return None


def _wrap_error(exc: BaseException, source: str, what: str) -> PdfError:
    enc = _encryption_cause(exc)
    if enc is not None:
        return PdfEncryptedError(f"{source}: the PDF is encrypted and cannot be {what} without the right password "
                                 f"(pass password=...): {type(enc).__name__}: {enc}")
    detail = f"{type(exc).__name__}: {exc}".strip()
    return PdfError(f"{source}: not a readable PDF -- corrupt, truncated or not a PDF at all ({what} failed: "
                    f"{detail})")


# ---------------------------------------------------------------------------------------------------------------
# Images
# ---------------------------------------------------------------------------------------------------------------

def render_page(path: PathLike, number: int, resolution: float = 72, password: Optional[str] = None) -> np.ndarray:
    """Render page ``number`` (1-based) with pypdfium2 at ``resolution`` dpi: RGB uint8 ``[H, W, 3]`` with
    ``H = round(height_pt * resolution / 72)``."""
    pdfium = _pdfium()
    source = str(path)
    if not resolution > 0:
        raise ValueError(f"resolution must be positive dpi, got {resolution}")
    check_pdf_path(Path(path))
    try:
        doc = pdfium.PdfDocument(source, password=password)
    except Exception as e:  # pypdfium2 raises PdfiumError (a RuntimeError) with the PDFium reason
        msg = str(e)
        if "password" in msg.lower():
            raise PdfEncryptedError(f"{source}: the PDF is encrypted and cannot be rendered without the right "
                                    f"password: {msg}") from e
        raise PdfError(f"{source}: not a readable PDF -- corrupt, truncated or not a PDF at all (render: {msg})") from e
    try:
        if not 1 <= number <= len(doc):
            raise PdfError(f"{source}: page {number} is out of range: the file has {len(doc)} page(s) (1-based)")
        page = doc[number - 1]
        try:
            bitmap = page.render(scale=resolution / 72.0, rev_byteorder=True)
            arr = np.array(bitmap.to_numpy(), dtype=np.uint8, copy=True)
            bitmap.close()
        finally:
            page.close()
    finally:
        doc.close()
    if arr.ndim == 2:
        arr = np.repeat(arr[..., None], 3, axis=-1)
    return np.ascontiguousarray(arr[..., :3])


def image_tensor(page: Page):
    """The page image as a uint8 torch tensor ``[3, H, W]`` (renders it first if lazy); None when the page has
    no image."""
    import torch
    img = page.get_image()
    if img is None:
        return None
    return torch.from_numpy(np.ascontiguousarray(img)).permute(2, 0, 1).contiguous()


class _Renderer:
    """A picklable lazy image loader (re-opens the file with pypdfium2 when called)."""

    def __init__(self, path: str, number: int, resolution: float, password: Optional[str]):
        self.path, self.number, self.resolution, self.password = path, number, resolution, password

    def __call__(self) -> np.ndarray:
        return render_page(self.path, self.number, self.resolution, self.password)


# ---------------------------------------------------------------------------------------------------------------
# Reader
# ---------------------------------------------------------------------------------------------------------------

class PdfReader:
    """An open PDF, read page by page (``page(n)``, ``pages(range)``); use as a context manager.

    ``image_resolution``: None (no images), or dpi for page images, rendered on first ``page.get_image()``
    (``lazy_images=True``) or while reading. ``body_size``: the body font size for the label rule; None estimates
    it per page. ``extract``: overrides for pdfplumber's ``extract_words`` arguments. ``policy``: ``LayoutPolicy``
    for boxes outside the page (words in the bleed area are clamped by default) and empty pages."""

    def __init__(self, path: PathLike, *, password: Optional[str] = None, policy=None,
                 image_resolution: Optional[float] = None, lazy_images: bool = True,
                 body_size: Optional[float] = None, heading_ratio: float = HEADING_RATIO,
                 extract: Optional[dict] = None):
        self.path = Path(path)
        self.source = str(path)
        check_pdf_path(self.path)
        if image_resolution is not None and not image_resolution > 0:
            raise ValueError(f"image_resolution must be positive dpi or None, got {image_resolution}")
        self.password = password
        self.policy = LayoutPolicy.coerce(policy)
        self.image_resolution, self.lazy_images = image_resolution, lazy_images
        self.body_size, self.heading_ratio = body_size, heading_ratio
        self.extract = {**_EXTRACT, **(extract or {})}
        self.skipped: Counter = Counter()
        plumber = _pdfplumber()
        self._pdf, self._walk, self._walk_at = None, None, 0
        try:
            self._pdf = plumber.open(self.source, password=password)
            self.num_pages = self._count_pages()
        except Exception as e:
            self.close()
            raise _wrap_error(e, self.source, "opened") from e
        if self.num_pages == 0:
            self.close()
            raise PdfError(f"{self.source}: the PDF has no pages")

    def _count_pages(self) -> int:
        # pdfplumber's ``pdf.pages`` builds every page object first (~10 s for the 2,415 pages of refman.pdf);
        # PDFium reads the count from the page tree in a fraction of a second, and pages are then walked lazily
        try:
            pdfium = _pdfium()
            doc = pdfium.PdfDocument(self.source, password=self.password)
            try:
                return len(doc)
            finally:
                doc.close()
        except ImportError:
            return len(self._pdf.pages)
        except Exception:  # PDFium refuses a file pdfminer reads: trust pdfminer
            return len(self._pdf.pages)

    def _plumber_page(self, number: int):
        """The pdfplumber page ``number``, walking pdfminer's page tree forward (restarting to go back)."""
        from pdfminer.pdfpage import PDFPage
        plumber = _pdfplumber()
        if self._walk is None or number <= self._walk_at:
            self._walk, self._walk_at = PDFPage.create_pages(self._pdf.doc), 0
        obj = None
        while self._walk_at < number:
            obj = next(self._walk, None)
            if obj is None:
                raise PdfError(f"{self.source}: page {number} is missing from the page tree (found only "
                               f"{self._walk_at} of {self.num_pages} pages)")
            self._walk_at += 1
        return plumber.page.Page(self._pdf, obj, page_number=number, initial_doctop=0)

    def __enter__(self) -> "PdfReader":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def close(self) -> None:
        pdf = getattr(self, "_pdf", None)
        if pdf is not None:
            # pdfplumber's close() closes every page of ``pdf.pages``, building them all first (~10 s for refman's
            # 2,415 pages); this reader walks pages itself and never built that list, so there is nothing to close
            if not hasattr(pdf, "_pages"):
                pdf._pages = []
            pdf.close()
            self._pdf = None

    def page(self, number: int) -> Page:
        """Page ``number`` (1-based) as a ``Page`` in reading order with labels."""
        if self._pdf is None:
            raise PdfError(f"{self.source}: the reader is closed")
        (number,) = parse_pages(number, self.num_pages, self.source)
        pp = None
        try:
            pp = self._plumber_page(number)
            raw = pp.extract_words(**self.extract)
            width, height = float(pp.width), float(pp.height)
        except PdfError:
            raise
        except Exception as e:
            self._walk = None  # the walk may be broken mid-way: restart it next time
            raise _wrap_error(e, f"{self.source} page {number}", "read") from e
        finally:
            if pp is not None:
                pp.close()  # drop pdfplumber's per-page caches: memory stays flat while streaming
        where = f"{self.source} page {number}"
        words = make_words([w["text"] for w in raw], [(w["x0"], w["top"], w["x1"], w["bottom"]) for w in raw],
                           width, height, fonts=[base_font(w.get("fontname")) for w in raw],
                           sizes=[w.get("size") for w in raw], policy=self.policy, skipped=self.skipped,
                           where=where)
        page = Page(words=words, width=width, height=height, number=number, source=self.source)
        page.order_words()
        page.body_size = self.body_size or body_size_of(page.texts, [w.font for w in words],
                                                        [w.size for w in words])
        labels = font_labels(page.texts, [w.font for w in page.words], [w.size for w in page.words],
                             [w.line for w in page.words], page.body_size, self.heading_ratio)
        for w, lab in zip(page.words, labels):
            w.label = lab
        if self.image_resolution is not None:
            loader = _Renderer(self.source, number, self.image_resolution, self.password)
            if self.lazy_images:
                page.image_loader = loader
            else:
                page.image = loader()
        return page

    def pages(self, pages=None, progress: Optional[bool] = None) -> Iterator[Page]:
        """Stream pages (1-based ``pages`` as in ``parse_pages``); empty pages follow ``policy.empty_page``.
        ``progress``: a tqdm bar on stderr (None: only for more than 50 pages on a terminal)."""
        numbers = parse_pages(pages, self.num_pages, self.source)
        if progress is None:
            progress = len(numbers) > 50 and sys.stderr.isatty()
        bar = None
        if progress:
            from tqdm.auto import tqdm
            bar = tqdm(total=len(numbers), desc=self.path.name, unit="page")
        try:
            for n in numbers:
                page = self.page(n)
                if bar is not None:
                    bar.update(1)
                if not page.words:
                    if self.policy.empty_page == "error":
                        raise DocumentFormatError(f"{page.where}: the page has no words")
                    if self.policy.empty_page == "drop":
                        self.skipped["empty_page"] += 1
                        continue
                yield page
        finally:
            if bar is not None:
                bar.close()


def iter_pdf(path: PathLike, pages=None, *, progress: Optional[bool] = None, **kwargs) -> Iterator[Page]:
    """Stream the pages of one PDF (the file stays open while the iterator runs); kwargs go to ``PdfReader``."""
    with PdfReader(path, **kwargs) as pdf:
        yield from pdf.pages(pages, progress=progress)


def read_pdf(path: PathLike, pages=None, *, progress: Optional[bool] = None, **kwargs) -> Document:
    """Read (a page range of) one PDF into a ``Document``; kwargs go to ``PdfReader``."""
    with PdfReader(path, **kwargs) as pdf:
        got = list(pdf.pages(pages, progress=progress))
        return Document(pages=got, source=pdf.source, skipped=pdf.skipped, num_pages=pdf.num_pages)
