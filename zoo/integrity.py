"""Whether a weights file is what it claims to be: hashes, and checks that a download is complete and loadable.

* :func:`sha256_file` and the handling of an expected SHA-256 (``sha256=`` arguments).
* torch.hub's ``name-<first hex digits of sha256>.ext`` file names, whose prefix vouches for a file.
* Structure checks for files no hash vouches for: a safetensors header must account for every byte, a
  ``torch.save`` zip archive must be complete (and pass its CRC-32s when it was resumed), a legacy ``torch.save``
  pickle must be readable with ``weights_only=True``.

:mod:`zoo.hub` downloads, resolves and loads weights and asks this module whether a file can be kept.
"""
from __future__ import annotations

import argparse
import hashlib
import json
import os
import pickle
import re
import warnings
import zipfile
import zlib
from pathlib import Path, PurePosixPath
from typing import Optional, Union

import torch

from .errors import ChecksumError, ConfigError, DownloadError, WeightsError

PathLike = Union[str, "os.PathLike[str]"]

_CHUNK = 1 << 20


# --------------------------------------------------------------------------- hashing


def sha256_file(path: PathLike, chunk_size: int = _CHUNK) -> str:
    """Hex SHA-256 of a file, read in chunks."""
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        while True:
            block = fh.read(chunk_size)
            if not block:
                break
            h.update(block)
    return h.hexdigest()


def _norm_sha(sha256: Optional[str]) -> Optional[str]:
    if sha256 is None or sha256 == "":
        return None
    if not isinstance(sha256, str):
        raise ConfigError(f"sha256 must be a hex digest string, got {type(sha256).__name__} {sha256!r}")
    s = sha256.strip().lower()
    if s.startswith("sha256:"):
        s = s[len("sha256:"):]
    if not re.fullmatch(r"[0-9a-f]{64}", s):
        raise ConfigError(f"not a SHA-256 hex digest: {sha256!r}")
    return s


def _verify(path: Path, expected: Optional[str], what: str) -> None:
    if expected is None:
        return
    got = sha256_file(path)
    if got != expected:
        raise ChecksumError(
            f"sha256 mismatch for {what} ({path}): expected {expected}, got {got}"
        )


# --------------------------------------------------------------------------- weights_only loading


_ANSI = re.compile(r"\x1b\[[0-9;]*m")


def _short(e: BaseException, limit: int = 300) -> str:
    msg = _ANSI.sub("", str(e))
    marker = "WeightsUnpickler error:"
    if marker in msg:
        msg = msg.split(marker, 1)[1].split("Check the documentation", 1)[0]
    msg = " ".join(msg.split()) or type(e).__name__
    return msg if len(msg) <= limit else msg[: limit - 3] + "..."


# Objects besides tensors/containers that official training checkpoints carry and that are safe.
_SAFE_GLOBALS = [argparse.Namespace]


# --------------------------------------------------------------------------- completeness of a download


# torch.hub's convention: ``name-<first 8+ hex digits of the file's sha256>.ext`` (e.g. the DeiT releases). An
# all-digit tail is more likely a date or a version than a digest, so it is not taken for one.
_HASH_IN_NAME = re.compile(r"-([0-9a-f]{8,64})\.[A-Za-z0-9]+$")


def _hash_prefix(name: str) -> Optional[str]:
    m = _HASH_IN_NAME.search(PurePosixPath(name).name)
    return m.group(1) if m and not m.group(1).isdigit() else None


_ZIP_MAGIC = b"PK\x03\x04"
_MAX_SAFETENSORS_HEADER = 100_000_000  # bytes; safetensors' own limit


def _format(path: Path, name: str) -> Optional[str]:
    """``"safetensors"``, ``"zip"`` (torch.save), ``"pickle"`` (legacy torch.save) or None: what ``path`` (to be
    called ``name``) claims to be, from the suffix of ``name`` and its first bytes."""
    with open(path, "rb") as fh:
        head = fh.read(9)
    if PurePosixPath(name).suffix == ".safetensors" or (len(head) == 9 and head[8:9] == b"{"):
        return "safetensors"
    if head.startswith(_ZIP_MAGIC):
        return "zip"
    if len(head) >= 2 and head[0] == 0x80 and 2 <= head[1] <= 5:
        return "pickle"
    return None


