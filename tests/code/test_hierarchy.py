"""domains.code.hierarchy: levels (file, class, function, statement, token) and line segments from tree-sitter."""
import ast
import importlib
import re
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

import tree_sitter  # noqa: F401
import tree_sitter_python  # noqa: F401

from domains.code.data import find_cpython_stdlib, find_go_src  # noqa: E402
from domains.code.hierarchy import (LEVELS, SUPPORTED_LANGUAGES, hierarchical_positions,  # noqa: E402
                                    language_for_path)

pytestmark = pytest.mark.debian_data("golang-src")

CLASS, FUNC, STMT = 1, 2, 3
_TOKEN = re.compile(rb"\s+|\w+|[^\w\s]")  # whitespace runs are tokens of their own: exercises the anchor rule


def spans_of(src: bytes):
    return np.array([(m.start(), m.end()) for m in _TOKEN.finditer(src)], dtype=np.int64).reshape(-1, 2)


def check_contract(src: bytes, spans, levels: torch.Tensor, segments: torch.Tensor):
    """The properties every result must have, whatever the language or the code."""
    n = len(spans)
    assert levels.shape == (n, len(LEVELS)) and levels.dtype == torch.long
    assert segments.shape == (n,) and segments.dtype == torch.long
    if n == 0:
        return
    lv = levels.numpy()
    assert (lv[0, 1:-1] == 0).all()
    assert (np.diff(lv, axis=0) >= 0).all(), "every column is non-decreasing"
    assert (np.diff(lv[:, 1:-1], axis=0) <= 1).all(), "running indices step by at most one"
    assert (lv[:, -1] == np.arange(n)).all(), "last column is the token index"
    d = np.diff(lv, axis=0) > 0
    for col in range(1, lv.shape[1]):
        assert (d[:, col - 1] <= d[:, col]).all(), f"a new unit at column {col - 1} starts one at column {col}"
    newlines = [src.count(b"\n", 0, int(s)) for s in spans[:, 0]]
    assert segments.tolist() == newlines


def levels_for(src: bytes, language: str):
    spans = spans_of(src)
    h = hierarchical_positions(src, spans, language)
    check_contract(src, spans, h.levels, h.segments)
    return spans, h.levels.numpy(), h.segments.numpy()


def tokens_in(spans, start: int, end: int) -> np.ndarray:
    """Indices of the non-whitespace-only tokens whose start lies in [start, end)."""
    return np.flatnonzero((spans[:, 0] >= start) & (spans[:, 0] < end))


PY = b"""import os


class A:
    x = 1

    @staticmethod
    def f(a):
        y = a + 1
        return y

    def g(self):
        return 2


top = 3


def h():
    def inner():
        pass
    return 4
"""


def test_python_units_share_and_differ():
    spans, lv, _ = levels_for(PY, "python")
    at = lambda text: PY.index(text)
    f_body = tokens_in(spans, at(b"@staticmethod"), at(b"return y") + len(b"return y"))
    g_body = tokens_in(spans, at(b"def g"), at(b"return 2") + len(b"return 2"))
    assert len(set(lv[f_body, FUNC])) == 1, "decorator, header and body of f are one function unit"
    assert len(set(lv[g_body, FUNC])) == 1
    assert lv[f_body[0], FUNC] != lv[g_body[0], FUNC]
    assert len(set(lv[np.concatenate([f_body, g_body]), CLASS])) == 1, "both methods are in class A"
    # top-level code between class A and def h is a class-level unit of its own
    a_cls = lv[tokens_in(spans, at(b"class A"), at(b"class A") + 1)[0], CLASS]
    top = lv[tokens_in(spans, at(b"top"), at(b"top") + 1)[0], CLASS]
    h_cls = lv[tokens_in(spans, at(b"def h"), at(b"def h") + 1)[0], CLASS]
    imp = lv[0, CLASS]
    assert imp < a_cls < top and top == h_cls, "code outside classes: one unit per maximal run"
    # statements: `y = a + 1` and `return y` are two statement units, each shared by its tokens
    s1 = tokens_in(spans, at(b"y = a"), at(b"y = a") + len(b"y = a + 1"))
    s2 = tokens_in(spans, at(b"return y"), at(b"return y") + len(b"return y"))
    assert len(set(lv[s1, STMT])) == 1 and len(set(lv[s2, STMT])) == 1 and lv[s1[0], STMT] < lv[s2[0], STMT]
    # h is interrupted by the nested `inner`: h resumes as a new unit, so counters stay monotone
    h_head, inner, h_tail = (lv[tokens_in(spans, at(t), at(t) + 1)[0], FUNC] for t in (b"def h", b"pass", b"return 4"))
    assert h_head < inner < h_tail


def test_whitespace_token_belongs_to_following_code():
    src = b"def f():\n    x = 1\n    return x\n"
    spans, lv, seg = levels_for(src, "python")
    ws = [i for i, (s, e) in enumerate(spans) if src[s:e] == b"\n    "]
    assert len(ws) == 2
    ret = tokens_in(spans, src.index(b"return"), src.index(b"return") + 1)[0]
    assert lv[ws[1], STMT] == lv[ret, STMT], "indentation before `return` is part of the return statement"
    assert seg[ws[1]] == 1 and seg[ret] == 2, "but its line is the line it starts on"


