"""The README's Python examples run as written (blocks whose first line says they need internet are skipped by
design: nothing here reaches the network)."""
import re
from pathlib import Path

import pytest

README = Path(__file__).resolve().parent.parent / "README.md"
BLOCKS = re.findall(r"```python\n(.*?)```", README.read_text(), flags=re.S)
RUNNABLE = [b for b in BLOCKS if not b.lstrip().startswith("# needs internet")]


def test_readme_has_runnable_examples():
    assert len(RUNNABLE) >= 3


@pytest.mark.parametrize("i", range(len(RUNNABLE)))
def test_readme_example_runs(i, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("ZOO_OFFLINE", "1")
    exec(compile(RUNNABLE[i], f"README.md python block {i}", "exec"), {"__name__": "readme"})