def _safetensors_problem(path: Path) -> Optional[str]:
    """Why ``path`` is no complete safetensors file (its header must parse and account for every byte), or None."""
    size = path.stat().st_size
    with open(path, "rb") as fh:
        head = fh.read(8)
        if len(head) < 8:
            return f"{size} bytes: shorter than the 8-byte header length"
        n = int.from_bytes(head, "little")
        if n > min(size - 8, _MAX_SAFETENSORS_HEADER):
            return f"the header claims {n} bytes but {size - 8} follow"
        raw = fh.read(n)
    try:
        header = json.loads(raw)
    except (UnicodeDecodeError, ValueError) as e:
        return f"the safetensors header is not valid JSON ({e})"
    if not isinstance(header, dict):
        return "the safetensors header is not a JSON object"
    end = 0
    for key, entry in header.items():
        if key == "__metadata__":
            continue
        offsets = entry.get("data_offsets") if isinstance(entry, dict) else None
        if not (isinstance(offsets, list) and len(offsets) == 2 and all(isinstance(o, int) for o in offsets)):
            return f"safetensors header entry {key!r} has no valid data_offsets"
        end = max(end, offsets[1])
    if 8 + n + end != size:
        return f"the safetensors header accounts for {8 + n + end} bytes but the file has {size}"
    return None


def _zip_problem(path: Path, crc: bool) -> Optional[str]:
    """Why ``path`` is no complete ``torch.save`` zip archive (with ``crc``: every entry passes its CRC-32)."""
    try:
        with zipfile.ZipFile(path) as zf:
            if not any(n == "data.pkl" or n.endswith("/data.pkl") for n in zf.namelist()):
                return "a zip archive without data.pkl, not a torch.save file"
            bad = zf.testzip() if crc else None
    except (zipfile.BadZipFile, zlib.error, OSError, EOFError, ValueError, NotImplementedError) as e:
        return f"not a complete zip archive ({e})"
    return f"zip entry {bad} fails its CRC-32 check" if bad else None


def _pickle_problem(path: Path) -> Optional[str]:
    """Why ``path`` is no readable legacy ``torch.save`` pickle, or None (a complete pickle that holds objects
    ``weights_only`` refuses is complete: loading it reports that)."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            with torch.serialization.safe_globals(_SAFE_GLOBALS):
                torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        msg = _ANSI.sub("", str(e))
        if "Unsupported global" in msg or "not an allowed global" in msg or re.search(r"GLOBAL\s", msg):
            return None
        return f"not a readable torch pickle ({_short(e)})"
    except Exception as e:
        return f"not a readable torch pickle ({_short(e)})"
    return None


def _resumable(part: Path, sha256: Optional[str], prefix: Optional[str]) -> bool:
    """Whether a file completed from ``part`` could be verified: by a hash, or by a zip archive's CRC-32s."""
    if sha256 or prefix:
        return True
    with open(part, "rb") as fh:
        return fh.read(4) == _ZIP_MAGIC


def _check_download(part: Path, name: str, url: str, sha256: Optional[str], prefix: Optional[str], resumed: bool,
                    size_known: bool) -> Optional[WeightsError]:
    """The error that disqualifies the transferred ``part`` (to be cached as ``name``), or None when something
    vouches for it."""
    if part.stat().st_size == 0:
        return DownloadError(f"the download of {url} is empty; it was discarded")
    if sha256 is not None or prefix is not None:
        got = sha256_file(part)
        if sha256 is not None and got != sha256:
            return ChecksumError(
                f"sha256 mismatch for {url}: expected {sha256}, got {got}; the download was discarded"
            )
        if sha256 is None and not got.startswith(prefix):
            return ChecksumError(
                f"sha256 mismatch for {url}: its file name promises a digest starting with {prefix} (torch.hub's "
                f"name-<sha256 prefix> convention), got {got}; the download was discarded (pass sha256= to "
                "check against another digest)"
            )
        return None
    fmt = _format(part, name)
    if fmt == "safetensors":
        problem = _safetensors_problem(part)
    elif fmt == "zip":
        problem = _zip_problem(part, crc=resumed)
    elif fmt == "pickle":
        problem = _pickle_problem(part)
    elif resumed or not size_known:
        problem = ("the server announced no size and no sha256 is known, so nothing shows that the file is "
                   "complete; pass sha256=")
    else:
        problem = None
    if problem is None:
        return None
    return DownloadError(f"the download of {url} is not a complete checkpoint: {problem}; it was discarded")
