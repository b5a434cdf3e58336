"""Hierarchical positions of source-code tokens from a tree-sitter parse (HiRoPE levels, BiPE line segments).

HiRoPE (Zhang et al. 2024, "HiRoPE: Length Extrapolation for Code Models Using Hierarchical Position",
arXiv:2403.19115) gives every token a position at several levels of the syntax tree. This module computes them for
Python, Go and JavaScript with the per-language tree-sitter grammar wheels (``tree-sitter-python``,
``tree-sitter-go``, ``tree-sitter-javascript``; never ``tree-sitter-language-pack``, which downloads at run time).

Levels contract (``levels [n, 5]``, columns ``LEVELS = (file, class, function, statement, token)``)::

    token      t0  t1  t2  t3  t4  t5  t6 ...        (byte spans from the tokenizer)
    file        0   0   0   0   0   0   0            file_index for every token of this file
    class       0   0   1   1   1   1   2            running index of class-level units
    function    0   0   1   1   2   2   3            running index of function-level units
    statement   0   1   2   3   4   5   6            running index of statement-level units
    token       0   1   2   3   4   5   6            plain token index 0..n-1

For a level ``l`` in (class, function, statement) let ``u_l(t)`` be the innermost syntax node of that level's kinds
that contains the token's *anchor* byte (or "none"). A level-l **unit** is a maximal run of consecutive tokens
with the same key ``(u_class, ..., u_l)``; column ``l`` counts the units started before the token (0-based). So:

- every column is non-decreasing along the file and starts at 0 (the file column at ``file_index``);
- the columns nest: two tokens with equal column ``l`` have equal columns ``0..l`` (a unit never straddles a
  boundary of a coarser unit);
- code outside any class (any function, any statement) forms units of its own, one per maximal run: top-level
  statements between two classes get one class index, between the two classes' indices;
- a unit interrupted by a nested unit of the same level resumes as a new unit (the tokens of ``f`` after a nested
  ``def g`` get a new function index), which is what keeps the counters monotone.

A token's anchor is its first non-whitespace byte; a whitespace-only token (newline + indentation) is anchored at its
end, i.e. it belongs with the code that follows it. Line segments (BiPE) are the 0-based line of the token's *start*
byte: the number of ``b"\\n"`` before it.

Node kinds per level (only kinds present in the installed grammar are used):

- python: class ``class_definition``; function ``function_definition`` (a decorated definition's range includes
  its decorators; lambdas are expressions, not functions); statement: every ``*_statement`` plus
  ``class_definition``, ``function_definition``, ``decorated_definition``.
- go: class ``type_spec`` whose type is a ``struct_type`` or ``interface_type`` (methods are declared outside the
  struct in Go, so they are functions outside any class); function ``function_declaration``,
  ``method_declaration``, ``func_literal``; statement: every ``*_statement`` plus declarations
  (``short_var_declaration``, ``var/const/type/import_declaration``, ``function/method_declaration``),
  ``package_clause``, ``var_spec``, ``const_spec``, struct ``field_declaration`` and interface ``method_elem``.
- javascript: class ``class_declaration``, ``class``; function ``function_declaration``, ``function_expression``,
  ``generator_function(_declaration)``, ``arrow_function``, ``method_definition``; statement: every ``*_statement``
  plus ``lexical_declaration``, ``variable_declaration``, ``using_declaration``, function/class declarations,
  ``method_definition``, ``field_definition``.

Files with syntax errors parse into trees with ERROR nodes and still get levels; nothing here raises on bad code.
"""
from __future__ import annotations

import functools
import os
import threading
from typing import Dict, NamedTuple, Optional, Tuple, Union

import numpy as np
import torch
from torch import Tensor

__all__ = [
    "LEVELS",
    "SUPPORTED_LANGUAGES",
    "EXTENSIONS",
    "CodeHierarchy",
    "language_for_path",
    "check_language",
    "get_parser",
    "parse",
    "hierarchical_positions",
    "line_segments",
]

