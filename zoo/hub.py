"""Finding, downloading, caching and safely loading weights.

Sources understood by :func:`resolve` / :func:`load_state_dict`:

* ``http://...`` / ``https://...`` -- downloaded into the zoo cache (see :func:`cache_dir`),
  verified, resumable, and moved into place atomically. What vouches for a file: its SHA-256 when
  one is given, else the hash prefix of torch.hub's ``name-<first hex digits of sha256>.ext``
  convention, else its own structure (a safetensors header that accounts for every byte, a zip
  archive -- ``torch.save``'s format -- whose entries pass their CRC-32 when it was resumed). A
  ``.part`` is only resumed when the result can be verified so; a resumed file that fails is
  discarded and downloaded once more from scratch. These checks live in :mod:`zoo.integrity`.
* ``hf-hub:org/repo[@revision]`` together with ``filename=``, or
  ``hf-hub:org/repo[@revision]/path/in/repo`` -- fetched with ``huggingface_hub``
  (its own cache, ``HF_HOME`` / ``HF_HUB_CACHE``); if ``filename=`` is also given, the
  in-repo path is treated as the folder holding it.
* ``local-dir:/some/dir`` together with ``filename=`` -- the file ``/some/dir/<filename>``.
* ``file:///path`` or any other string / ``os.PathLike`` -- a local file path.

Offline switch: ``ZOO_OFFLINE=1`` (``true``/``yes``/``on`` also work); for ``hf-hub:``
sources ``HF_HUB_OFFLINE=1`` is honoured too. In offline mode nothing touches the network:
cached files are returned, anything else raises :class:`~zoo.errors.OfflineError`.

Checkpoints are only ever read as safetensors or with ``torch.load(weights_only=True)``.
"""
from __future__ import annotations

import http.client
import logging
import os
import pickle
import re
import urllib.error
import urllib.parse
import urllib.request
import uuid
import warnings
from collections.abc import Mapping
from pathlib import Path, PurePosixPath
from typing import Any, Optional, Union

import platformdirs
import torch
from tqdm.auto import tqdm

from .errors import (
    CheckpointError,
    ChecksumError,
    ConfigError,
    DownloadError,
    OfflineError,
    WeightsError,
)
from .integrity import (
    _ANSI,
    _SAFE_GLOBALS,
    _check_download,
    _hash_prefix,
    _norm_sha,
    _resumable,
    _short,
    _verify,
    sha256_file,
)

__all__ = [
    "cache_dir",
    "is_offline",
    "download",
    "resolve",
    "sha256_file",
    "load_state_dict",
    "save_state_dict",
]

_log = logging.getLogger(__name__)

PathLike = Union[str, "os.PathLike[str]"]

_TRUE = ("1", "true", "yes", "on")
_CHUNK = 1 << 20
_TIMEOUT = 60.0  # seconds, per socket operation
_USER_AGENT = "zoo-hub/0.1 (+python-urllib)"


# --------------------------------------------------------------------------- cache / env


def cache_dir(subdir: Optional[str] = "weights") -> Path:
    """Return (creating it on demand) the zoo cache directory ``<root>/<subdir>``.

    ``<root>`` is ``$ZOO_HOME`` when set, else ``platformdirs.user_cache_dir("zoo")``.
    Raises :class:`WeightsError` if the directory cannot be created or written to.
    """
    home = os.environ.get("ZOO_HOME")
    root = Path(home).expanduser() if home else Path(platformdirs.user_cache_dir("zoo", appauthor=False))
    d = root / subdir if subdir else root
    try:
        d.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        reason = e.strerror or str(e)
        raise WeightsError(
            f"zoo cache directory {d} cannot be created ({reason}); "
            "set ZOO_HOME to a writable directory"
        ) from e
    if not d.is_dir() or not os.access(d, os.W_OK | os.X_OK):
        raise WeightsError(
            f"zoo cache directory {d} is not writable; set ZOO_HOME to a writable directory"
        )
    return d


def _env_true(name: str) -> bool:
    return os.environ.get(name, "").strip().lower() in _TRUE


