"""Shared by the genomics tests (importable because pytest puts this folder on sys.path)."""
import functools

import pytest


def require(path, package="its Debian package"):
    """Decorator: the test fails (never skips) when a Debian data file that scripts/setup.sh installs is absent."""
    def deco(fn):
        @functools.wraps(fn)
        def wrapper(*a, **kw):
            if not path.exists():
                pytest.fail(f"{path} is missing: run scripts/setup.sh (apt-get install {package})")
            return fn(*a, **kw)
        return wrapper
    return deco