LEVELS: Tuple[str, ...] = ("file", "class", "function", "statement", "token")
SUPPORTED_LANGUAGES: Tuple[str, ...] = ("python", "go", "javascript")
EXTENSIONS: Dict[str, str] = {
    ".py": "python", ".pyi": "python",
    ".go": "go",
    ".js": "javascript", ".mjs": "javascript", ".cjs": "javascript", ".jsx": "javascript",
}
_GRAMMAR_MODULES = {"python": "tree_sitter_python", "go": "tree_sitter_go", "javascript": "tree_sitter_javascript"}
INSTALL_HINT = 'pip install "zoo-pe[code]"'

# language -> (class kinds, function kinds, extra statement kinds besides every "*_statement")
_KINDS: Dict[str, Tuple[Tuple[str, ...], Tuple[str, ...], Tuple[str, ...]]] = {
    "python": (
        ("class_definition",),
        ("function_definition",),
        ("class_definition", "function_definition", "decorated_definition"),
    ),
    "go": (
        (),  # struct / interface type_specs, matched by a pattern with a field predicate (see _queries)
        ("function_declaration", "method_declaration", "func_literal"),
        ("short_var_declaration", "var_declaration", "const_declaration", "type_declaration", "import_declaration",
         "function_declaration", "method_declaration", "package_clause", "var_spec", "const_spec",
         "field_declaration", "method_elem"),
    ),
    "javascript": (
        ("class_declaration", "class"),
        ("function_declaration", "function_expression", "function", "generator_function_declaration",
         "generator_function", "arrow_function", "method_definition"),
        ("lexical_declaration", "variable_declaration", "using_declaration", "function_declaration",
         "generator_function_declaration", "class_declaration", "method_definition", "field_definition"),
    ),
}
_WHITESPACE = np.zeros(256, dtype=bool)
_WHITESPACE[[9, 10, 11, 12, 13, 32]] = True


class CodeHierarchy(NamedTuple):
    """``levels`` long ``[n, 5]`` (columns ``LEVELS``) and ``segments`` long ``[n]`` (line of each token)."""
    levels: Tensor
    segments: Tensor


# ---------------------------------------------------------------------------------------------------------------
# Languages and parsers
# ---------------------------------------------------------------------------------------------------------------

def check_language(language: str) -> str:
    """Return ``language`` normalised to lower case, or raise ``ValueError`` listing the supported ones."""
    lang = str(language).lower()
    if lang not in SUPPORTED_LANGUAGES:
        raise ValueError(f"unsupported language {language!r}; supported languages: {', '.join(SUPPORTED_LANGUAGES)}")
    return lang


def language_for_path(path: Union[str, os.PathLike]) -> Optional[str]:
    """The language of a file from its extension (``EXTENSIONS``), or ``None`` when the extension is unknown."""
    return EXTENSIONS.get(os.path.splitext(os.fspath(path))[1].lower())


def _import(module: str):
    import importlib
    try:
        return importlib.import_module(module)
    except ImportError as e:
        raise ImportError(f"the code domain needs the package {module!r} ({e}); install it with: {INSTALL_HINT}") from e


@functools.lru_cache(maxsize=None)
def _language(language: str):
    ts = _import("tree_sitter")
    grammar = _import(_GRAMMAR_MODULES[language])
    return ts.Language(grammar.language())


def get_parser(language: str):
    """A fresh ``tree_sitter.Parser`` for ``language`` (parsers hold state: one per thread)."""
    lang = check_language(language)
    ts = _import("tree_sitter")
    return ts.Parser(_language(lang))


_LOCAL = threading.local()


def _cached_parser(language: str):
    parsers = _LOCAL.__dict__.setdefault("parsers", {})
    if language not in parsers:
        parsers[language] = get_parser(language)
    return parsers[language]