def is_offline(hf: bool = False) -> bool:
    """True when ``ZOO_OFFLINE`` is set to 1/true/yes/on.

    With ``hf=True`` (used for ``hf-hub:`` sources) ``HF_HUB_OFFLINE`` counts as well.
    """
    return _env_true("ZOO_OFFLINE") or (hf and _env_true("HF_HUB_OFFLINE"))


# --------------------------------------------------------------------------- download


def _url_filename(url: str) -> str:
    name = urllib.parse.unquote(PurePosixPath(urllib.parse.urlparse(url).path).name)
    if not name:
        raise WeightsError(f"cannot derive a file name from URL {url}; pass filename=")
    return name


def _check_rel(filename: str, where: str = "the cache") -> None:
    if not isinstance(filename, (str, os.PathLike)):
        raise WeightsError(f"filename must be a string, got {type(filename).__name__} {filename!r}")
    filename = os.fspath(filename)
    p = PurePosixPath(filename.replace("\\", "/"))
    if p.is_absolute() or ".." in p.parts or not p.parts or Path(filename).is_absolute():
        raise WeightsError(f"filename must be a relative path inside {where}, got {filename!r}")


def _content_range(value: Optional[str]) -> tuple[Optional[int], Optional[int]]:
    """Parse ``bytes START-END/TOTAL`` -> (START, TOTAL or None)."""
    if not value:
        return None, None
    m = re.fullmatch(r"\s*bytes\s+(\d+)-(\d+)/(\d+|\*)\s*", value)
    if not m:
        return None, None
    total = None if m.group(3) == "*" else int(m.group(3))
    return int(m.group(1)), total


def _fetch(url: str, part: Path, desc: str, progress: bool, resume: bool = True) -> tuple[bool, bool]:
    """Transfer ``url`` into ``part``, continuing an existing ``part`` when ``resume``.

    Returns ``(resumed, size_known)``: whether bytes were appended to an existing ``part``, and whether the
    server announced the size the file was to reach (``Content-Length``, or ``Content-Range`` on a resume)."""
    existing = part.stat().st_size if resume and part.is_file() else 0
    if not existing:
        part.unlink(missing_ok=True)
    headers = {"User-Agent": _USER_AGENT, "Accept-Encoding": "identity"}
    if existing:
        headers["Range"] = f"bytes={existing}-"
    req = urllib.request.Request(url, headers=headers)
    try:
        resp = urllib.request.urlopen(req, timeout=_TIMEOUT)
    except urllib.error.HTTPError as e:
        e.close()
        if e.code == 416 and existing:
            # The partial file is no prefix the server recognises: start over.
            return _fetch(url, part, desc, progress, resume=False)
        raise DownloadError(f"downloading {url} failed: HTTP {e.code} {e.reason}") from None
    except (urllib.error.URLError, OSError, http.client.HTTPException) as e:
        reason = getattr(e, "reason", None) or e
        raise DownloadError(f"downloading {url} failed: {reason}") from e

    with resp:
        length_hdr = resp.headers.get("Content-Length")
        length = int(length_hdr) if length_hdr and length_hdr.strip().isdigit() else None
        if existing and resp.status == 206:
            start, total = _content_range(resp.headers.get("Content-Range"))
            if start != existing or total is None or (length is not None and existing + length != total):
                # Not a continuation of our part whose end we can check: start over.
                resp.close()
                return _fetch(url, part, desc, progress, resume=False)
            offset, mode = existing, "ab"
            expected = total
        elif resp.status == 206:
            raise DownloadError(f"downloading {url} failed: the server sent a partial answer to a plain request")
        else:
            # Fresh download, or the server ignored our Range header (200): start from scratch.
            offset, mode = 0, "wb"
            expected = length

        received = 0
        failure: Optional[BaseException] = None
        with open(part, mode) as fh, tqdm(
            total=expected,
            initial=offset,
            unit="B",
            unit_scale=True,
            unit_divisor=1024,
            desc=desc,
            disable=not progress,
            leave=False,
        ) as bar:
            try:
                while True:
                    chunk = resp.read(_CHUNK)
                    if not chunk:
                        break
                    fh.write(chunk)
                    received += len(chunk)
                    bar.update(len(chunk))
            except (http.client.HTTPException, OSError) as e:  # IncompleteRead, reset, timeout
                failure = e
            fh.flush()
            os.fsync(fh.fileno())

    size = offset + received
    if expected is not None and size > expected:
        part.unlink(missing_ok=True)
        raise DownloadError(
            f"downloading {url} failed: received {size} bytes but the server announced {expected}"
        )
    if failure is not None or (expected is not None and size < expected):
        of = f"{size} of {expected}" if expected is not None else f"{size}"
        why = f" ({failure})" if failure is not None else ""
        raise DownloadError(
            f"transfer of {url} was cut short{why}: {of} bytes arrived; the partial file is kept "
            f"at {part} and the next call resumes from there"
        ) from failure
    return offset > 0, expected is not None


