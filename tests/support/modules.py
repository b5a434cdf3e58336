"""Loading a helper module of another test folder by its path (test folders are not packages)."""
import importlib.util
from pathlib import Path
from types import ModuleType


def load_test_module(path: Path, prefix: str) -> ModuleType:
    """The module at ``path``, imported under ``<prefix>_<file stem>`` (the real-data fixtures and reference
    builders written beside other tests)."""
    spec = importlib.util.spec_from_file_location(f"{prefix}_{path.stem}", path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod
