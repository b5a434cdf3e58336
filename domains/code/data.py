"""Code datasets: source trees -> tokenized corpora -> fixed-length LM windows with hierarchical Positions.

Pipeline::

    SourceTree(root)                       walk, pick files by extension, skip binary / non-UTF-8 / oversized files
      .split("train")                      content-hash split: sha256(file bytes) -> train / val / test (90/5/5)
    tokenize_files(files, tokenizer)       one token stream per split: every file's tokens (+ <eos>), levels, lines
    CodeWindows(corpus, seq_len, stride)   windows of seq_len inputs + next-token labels, positions re-based to 0
    collate_windows(items)                 input_ids [b,n], labels [b,n], Positions(ids, levels, segments, mask)

Positions per window (n = seq_len)::

    ids       [n]     0..n-1
    levels    [n, 5]  (file, class, function, statement, token), see ``domains.code.hierarchy``; in the stream the
                      columns keep counting across files (a new file starts a new unit at every level), and each
                      window subtracts its first row, so every column of every window starts at 0
    segments  [n]     line index (BiPE), counting on across files, re-based to 0 per window

Sources (cards in ``datasets/``): ``cpython_stdlib()`` (the running interpreter's standard library) and
``go_stdlib()`` (Debian ``golang-src``). tree-sitter and tokenizers are imported only through
``domains.code.hierarchy`` / ``domains.code.tokenizer`` when a file is actually tokenized.
"""
from __future__ import annotations

import glob
import hashlib
import json
import os
import sys
import warnings
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Dict, Iterable, List, Optional, Sequence, Tuple, Union

import numpy as np
import torch
from torch import Tensor
from torch.utils.data import Dataset

from zoo.splits import SPLITS, split_for_hash

from domains.code.hierarchy import EXTENSIONS, LEVELS, check_language, hierarchical_positions

__all__ = [
    "SPLITS",
    "DEFAULT_MAX_BYTES",
    "SourceFile",
    "SourceTree",
    "split_for_hash",
    "find_cpython_stdlib",
    "find_go_src",
    "cpython_stdlib",
    "go_stdlib",
    "TokenizedCorpus",
    "tokenize_files",
    "CodeWindows",
    "collate_windows",
    "lm_datasets",
    "DATASETS",
]

PathLike = Union[str, os.PathLike]
DEFAULT_MAX_BYTES = 1 << 20  # 1 MiB: larger files are generated tables, not code worth modelling
DEFAULT_EXCLUDE_DIRS = (".git", ".hg", ".svn", "__pycache__", "node_modules")
_CORPUS_FORMAT = 1


# ---------------------------------------------------------------------------------------------------------------
# Source trees
# ---------------------------------------------------------------------------------------------------------------

def _check_fractions(fractions: Sequence[float]) -> Tuple[float, ...]:
    fr = tuple(float(f) for f in fractions)
    if len(fr) != len(SPLITS) or min(fr) < 0 or abs(sum(fr) - 1.0) > 1e-6:
        raise ValueError(f"split fractions must be {len(SPLITS)} non-negative numbers ({'/'.join(SPLITS)}) summing "
                         f"to 1, got {list(fractions)}")
    return fr


@dataclass(frozen=True)
class SourceFile:
    """One accepted file: valid UTF-8, no NUL bytes, at most ``max_bytes``."""
    path: Path
    relpath: str
    language: str
    size: int
    sha256: str
    split: str

    def read_bytes(self) -> bytes:
        return self.path.read_bytes()

    def read_text(self) -> str:
        return self.read_bytes().decode("utf-8")