def download(
    url: str,
    sha256: Optional[str] = None,
    filename: Optional[str] = None,
    progress: bool = True,
    cache: Optional[PathLike] = None,
) -> Path:
    """Download ``url`` into the cache (``cache`` or :func:`cache_dir`) and return its path.

    A cached copy is returned without network access (after checking ``sha256`` if given).
    A transfer goes to ``<name>.part`` first; an interrupted transfer keeps it and the next
    call resumes with an HTTP ``Range`` request when the completed file can be verified (a hash,
    or a zip archive's CRC-32s); otherwise it starts over. Only a complete, verified file is
    moved (atomically) to its final name: see the module docstring for what verifies it.
    """
    expected = _norm_sha(sha256)
    name = filename or _url_filename(url)
    _check_rel(name)
    root = Path(cache).expanduser() if cache is not None else cache_dir("weights")
    target = root / name
    offline = is_offline()

    if target.is_file():
        if expected is None:
            return target
        got = sha256_file(target)
        if got == expected:
            return target
        if offline:
            raise ChecksumError(
                f"cached file {target} has sha256 {got} but {expected} was expected for {url}; "
                "offline mode (ZOO_OFFLINE) prevents downloading it again: delete the file and "
                "retry with network access, or copy a good copy there"
            )
        _log.warning("cached %s has sha256 %s, expected %s: downloading it again", target, got, expected)

    if offline:
        raise OfflineError(
            f"offline mode is on (ZOO_OFFLINE) and {url} is not cached; expected it at {target}. "
            f"Download it on a machine with network access and copy it to that path "
            f"(e.g. `curl -L -o '{target}' '{url}'`), or unset ZOO_OFFLINE."
        )

    try:
        target.parent.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise WeightsError(
            f"cannot create {target.parent} ({e.strerror or e}); set ZOO_HOME to a writable directory"
        ) from e
    part = target.with_name(target.name + ".part")
    prefix = None if expected is not None else _hash_prefix(urllib.parse.urlparse(url).path)
    resume = part.is_file() and _resumable(part, expected, prefix)
    resumed, size_known = _fetch(url, part, desc=target.name, progress=progress, resume=resume)
    error = _check_download(part, name, url, expected, prefix, resumed, size_known)
    if error is not None and resumed:
        _log.warning("%s completed from an earlier partial file fails verification (%s): downloading it again "
                     "from scratch", target.name, error)
        resumed, size_known = _fetch(url, part, desc=target.name, progress=progress, resume=False)
        error = _check_download(part, name, url, expected, prefix, resumed, size_known)
    if error is not None:
        part.unlink(missing_ok=True)
        raise error
    os.replace(part, target)
    return target


# --------------------------------------------------------------------------- resolve


