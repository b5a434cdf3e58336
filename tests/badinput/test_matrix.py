"""The matrix as a whole: each area covers each category it can meet, and says which it cannot and why."""
import importlib
import pkgutil
from pathlib import Path

import pytest

from .matrix import CATEGORIES

HERE = Path(__file__).parent
AREAS = sorted(m.name for m in pkgutil.iter_modules([str(HERE)]) if m.name.startswith("test_") and m.name != "test_matrix")


def test_every_area_exists():
    # the engine, the hub and every domain have a module
    assert {"test_engine", "test_hub", "test_vision", "test_genomics", "test_documents", "test_code"} <= set(AREAS)


@pytest.mark.parametrize("area", AREAS)
def test_area_covers_every_category(area):
    mod = importlib.import_module(f"{__package__}.{area}")
    seen = {c.category for c in mod.CASES}
    not_met = getattr(mod, "NOT_APPLICABLE", {})    # category -> why this area cannot meet it
    assert set(not_met) <= set(CATEGORIES)
    assert not (seen & set(not_met)), f"{area}: a category is both covered and declared not applicable"
    missing = set(CATEGORIES) - seen - set(not_met)
    assert not missing, f"{area} has no case for {sorted(missing)}"
    assert all(isinstance(v, str) and len(v) > 20 for v in not_met.values())


def test_the_page_stating_the_matrix_is_current():
    # docs/bad-input.md is generated from the cases: a changed case changes the page (regenerate with
    # `python scripts/bad_input_doc.py`)
    import importlib.util

    root = HERE.parents[1]
    spec = importlib.util.spec_from_file_location("bad_input_doc", root / "scripts" / "bad_input_doc.py")
    doc = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(doc)
    areas = [(a[len("test_"):], importlib.import_module(f"{__package__}.{a}")) for a in AREAS]
    assert (root / "docs" / "bad-input.md").read_text(encoding="utf-8") == doc.render(areas)