class SourceTree:
    """The source files under ``root`` in ``languages`` (default: all of ``hierarchy.SUPPORTED_LANGUAGES``).

    Files are picked by extension (``hierarchy.EXTENSIONS``) and read once to check and hash them. A file is
    skipped, never fatal, when it is binary (contains a NUL byte), not valid UTF-8, larger than ``max_bytes``,
    unreadable, not a regular file (a dangling or looping link) or a link to a file outside ``root``;
    ``skipped`` counts each reason (``binary``, ``undecodable``, ``too_large``, ``unreadable``, ``not_a_file``,
    ``outside_root``), ``other_files`` counts files with other extensions; links to folders are not followed.
    Each file's split is a function of its bytes only (``split_for_hash`` of its SHA-256), so identical files always
    land in the same split and a file keeps its split when others are added or removed. With ``dedupe=True`` only
    the first (in ``relpath`` order) of identical files is kept; the others are counted as ``skipped["duplicate"]``.
    """

    def __init__(self, root: PathLike, languages: Optional[Iterable[str]] = None, *,
                 max_bytes: int = DEFAULT_MAX_BYTES, fractions: Sequence[float] = (0.90, 0.05, 0.05),
                 exclude_dirs: Iterable[str] = (), dedupe: bool = False, name: Optional[str] = None):
        self.root = Path(root)
        if not self.root.is_dir():
            raise NotADirectoryError(f"source tree root {self.root} is not a directory")
        if isinstance(languages, str):
            languages = [languages]
        langs = [check_language(lang) for lang in (languages if languages is not None else
                                                   sorted(set(EXTENSIONS.values())))]
        if not langs:
            raise ValueError("languages is empty: pass None for every supported language")
        self.languages = tuple(dict.fromkeys(langs))
        if int(max_bytes) <= 0:
            raise ValueError(f"max_bytes must be positive, got {max_bytes}")
        self.max_bytes = int(max_bytes)
        self.fractions = _check_fractions(fractions)
        self.exclude_dirs = frozenset(DEFAULT_EXCLUDE_DIRS) | frozenset(exclude_dirs)
        self.name = name or self.root.name
        self._real_root = self.root.resolve()
        self.skipped: Counter = Counter()
        self.other_files = 0
        self.files: List[SourceFile] = []
        self._scan(dedupe)

    def _scan(self, dedupe: bool) -> None:
        found = []
        for dirpath, dirnames, filenames in os.walk(self.root):
            dirnames[:] = sorted(d for d in dirnames if d not in self.exclude_dirs)
            for fname in filenames:
                lang = EXTENSIONS.get(os.path.splitext(fname)[1].lower())
                if lang is None or lang not in self.languages:
                    self.other_files += 1
                    continue
                path = Path(dirpath) / fname
                reason, info = self._check(path)
                if reason is not None:
                    self.skipped[reason] += 1
                    continue
                found.append((path.relative_to(self.root).as_posix(), path, lang) + info)
        seen = set()
        for relpath, path, lang, size, digest in sorted(found):
            if dedupe:
                if digest in seen:
                    self.skipped["duplicate"] += 1
                    continue
                seen.add(digest)
            self.files.append(SourceFile(path=path, relpath=relpath, language=lang, size=size, sha256=digest,
                                         split=split_for_hash(digest, self.fractions)))

    def _check(self, path: Path):
        try:
            if not path.is_file():
                return "not_a_file", None
            if path.is_symlink() and not path.resolve().is_relative_to(self._real_root):
                return "outside_root", None
            if path.stat().st_size > self.max_bytes:
                return "too_large", None
            data = path.read_bytes()
        except OSError:
            return "unreadable", None
        if len(data) > self.max_bytes:
            return "too_large", None
        if b"\x00" in data:
            return "binary", None
        try:
            data.decode("utf-8")
        except UnicodeDecodeError:
            return "undecodable", None
        return None, (len(data), hashlib.sha256(data).hexdigest())

    def split(self, name: str) -> List[SourceFile]:
        """The files of split ``name`` (one of ``SPLITS``), in path order."""
        if name not in SPLITS:
            raise ValueError(f"unknown split {name!r}; expected one of {list(SPLITS)}")
        return [f for f in self.files if f.split == name]

    def counts(self) -> Dict[str, int]:
        """Accepted files per split and per language, skipped files per reason, and files of other types."""
        out: Dict[str, int] = {"files": len(self.files)}
        out.update({s: 0 for s in SPLITS})
        out.update(Counter(f.split for f in self.files))
        out.update({f"lang:{k}": v for k, v in sorted(Counter(f.language for f in self.files).items())})
        out.update({f"skipped:{k}": v for k, v in sorted(self.skipped.items())})
        out["other_files"] = self.other_files
        return out

    @property
    def fingerprint(self) -> str:
        """SHA-256 over the accepted files' ``"<sha256>  <relpath>"`` lines (``sha256sum`` format, path order):
        equal fingerprints mean the same files with the same bytes (pinned in the dataset cards)."""
        lines = "".join(f"{f.sha256}  {f.relpath}\n" for f in self.files)
        return hashlib.sha256(lines.encode("utf-8")).hexdigest()

    def __len__(self) -> int:
        return len(self.files)

    def __repr__(self) -> str:
        c = self.counts()
        skipped = ", ".join(f"{k[8:]}={v}" for k, v in c.items() if k.startswith("skipped:")) or "none"
        return (f"SourceTree({self.name!r}, root={str(self.root)!r}, files={c['files']} (train={c['train']}, "
                f"val={c['val']}, test={c['test']}), skipped: {skipped})")


