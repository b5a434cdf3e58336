"""The bad-input matrix: what zoo does with hostile input, stated as data and checked case by case.

Every module ``tests/badinput/test_<area>.py`` defines ``CASES``, a list of :class:`Case`, and runs them with
:func:`check_case`.  A case names its category (one of :data:`CATEGORIES`), a one-line statement of what zoo does
(``does``), the action (``run(tmp_path)``), the exception it must raise (or ``None`` when zoo must cope and give a
correct result, then ``check`` asserts the result) and a regular expression the message must match -- the file,
record or argument a user needs to see.  ``tests/badinput/test_matrix.py`` checks that every area covers every
category it can meet and counts the cases.
"""
from __future__ import annotations

import re
import traceback
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Optional, Tuple, Type, Union

import pytest

CATEGORIES = ("wrong type", "out of range", "empty", "truncated", "corrupt", "adversarial path", "interrupted")

Exc = Union[Type[BaseException], Tuple[Type[BaseException], ...]]


@dataclass
class Case:
    id: str
    category: str
    does: str
    run: Callable[[Path], Any]
    raises: Optional[Exc] = None
    match: Optional[str] = None
    check: Optional[Callable[[Any, Path], None]] = None  # (result or ExceptionInfo, tmp_path) -> assert
    marks: tuple = field(default_factory=tuple)

    def __post_init__(self):
        assert self.category in CATEGORIES, f"{self.id}: unknown category {self.category!r}"
        assert self.does, f"{self.id}: say what zoo does"
        assert self.raises is not None or self.check is not None, f"{self.id}: a case must assert something"
        if self.raises is not None:
            assert self.match, f"{self.id}: an error case must say what its message names"


def params(cases):
    """``pytest.mark.parametrize`` arguments for a list of cases (ids = case ids, unique)."""
    ids = [c.id for c in cases]
    dup = {i for i in ids if ids.count(i) > 1}
    assert not dup, f"duplicate case ids: {sorted(dup)}"
    return [pytest.param(c, id=c.id, marks=c.marks) for c in cases]


# exceptions raised from deep inside a library rather than by zoo's own checks: a case whose expected type is
# broad (ValueError, RuntimeError, ...) must not be satisfied by these
_DEEP_MODULES = ("torch", "PIL", "Bio", "safetensors", "tokenizers", "tree_sitter", "pdfplumber", "pdfminer",
                 "omegaconf", "numpy", "gzip", "zipfile", "urllib", "http")


def _raised_by_zoo(exc: BaseException) -> bool:
    """True when the innermost frame that raised ``exc`` belongs to zoo (``zoo`` or ``domains``), not a library."""
    tb = traceback.extract_tb(exc.__traceback__)
    if not tb:
        return True
    fname = tb[-1].filename.replace("\\", "/")
    return "/zoo/" in fname or "/domains/" in fname


def check_case(case: Case, tmp_path: Path) -> None:
    if case.raises is None:
        result = case.run(tmp_path)
        case.check(result, tmp_path)
        return
    with pytest.raises(case.raises) as info:
        case.run(tmp_path)
    msg = str(info.value)
    assert re.search(case.match, msg, flags=re.S), f"{case.id}: message {msg!r} does not match {case.match!r}"
    assert _raised_by_zoo(info.value), (
        f"{case.id}: {type(info.value).__name__} comes from inside a library, not from zoo's own check: "
        f"{traceback.format_tb(info.value.__traceback__)[-1]}")
    if case.check is not None:
        case.check(info, tmp_path)