def test_levels_pinned_small_example():
    src = b"class A:\n    def f(self):\n        return 1\nx = 2\n"
    spans = [(0, 5), (6, 7), (13, 16), (17, 25), (34, 40), (41, 42), (43, 44), (45, 46), (47, 48)]
    assert [src[a:b] for a, b in spans] == [b"class", b"A", b"def", b"f(self):", b"return", b"1", b"x", b"=", b"2"]
    # class A | def f(self): | return 1 | x = 2
    h = hierarchical_positions(src, spans, "python", file_index=7)
    assert h.levels.tolist() == [
        [7, 0, 0, 0, 0], [7, 0, 0, 0, 1],              # `class A` (no function yet; statement = class)
        [7, 0, 1, 1, 2], [7, 0, 1, 1, 3],              # `def`, `f(self):` -- function f, its def statement
        [7, 0, 1, 2, 4], [7, 0, 1, 2, 5],              # `return 1`
        [7, 1, 2, 3, 6], [7, 1, 2, 3, 7], [7, 1, 2, 3, 8],  # `x = 2`: outside class and function
    ]
    assert h.segments.tolist() == [0, 0, 1, 1, 2, 2, 3, 3, 3]


def test_python_real_stdlib_against_ast():
    stdlib = find_cpython_stdlib()
    checked = 0
    for name in ("textwrap.py", "colorsys.py", "bisect.py", "fnmatch.py", "shlex.py", "queue.py", "heapq.py"):
        src = (stdlib / name).read_bytes()
        spans, lv, _ = levels_for(src, "python")
        line_starts = np.concatenate([[0], np.flatnonzero(np.frombuffer(src, np.uint8) == 10) + 1])
        funcs = []
        for node in ast.walk(ast.parse(src)):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)) and not node.decorator_list and not any(
                    isinstance(c, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef, ast.Lambda))
                    for c in ast.walk(node) if c is not node):
                # ast columns are UTF-8 byte offsets, like tree-sitter's
                start = line_starts[node.lineno - 1] + node.col_offset
                end = line_starts[node.end_lineno - 1] + node.end_col_offset
                idx = tokens_in(spans, start, end)
                assert len(set(lv[idx, FUNC])) == 1, f"{name}:{node.lineno} {node.name} has one function index"
                funcs.append(lv[idx[0], FUNC])
        assert len(funcs) == len(set(funcs)) > 0, f"{name}: different functions, different indices"
        checked += len(funcs)
    assert checked > 30


def test_go_real_stdlib():
    go = find_go_src()                 # scripts/setup.sh installs golang-src: a missing tree is a failure here
    import tree_sitter_go  # noqa: F401
    for rel in ("sort/sort.go", "container/list/list.go", "errors/wrap.go", "strings/builder.go"):
        src = (go / rel).read_bytes()
        spans, lv, _ = levels_for(src, "go")
        func_lines = [m.start() for m in re.finditer(rb"^func ", src, re.M)]
        assert func_lines, rel
        idx = [tokens_in(spans, s, s + 1)[0] for s in func_lines]
        fidx = lv[idx, FUNC]
        assert len(set(fidx.tolist())) == len(func_lines), f"{rel}: each top-level func is its own unit"
    src = b"package p\n\ntype T struct {\n\ta int\n\tb string\n}\n\nfunc (t T) M() int { return t.a }\n"
    spans, lv, _ = levels_for(src, "go")
    struct = tokens_in(spans, src.index(b"T struct"), src.index(b"}\n") + 1)
    method = tokens_in(spans, src.index(b"func"), len(src) - 1)
    assert len(set(lv[struct, CLASS])) == 1 and lv[method[0], CLASS] > lv[struct[0], CLASS]
    a, b = (tokens_in(spans, src.index(t), src.index(t) + 1)[0] for t in (b"a int", b"b string"))
    assert lv[a, STMT] < lv[b, STMT], "struct fields are statements"
    assert len(set(lv[method, FUNC])) == 1


def test_javascript_classes_methods_arrows():
    import tree_sitter_javascript  # noqa: F401
    src = (b"class A {\n  m(x) { return x; }\n  n() { return 2; }\n}\n"
           b"const f = (y) => y + 1;\nfunction g() { let z = 1; return z; }\n")
    spans, lv, _ = levels_for(src, "javascript")
    m, n_, arrow, g = (tokens_in(spans, src.index(t), src.index(t) + 1)[0]
                       for t in (b"return x", b"return 2", b"y + 1", b"let z"))
    assert lv[m, CLASS] == lv[n_, CLASS] < lv[arrow, CLASS]
    assert len({lv[m, FUNC], lv[n_, FUNC], lv[arrow, FUNC], lv[g, FUNC]}) == 4
    body = tokens_in(spans, src.index(b"function g"), len(src) - 1)
    assert len(set(lv[body, FUNC])) == 1