# ---------------------------------------------------------------------------------------------------------------
# Installed standard libraries
# ---------------------------------------------------------------------------------------------------------------

def _not_found(what: str, searched: Sequence[Path], how: str) -> Exception:
    from zoo.errors import DatasetNotFoundError
    places = "\n  ".join(str(p) for p in searched) or "(nowhere)"
    return DatasetNotFoundError(f"{what} not found; searched:\n  {places}\n{how}")


def find_cpython_stdlib(root: Optional[PathLike] = None) -> Path:
    """The CPython standard library source folder: ``root`` if given, else the base interpreter's (``sysconfig``
    with ``installed_base = sys.base_prefix``, so a venv points at the real stdlib), else ``/usr/lib/python3.X``."""
    import sysconfig
    if root is not None:
        candidates = [Path(root)]
    else:
        base = sys.base_prefix
        stdlib = sysconfig.get_paths(vars={"installed_base": base, "base": base})["stdlib"]
        version = f"python{sys.version_info.major}.{sys.version_info.minor}"
        candidates = [Path(stdlib), Path(base) / "lib" / version, Path("/usr/lib") / version]
    for c in candidates:
        if (c / "os.py").is_file() and (c / "collections").is_dir():
            return c
    raise _not_found("the CPython standard library source (a folder with os.py and collections/)", candidates,
                     "Pass root=<folder>, or install the sources, e.g. `apt-get install libpython3-stdlib` "
                     "(Debian/Ubuntu) or any python.org / pyenv build.")


def find_go_src(root: Optional[PathLike] = None) -> Path:
    """The Go standard library source folder (``$GOROOT/src``): ``root`` if given, else ``$GOROOT/src``, Debian's
    ``/usr/share/go/src`` (``golang-src``), ``/usr/lib/go/src``, ``/usr/local/go/src``, ``/usr/lib/go-*/src``."""
    if root is not None:
        candidates = [Path(root)]
    else:
        candidates = []
        if os.environ.get("GOROOT"):
            candidates.append(Path(os.environ["GOROOT"]) / "src")
        candidates += [Path("/usr/share/go/src"), Path("/usr/lib/go/src"), Path("/usr/local/go/src")]
        candidates += [Path(p) for p in sorted(glob.glob("/usr/lib/go-*/src") + glob.glob("/usr/share/go-*/src"),
                                               reverse=True)]
    for c in candidates:
        if (c / "fmt" / "print.go").is_file():
            return c
    raise _not_found("the Go standard library source (a folder with fmt/print.go)", candidates,
                     "Pass root=<GOROOT>/src, set $GOROOT, or install it: `apt-get install golang-src` "
                     "(Debian/Ubuntu), or unpack a go*.src.tar.gz from https://go.dev/dl/.")


