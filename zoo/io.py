"""Atomic file writes: write to a temporary file in the same directory, then rename over the target."""
from __future__ import annotations

import os
import re
import tempfile
from pathlib import Path
from typing import Callable, List, Union

__all__ = ["atomic_write", "atomic_write_text", "atomic_write_bytes", "remove_stale_temp_files"]

# the temporary names of an atomic write: ".<target>.<8 random chars>.tmp" (tempfile.mkstemp) and
# ".<target>.<pid>.<8 hex digits>.tmp" (zoo.hub.save_state_dict)
_TEMP_NAME = re.compile(r"\..+\.(?:\d+\.)?[a-z0-9_]{8}\.tmp")


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


def remove_stale_temp_files(directory: Union[str, Path]) -> List[str]:
    """Delete the temporary files an atomic write killed midway (kill -9, power loss) left in ``directory``;
    returns their names. Only names of the form the atomic writers make are touched."""
    directory = Path(directory)
    removed = []
    if not directory.is_dir():
        return removed
    for p in sorted(directory.iterdir()):
        if _TEMP_NAME.fullmatch(p.name) and p.is_file() and not p.is_symlink():
            p.unlink()
            removed.append(p.name)
    return removed