def _resolve_hf(spec: str, filename: Optional[str], source: str) -> Path:
    parts = [p for p in spec.strip("/").split("/") if p]
    if len(parts) < 2:
        raise WeightsError(
            f"bad source {source!r}: expected hf-hub:org/repo[@revision][/path/in/repo]"
        )
    org, name, rest = parts[0], parts[1], parts[2:]
    revision = None
    if "@" in name:
        name, revision = name.split("@", 1)
        revision = revision or None
    repo_id = f"{org}/{name}"
    in_repo = "/".join(rest)
    if in_repo and filename:
        in_repo = f"{in_repo}/{filename}"
    elif filename:
        in_repo = filename
    if not in_repo:
        raise WeightsError(f"source {source!r} names no file: pass filename= or use hf-hub:org/repo/file")
    _check_rel(in_repo, where=f"the repository of {source!r}")

    try:
        from huggingface_hub import hf_hub_download
    except ImportError as e:  # pragma: no cover - dependency is declared
        raise WeightsError(f"huggingface_hub is needed for {source!r}: pip install huggingface_hub") from e

    offline = is_offline(hf=True)
    what = f"{in_repo} from {repo_id}" + (f"@{revision}" if revision else "")
    try:
        path = hf_hub_download(
            repo_id=repo_id, filename=in_repo, revision=revision, local_files_only=offline
        )
    except Exception as e:  # map huggingface_hub's errors onto ours
        try:
            from huggingface_hub.errors import LocalEntryNotFoundError, OfflineModeIsEnabled
        except ImportError:  # pragma: no cover
            LocalEntryNotFoundError = OfflineModeIsEnabled = ()  # type: ignore[assignment]
        if offline or isinstance(e, OfflineModeIsEnabled):
            raise OfflineError(
                f"offline mode is on (ZOO_OFFLINE / HF_HUB_OFFLINE) and {what} is not in the "
                f"Hugging Face cache; run once with network access (or `huggingface-cli download "
                f"{repo_id} {in_repo}`) to cache it: {e}"
            ) from e
        if isinstance(e, (LocalEntryNotFoundError, OSError)):
            raise DownloadError(f"cannot fetch {what}: {e}") from e
        raise WeightsError(f"cannot fetch {what}: {e}") from e
    return Path(path)


def resolve(
    source: PathLike,
    sha256: Optional[str] = None,
    filename: Optional[str] = None,
    progress: bool = True,
) -> Path:
    """Turn a weights source (URL, ``hf-hub:``, ``local-dir:``, path) into a local file path."""
    if not isinstance(source, (str, os.PathLike)):
        raise ConfigError(f"a weights source is a path, URL, 'hf-hub:' or 'local-dir:' string, got "
                          f"{type(source).__name__} {source!r}")
    expected = _norm_sha(sha256)
    src = os.fspath(source)
    if isinstance(src, bytes):
        raise ConfigError(f"a weights source is a str path, not bytes: {src!r}")
    if src.startswith(("http://", "https://")):
        return download(src, sha256=expected, filename=filename, progress=progress)
    if src.startswith("hf-hub:"):
        path = _resolve_hf(src[len("hf-hub:"):], filename, src)
    elif src.startswith("local-dir:"):
        if not filename:
            raise WeightsError(f"source {src!r} needs filename= to name the file in that directory")
        _check_rel(filename, where=f"the folder of {src!r}")
        path = Path(src[len("local-dir:"):]).expanduser() / filename
        if not path.is_file():
            raise WeightsError(f"weights file {path} not found (source {src!r})")
    elif src.startswith("file://"):
        path = Path(urllib.request.url2pathname(urllib.parse.urlparse(src).path))
    else:
        path = Path(src).expanduser()
    if not path.is_file():
        kind = "is a directory, not a file" if path.is_dir() else "does not exist"
        raise WeightsError(f"weights file {path} {kind}")
    _verify(path, expected, src)
    return path


# --------------------------------------------------------------------------- load / save


def _looks_like_safetensors(path: Path) -> bool:
    if path.suffix == ".safetensors":
        return True
    try:
        size = path.stat().st_size
        with open(path, "rb") as fh:
            head = fh.read(9)
    except OSError:
        return False
    if len(head) < 9:
        return False
    n = int.from_bytes(head[:8], "little")
    return head[8:9] == b"{" and 0 < n <= size - 8