def cpython_stdlib(root: Optional[PathLike] = None, **kwargs) -> SourceTree:
    """``SourceTree`` of the CPython standard library (``.py`` files; ``site-packages`` excluded)."""
    exclude = tuple(kwargs.pop("exclude_dirs", ())) + ("site-packages", "dist-packages")
    return SourceTree(find_cpython_stdlib(root), languages=["python"], exclude_dirs=exclude,
                      name=kwargs.pop("name", "cpython_stdlib"), **kwargs)


def go_stdlib(root: Optional[PathLike] = None, **kwargs) -> SourceTree:
    """``SourceTree`` of the Go standard library (``.go`` files, ``testdata`` and ``vendor`` included unless
    passed in ``exclude_dirs``)."""
    return SourceTree(find_go_src(root), languages=["go"], name=kwargs.pop("name", "go_stdlib"), **kwargs)


DATASETS: Dict[str, Callable[..., SourceTree]] = {"cpython_stdlib": cpython_stdlib, "go_stdlib": go_stdlib}


# ---------------------------------------------------------------------------------------------------------------
# Tokenized corpora
# ---------------------------------------------------------------------------------------------------------------

@dataclass
class TokenizedCorpus:
    """One token stream made of whole files: file ``i`` is ``tokens[file_offsets[i]:file_offsets[i+1]]``.

    ``tokens`` int32 ``[T]``, ``levels`` int32 ``[T, 5]``, ``segments`` int32 ``[T]`` (int32 to halve memory; windows
    come out as int64), ``file_offsets`` int64 ``[F+1]``, ``paths`` the ``relpath`` of each file.
    """
    tokens: Tensor
    levels: Tensor
    segments: Tensor
    file_offsets: Tensor
    paths: List[str] = field(default_factory=list)

    def __len__(self) -> int:
        return int(self.tokens.shape[0])

    @property
    def num_files(self) -> int:
        return len(self.paths)

    def save(self, path: PathLike) -> Path:
        from zoo.io import atomic_write
        obj = {"format": _CORPUS_FORMAT, "tokens": self.tokens, "levels": self.levels, "segments": self.segments,
               "file_offsets": self.file_offsets, "paths": list(self.paths)}
        return atomic_write(path, lambda tmp: torch.save(obj, tmp))

    @classmethod
    def load(cls, path: PathLike) -> "TokenizedCorpus":
        try:
            obj = torch.load(path, map_location="cpu", weights_only=True)
            if obj.get("format") != _CORPUS_FORMAT:
                raise ValueError(f"format {obj.get('format')!r}, expected {_CORPUS_FORMAT}")
            return cls(obj["tokens"], obj["levels"], obj["segments"], obj["file_offsets"], list(obj["paths"]))
        except FileNotFoundError:
            raise
        except Exception as e:
            raise ValueError(f"{path}: not a readable tokenized corpus: {e}") from e


def _cache_key(files: Sequence[SourceFile], tokenizer, add_eos: bool) -> str:
    spec = {"format": _CORPUS_FORMAT, "tokenizer": tokenizer.fingerprint, "eos": bool(add_eos),
            "levels": list(LEVELS), "files": [[f.relpath, f.language, f.sha256] for f in files]}
    return hashlib.sha256(json.dumps(spec, sort_keys=True).encode()).hexdigest()


def _resolve_cache(cache_dir) -> Optional[Path]:
    if cache_dir is None or cache_dir is False:
        return None
    if cache_dir is True:
        from zoo.hub import cache_dir as zoo_cache
        return zoo_cache("datasets/code-tokens")
    return Path(cache_dir)