def parse(source: bytes, language: str):
    """Parse ``source`` (bytes) and return the ``tree_sitter.Tree``; syntax errors give ERROR nodes, never raise."""
    if not isinstance(source, (bytes, bytearray, memoryview)):
        raise TypeError(f"source must be bytes (UTF-8 encoded), got {type(source).__name__}")
    return _cached_parser(check_language(language)).parse(bytes(source))


@functools.lru_cache(maxsize=None)
def _queries(language: str):
    """One compiled query per level (class, function, statement), built from kinds the grammar actually has."""
    ts = _import("tree_sitter")
    lang = _language(language)
    named = {lang.node_kind_for_id(i) for i in range(lang.node_kind_count)
             if lang.node_kind_is_named(i) and lang.node_kind_is_visible(i)}
    classes, functions, extra = _KINDS[language]
    statements = sorted({k for k in named if k.endswith("_statement")} | (set(extra) & named))
    patterns = []
    for kinds in (classes, functions, statements):
        present = [k for k in kinds if k in named]
        patterns.append(" ".join(f"({k})" for k in present))
    if language == "go":
        patterns[0] = "(type_spec type: [(struct_type) (interface_type)])"
    out = []
    for level, pat in zip(("class", "function", "statement"), patterns):
        if not pat:
            raise RuntimeError(f"the installed {language} grammar has none of the {level} node kinds this module "
                               f"knows; is the grammar package too old or too new? ({INSTALL_HINT})")
        out.append(ts.Query(lang, f"[{pat}] @unit"))
    return tuple(out)


def _unit_ranges(root, query, language: str) -> np.ndarray:
    """``[k, 2]`` (start, end) byte ranges of the query's nodes, outer nodes before the nodes they contain."""
    ts = _import("tree_sitter")
    nodes = ts.QueryCursor(query).captures(root).get("unit", [])
    ranges = np.empty((len(nodes), 2), dtype=np.int64)
    for i, node in enumerate(nodes):
        start = node.start_byte
        if language == "python" and node.type in ("function_definition", "class_definition"):
            parent = node.parent
            if parent is not None and parent.type == "decorated_definition" and node.type != "decorated_definition":
                start = parent.start_byte  # decorators belong to the class / function they decorate
        ranges[i] = (start, node.end_byte)
    if len(ranges):
        # pre-order: by start, then the longer (enclosing) range first, so inner ranges are painted last
        ranges = ranges[np.lexsort((-ranges[:, 1], ranges[:, 0]))]
    return ranges


# ---------------------------------------------------------------------------------------------------------------
# Positions
# ---------------------------------------------------------------------------------------------------------------

def _as_spans(spans, n_bytes: int) -> np.ndarray:
    arr = np.asarray(spans.cpu() if isinstance(spans, Tensor) else spans)
    if arr.size and arr.dtype.kind not in "iu":
        raise TypeError(f"spans must be integer byte offsets [n, 2], got {arr.dtype}")
    arr = arr.astype(np.int64)
    if arr.size == 0:
        return arr.reshape(0, 2)
    if arr.ndim != 2 or arr.shape[1] != 2:
        raise ValueError(f"spans must be [n, 2] (start, end) byte offsets, got shape {list(arr.shape)}")
    starts, ends = arr[:, 0], arr[:, 1]
    bad = np.flatnonzero((starts < 0) | (ends < starts) | (ends > n_bytes))
    if len(bad):
        i = int(bad[0])
        raise ValueError(f"token {i} has byte span ({starts[i]}, {ends[i]}) outside the source of {n_bytes} bytes "
                         f"(or end < start)")
    back = np.flatnonzero(starts[1:] < ends[:-1])
    if len(back):
        i = int(back[0]) + 1
        raise ValueError(f"token spans must be in order and not overlap: token {i} starts at byte {starts[i]} before "
                         f"token {i - 1} ends at byte {ends[i - 1]}")
    return arr


