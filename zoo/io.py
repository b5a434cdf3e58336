"""Atomic file writes: write to a temporary file in the same directory, then rename over the target."""
from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import Callable, Union

__all__ = ["atomic_write", "atomic_write_text", "atomic_write_bytes"]


def atomic_write(path: Union[str, Path], write: Callable[[str], None]) -> Path:
    """Call ``write(tmp_path)`` and move the result to ``path``; on any error nothing is left behind."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        write(tmp)
        os.chmod(tmp, 0o666 & ~_umask())                                       # as open() would create it
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    return path


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def atomic_write_bytes(path: Union[str, Path], data: bytes) -> Path:
    def w(tmp):
        with open(tmp, "wb") as f:
            f.write(data)
    return atomic_write(path, w)


def atomic_write_text(path: Union[str, Path], text: str) -> Path:
    return atomic_write_bytes(path, text.encode("utf-8"))