def tokenize_files(files: Sequence[SourceFile], tokenizer, *, add_eos: bool = True, progress: bool = True,
                   cache_dir: Union[PathLike, bool, None] = None) -> TokenizedCorpus:
    """Tokenize ``files`` into one stream with hierarchical levels and line segments.

    Each file contributes its tokens and, with ``add_eos``, one ``<eos>`` with an empty span at the end of the file
    (it gets the levels of code outside every class/function/statement and the line after the last newline). Files
    that changed on disk since the ``SourceTree`` scan (different SHA-256) or became unreadable are skipped with a
    warning; files with no tokens (empty, with ``add_eos=False``) are left out, so ``paths`` lists the files kept. ``cache_dir`` (a folder, or ``True`` for ``$ZOO_HOME/datasets/code-tokens``) stores the result keyed
    by the tokenizer and the files' contents, written atomically.
    """
    files = list(files)
    for i, f in enumerate(files):
        if not isinstance(f, SourceFile):
            raise TypeError(f"files[{i}] is a {type(f).__name__}, not a SourceFile: pass the files of a SourceTree "
                            f"(tree.files or tree.split(name))")
    cache = _resolve_cache(cache_dir)
    cache_file = cache / f"corpus-{_cache_key(files, tokenizer, add_eos)[:32]}.pt" if cache else None
    if cache_file is not None and cache_file.is_file():
        try:
            return TokenizedCorpus.load(cache_file)
        except ValueError as e:
            warnings.warn(f"ignoring unreadable corpus cache ({e}); tokenizing again")

    from tqdm import tqdm
    toks, levs, segs, lengths, paths = [], [], [], [], []
    offset = np.zeros(len(LEVELS), dtype=np.int64)  # what the next file adds to each level column
    seg_offset = 0
    # one file at a time: HF's parallel encode_batch is several times slower when pinned to one core
    for f in tqdm(files, desc="tokenize", unit="file", disable=not progress, dynamic_ncols=True):
        try:
            data = f.read_bytes()
            if hashlib.sha256(data).hexdigest() != f.sha256:
                raise ValueError("content changed since the source tree was scanned")
            text = data.decode("utf-8")
        except (OSError, ValueError) as e:
            warnings.warn(f"skipping {f.path}: {e}")
            continue
        ids, spans = tokenizer.encode(text)
        if add_eos:
            ids = np.append(ids, tokenizer.eos_id)
            spans = np.concatenate([spans, np.array([[len(data), len(data)]], dtype=np.int64)])
        if len(ids) == 0:
            continue
        hier = hierarchical_positions(data, spans, f.language, file_index=0)
        lev = hier.levels.numpy() + offset
        seg = hier.segments.numpy() + seg_offset
        offset = lev[-1] + 1
        seg_offset = int(seg[-1]) + 1
        toks.append(ids.astype(np.int32))
        levs.append(lev.astype(np.int32))
        segs.append(seg.astype(np.int32))
        lengths.append(len(ids))
        paths.append(f.relpath)

    def cat(parts, shape):
        return torch.from_numpy(np.concatenate(parts)) if parts else torch.zeros(shape, dtype=torch.int32)
    corpus = TokenizedCorpus(tokens=cat(toks, (0,)), levels=cat(levs, (0, len(LEVELS))), segments=cat(segs, (0,)),
                             file_offsets=torch.from_numpy(np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64)),
                             paths=paths)
    if cache_file is not None:
        corpus.save(cache_file)
    return corpus


# ---------------------------------------------------------------------------------------------------------------
# LM windows
# ---------------------------------------------------------------------------------------------------------------