def line_segments(source: bytes, starts) -> np.ndarray:
    """0-based line of each start byte: the number of ``b"\\n"`` in ``source`` before it."""
    newlines = np.flatnonzero(np.frombuffer(bytes(source), dtype=np.uint8) == 10)
    return np.searchsorted(newlines, np.asarray(starts, dtype=np.int64), side="left").astype(np.int64)


def _anchors(buf: np.ndarray, spans: np.ndarray) -> np.ndarray:
    """First non-whitespace byte of each token; the token's end for whitespace-only tokens."""
    n = len(spans)
    anchors = spans[:, 1].copy()
    if n == 0 or len(buf) == 0:
        return anchors
    non_ws = np.flatnonzero(~_WHITESPACE[buf])
    # first non-whitespace byte at or after each start; it anchors the token if it lies before the token's end
    idx = np.searchsorted(non_ws, spans[:, 0], side="left")
    found = idx < len(non_ws)
    first = np.where(found, non_ws[np.minimum(idx, len(non_ws) - 1)], len(buf))
    inside = found & (first < spans[:, 1])
    anchors[inside] = first[inside]
    return anchors


def _innermost(anchors: np.ndarray, ranges: np.ndarray) -> np.ndarray:
    """For each anchor the id (1-based row of ``ranges``) of the innermost range containing it, 0 for none."""
    owner = np.zeros(len(anchors), dtype=np.int64)
    if len(ranges) == 0 or len(anchors) == 0:
        return owner
    lo = np.searchsorted(anchors, ranges[:, 0], side="left")
    hi = np.searchsorted(anchors, ranges[:, 1], side="left")
    for uid, (a, b) in enumerate(zip(lo.tolist(), hi.tolist()), start=1):
        if b > a:
            owner[a:b] = uid  # pre-order: a contained (inner) range is painted after its container
    return owner


def _running_index(keys: np.ndarray) -> np.ndarray:
    """``keys [n, k]`` -> index of the maximal run of equal rows each row belongs to (0-based)."""
    n = keys.shape[0]
    if n == 0:
        return np.zeros(0, dtype=np.int64)
    change = np.zeros(n, dtype=np.int64)
    change[1:] = np.any(keys[1:] != keys[:-1], axis=1)
    return np.cumsum(change)


def hierarchical_positions(source: Union[bytes, str], spans, language: str, file_index: int = 0) -> CodeHierarchy:
    """Levels ``[n, 5]`` and line segments ``[n]`` for the tokens of one source file.

    Args:
        source: the file's bytes (a ``str`` is UTF-8 encoded first; spans are byte offsets into that encoding).
        spans: ``[n, 2]`` (start, end) byte offsets of the tokens, in order, not overlapping (gaps allowed; an
            empty span ``(p, p)`` marks a token with no text, e.g. an appended ``<eos>``).
        language: one of ``SUPPORTED_LANGUAGES``.
        file_index: value of the file column.

    See the module docstring for the exact meaning of each column.
    """
    lang = check_language(language)
    if not isinstance(source, (bytes, bytearray, memoryview, str)):
        raise TypeError(f"source must be bytes or str, got {type(source).__name__}")
    if isinstance(source, str):
        source = source.encode("utf-8")
    source = bytes(source)
    spans = _as_spans(spans, len(source))
    n = len(spans)
    buf = np.frombuffer(source, dtype=np.uint8)
    segments = line_segments(source, spans[:, 0])

    levels = np.zeros((n, len(LEVELS)), dtype=np.int64)
    levels[:, 0] = int(file_index)
    levels[:, -1] = np.arange(n)
    if n:
        root = parse(source, lang).root_node
        anchors = _anchors(buf, spans)
        owners = np.stack([_innermost(anchors, _unit_ranges(root, q, lang)) for q in _queries(lang)], axis=1)
        for col in range(owners.shape[1]):
            levels[:, col + 1] = _running_index(owners[:, : col + 1])
    return CodeHierarchy(torch.from_numpy(levels), torch.from_numpy(segments))