def load_state_dict(
    path_or_source: PathLike,
    map_location: Any = "cpu",
    sha256: Optional[str] = None,
    filename: Optional[str] = None,
) -> dict:
    """Resolve a source and load it as safetensors or a ``weights_only`` pickle.

    Returns the loaded mapping unchanged (``{'model': sd, 'args': Namespace(...)}`` stays
    nested). Raises :class:`CheckpointError` for corrupt, truncated or unsafe files.
    """
    path = resolve(path_or_source, sha256=sha256, filename=filename)
    if _looks_like_safetensors(path):
        from safetensors.torch import load_file

        if map_location is None:
            device = "cpu"
        elif isinstance(map_location, (str, torch.device)):
            device = str(map_location)
        else:
            device = "cpu"  # dict/callable map_locations only make sense for torch.load
        try:
            return load_file(str(path), device=device)
        except Exception as e:
            raise CheckpointError(f"{path} is not a valid checkpoint: {_short(e)}") from e

    try:
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=r".*[Dd]etected pickle protocol", category=UserWarning)
            with torch.serialization.safe_globals(_SAFE_GLOBALS):
                obj = torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as e:
        msg = _ANSI.sub("", str(e))
        m = re.search(r"GLOBAL\s+([\w.<>]+)", msg)
        if m or "Unsupported global" in msg or "not an allowed global" in msg:
            offending = f" (offending global: {m.group(1)})" if m else ""
            raise CheckpointError(
                f"{path} holds Python objects other than plain tensors and containers{offending}; "
                "zoo only loads safetensors files or pickles that torch.load(weights_only=True) "
                "accepts. Re-save the state dict (tensors only) from a trusted environment."
            ) from None
        raise CheckpointError(f"{path} is not a valid checkpoint: {_short(e)}") from None
    except Exception as e:
        raise CheckpointError(f"{path} is not a valid checkpoint: {_short(e)}") from e
    if not isinstance(obj, Mapping):
        raise CheckpointError(
            f"{path} is not a valid checkpoint: expected a dict of tensors, got {type(obj).__name__}"
        )
    return obj if isinstance(obj, dict) else dict(obj)


def _check_entries(sd: Mapping, path: Path) -> None:
    """A state dict to save maps str keys to tensors: name the first entry that does not."""
    if not isinstance(sd, Mapping):
        raise CheckpointError(f"cannot save {path}: expected a state dict (str -> tensor), got {type(sd).__name__}")
    for k, v in sd.items():
        if not isinstance(k, str):
            raise CheckpointError(f"state dict key {k!r} is a {type(k).__name__}, not a str: cannot save {path}")
        if not isinstance(v, torch.Tensor):
            raise CheckpointError(
                f"state dict entry {k!r} is a {type(v).__name__}, not a tensor: cannot save {path}"
            )


def _unshare(sd: Mapping) -> dict:
    """safetensors refuses tensors sharing storage (tied weights): clone the repeats."""
    out, seen = {}, set()
    for k, v in sd.items():
        v = v.detach()
        ptr = v.untyped_storage().data_ptr() if v.numel() else None
        if ptr is not None and ptr in seen:
            v = v.clone()
        elif ptr is not None:
            seen.add(ptr)
        out[k] = v.contiguous()
    return out


def save_state_dict(sd: Mapping, path: PathLike) -> Path:
    """Atomically write ``sd`` (str -> tensor) to ``path`` (safetensors for ``.safetensors``, else torch.save),
    with the permissions a plainly created file gets."""
    path = Path(path).expanduser()
    _check_entries(sd, path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{uuid.uuid4().hex[:8]}.tmp")
    try:
        open(tmp, "xb").close()  # created with umask-respecting permissions
        mode = tmp.stat().st_mode & 0o777
        if path.suffix == ".safetensors":
            from safetensors.torch import save_file

            save_file(_unshare(sd), str(tmp))
            os.chmod(tmp, mode)  # safetensors writes a new file, owner-only
        else:
            with open(tmp, "wb") as fh:
                torch.save(sd, fh)
        with open(tmp, "rb+") as fh:
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return path