class CodeWindows(Dataset):
    """Fixed-length next-token windows over a ``TokenizedCorpus``.

    Window ``i`` starts at token ``s = i * stride``: ``input_ids = tokens[s : s+seq_len]``, ``labels =
    tokens[s+1 : s+seq_len+1]``; a trailing remainder shorter than a full window is dropped. Items are dicts of
    int64 tensors: ``input_ids [n]``, ``labels [n]``, ``ids [n]`` (0..n-1), ``levels [n, 5]`` and ``segments [n]``
    (both re-based so the window's first token is 0 in every column).
    """

    def __init__(self, corpus: TokenizedCorpus, seq_len: int, stride: Optional[int] = None):
        self.corpus = corpus
        for name, v in (("seq_len", seq_len), ("stride", stride)):
            if v is not None and (isinstance(v, bool) or not isinstance(v, (int, np.integer))):
                raise TypeError(f"{name} must be an int, got {type(v).__name__} {v!r}")
        self.seq_len = int(seq_len)
        self.stride = int(stride) if stride is not None else self.seq_len
        if self.seq_len <= 0 or self.stride <= 0:
            raise ValueError(f"seq_len and stride must be positive, got seq_len={seq_len}, stride={stride}")
        total = len(corpus)
        if total < self.seq_len + 1:
            raise ValueError(f"the corpus has {total} tokens ({corpus.num_files} files), fewer than one window of "
                             f"seq_len + 1 = {self.seq_len + 1} tokens (inputs plus the next-token label)")
        self.num_windows = (total - self.seq_len - 1) // self.stride + 1

    def __len__(self) -> int:
        return self.num_windows

    def __getitem__(self, i: int) -> Dict[str, Tensor]:
        if not -self.num_windows <= i < self.num_windows:
            raise IndexError(f"window {i} out of range for {self.num_windows} windows")
        s = (i % self.num_windows) * self.stride
        n = self.seq_len
        c = self.corpus
        levels = c.levels[s: s + n].to(torch.int64)
        segments = c.segments[s: s + n].to(torch.int64)
        return {
            "input_ids": c.tokens[s: s + n].to(torch.int64),
            "labels": c.tokens[s + 1: s + n + 1].to(torch.int64),
            "ids": torch.arange(n, dtype=torch.int64),
            "levels": levels - levels[0],
            "segments": segments - segments[0],
        }


def collate_windows(items: Sequence[Dict[str, Tensor]]) -> Dict[str, object]:
    """Stack ``CodeWindows`` items: ``input_ids [b,n]``, ``labels [b,n]`` and ``positions`` (a causal
    ``zoo.Positions`` with ``ids [b,n]``, ``levels [b,n,5]``, ``segments [b,n]``, ``mask [b,n]`` all True)."""
    from zoo.positions import Positions
    if not items:
        raise ValueError("collate_windows() got an empty batch")
    lengths = {int(it["input_ids"].shape[0]) for it in items}
    if len(lengths) != 1:
        raise ValueError(f"windows of different lengths {sorted(lengths)} cannot be stacked")
    stack = {k: torch.stack([it[k] for it in items]) for k in ("input_ids", "labels", "ids", "levels", "segments")}
    pos = Positions(ids=stack["ids"], levels=stack["levels"], segments=stack["segments"],
                    mask=torch.ones_like(stack["input_ids"], dtype=torch.bool), causal=True)
    return {"input_ids": stack["input_ids"], "labels": stack["labels"], "positions": pos}


def lm_datasets(tree: SourceTree, tokenizer, seq_len: int, stride: Optional[int] = None,
                splits: Sequence[str] = SPLITS, cache_dir: Union[PathLike, bool, None] = None,
                progress: bool = True, add_eos: bool = True) -> Dict[str, CodeWindows]:
    """``{split: CodeWindows}`` for ``splits`` of ``tree``; ``stride`` applies to train, other splits use
    non-overlapping windows."""
    out = {}
    for name in splits:
        corpus = tokenize_files(tree.split(name), tokenizer, add_eos=add_eos, progress=progress, cache_dir=cache_dir)
        try:
            out[name] = CodeWindows(corpus, seq_len, stride=stride if name == "train" else None)
        except ValueError as e:
            raise ValueError(f"{tree.name} split {name!r}: {e}") from e
    return out