@pytest.mark.parametrize("language,src", [
    ("python", b"def f(:\n    x = (\nclass\n  return ]]\n"),
    ("go", b"package p\nfunc f( {\n\tx := \n}\n}}}\n"),
    ("javascript", b"function (( {\n  let = ;\nclass { m( }\n"),
])
def test_syntax_errors_still_give_levels(language, src):
    importlib.import_module(f"tree_sitter_{language}")
    spans, lv, _ = levels_for(src, language)
    assert len(spans) > 5 and lv[-1, -1] == len(spans) - 1


def test_syntax_error_recovers_units_around_it():
    src = b"x = 1\ndef f(:\n    y = 2\n\ndef g():\n    return 3\n"
    spans, lv, _ = levels_for(src, "python")
    f, y, g = (tokens_in(spans, src.index(t), src.index(t) + 1)[0] for t in (b"def f", b"y = 2", b"return 3"))
    assert lv[f, FUNC] == lv[y, FUNC] < lv[g, FUNC] and lv[0, FUNC] < lv[f, FUNC]


def test_non_ascii_bytes_align():
    src = "# café ☕\ndef naïve(ß):\n    return '日本語' + ß\n\ndef g():\n    return '✓'\n".encode("utf-8")
    spans, lv, seg = levels_for(src, "python")
    # split the multi-byte characters into single-byte tokens too: anchors must still fall inside the right units
    byte_spans = np.array([(i, i + 1) for i in range(len(src))])
    h = hierarchical_positions(src, byte_spans, "python")
    check_contract(src, byte_spans, h.levels, h.segments)
    nihon = src.index("日".encode())
    assert h.levels[nihon, FUNC] == h.levels[nihon + 2, FUNC] == h.levels[src.index(b"return"), FUNC]
    check = src.index("✓".encode())
    assert h.levels[check, FUNC] > h.levels[nihon, FUNC]
    assert h.segments[check].item() == 5


def test_str_source_is_utf8_encoded():
    text = "x = 'é'\ny = 1\n"
    spans = [(0, 1), (4, 8), (9, 10)]  # 'é' is two bytes: the string literal spans bytes 4..8
    a = hierarchical_positions(text, spans, "python")
    b = hierarchical_positions(text.encode(), spans, "python")
    assert torch.equal(a.levels, b.levels) and a.segments.tolist() == [0, 0, 1]


def test_empty_and_bad_spans():
    h = hierarchical_positions(b"x = 1\n", np.zeros((0, 2)), "python")
    assert h.levels.shape == (0, 5) and h.segments.shape == (0,)
    with pytest.raises(ValueError, match="outside the source"):
        hierarchical_positions(b"x = 1\n", [(0, 99)], "python")
    with pytest.raises(ValueError, match="not overlap"):
        hierarchical_positions(b"x = 1\n", [(0, 3), (2, 4)], "python")
    with pytest.raises(ValueError, match=r"\[n, 2\]"):
        hierarchical_positions(b"x = 1\n", [1, 2, 3], "python")


def test_unknown_language_lists_supported():
    with pytest.raises(ValueError, match="python, go, javascript"):
        hierarchical_positions(b"x", [(0, 1)], "cobol")
    assert SUPPORTED_LANGUAGES == ("python", "go", "javascript")


def test_language_for_path():
    assert language_for_path("a/b.py") == "python"
    assert language_for_path(Path("x/Y.PY")) == "python"
    assert language_for_path("m.go") == "go"
    assert language_for_path("m.mjs") == "javascript" and language_for_path("c.js") == "javascript"
    assert language_for_path("README.md") is None and language_for_path("Makefile") is None


def test_missing_package_error_names_extra(monkeypatch):
    from domains.code import hierarchy
    monkeypatch.setitem(sys.modules, "tree_sitter", None)
    with pytest.raises(ImportError, match=r'pip install "zoo-pe\[code\]"'):
        hierarchy.get_parser("python")


def test_threads_get_their_own_parsers():
    from concurrent.futures import ThreadPoolExecutor
    spans = spans_of(PY)
    want = hierarchical_positions(PY, spans, "python").levels
    with ThreadPoolExecutor(4) as pool:
        outs = list(pool.map(lambda _: hierarchical_positions(PY, spans, "python").levels, range(16)))
    assert all(torch.equal(o, want) for o in outs)


def test_wrong_types_are_named():
    with pytest.raises(TypeError, match=r"source must be bytes or str, got int"):
        hierarchical_positions(3, [[0, 1]], "python")                        # bytes(3) would be b"\0\0\0"
    with pytest.raises(TypeError, match=r"spans must be integer byte offsets.*got float64"):
        hierarchical_positions(b"x = 1", [[0.5, 1.0]], "python")
    with pytest.raises(TypeError, match=r"spans must be integer byte offsets"):
        hierarchical_positions(b"x = 1", "0 1", "python")
