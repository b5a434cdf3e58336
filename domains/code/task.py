"""Causal language modelling on source code for the fine-tune engine (``task: causal_lm``).

    data.name ─► SourceTree ─► content-hash splits ─► byte-level BPE (trained on train files, or data.tokenizer)
        ─► token streams (cached under $ZOO_HOME) ─► windows of data.seq_len tokens + next-token labels + Positions

Sources: ``cpython_stdlib`` and ``go_stdlib`` (``data.root`` overrides where they are looked for) or ``source_tree``
(any folder given as ``data.root``; ``data.languages`` picks the languages). The tokenizer is saved with the model
(``tokenizer.json`` in the run folder, `save_artifacts`); `load_run` gives back model + tokenizer.

Windows. The token stream of a split is cut into windows of ``n = data.seq_len`` inputs; a window starting at token
``s`` has ``input_ids = tokens[s:s+n]``, ``labels = tokens[s+1:s+n+1]`` and the Positions of
``domains.code.data.CodeWindows`` (ids 0..n-1, hierarchical levels and line segments re-based to 0). Evaluation uses
the non-overlapping windows ``s = 0, n, 2n, ...`` (the first ``data.eval_limit``; both limits count windows).
Training uses ``s = o + i*n`` for ``i < W``, where the offset ``o`` in ``[0, n)`` is drawn per epoch when
``data.augment`` is on (so each epoch cuts the code at other places) and is 0 otherwise; ``W`` is the number of
windows that fit for every ``o``.

Long context (`zoo.position_sampling`). ``data.positions``: ``contiguous`` (ids 0..n-1), ``pose`` (PoSE: two chunks
of text, the second one's ids shifted by a skip drawn from ``data.target_len``) or ``randomized`` (n sorted distinct
ids from ``0 .. data.target_len - 1``); evaluation always uses contiguous ids.  ``data.packing``: ``stream`` (windows
run across file boundaries, ids continue: how the recipes train), ``packed`` (the same windows carry each token's
file as ``Positions.doc_ids``: attention stays inside a file, ids restart at each file, a label in the next file is
ignored) or ``padded`` (one piece of one file per row, at most ``n`` tokens, padded; the baseline packing is measured
against).

Exact resume: the epoch generator first draws the offset, then the permutation of the ``W`` windows (and, for
sampled positions, one seed; batch ``i`` draws from a generator seeded with it plus ``i``); micro-batch
``i`` is the windows ``perm[i*b:(i+1)*b]``, a pure function of ``(seed, epoch, i)``. On ``--resume`` the tokenizer is
read back from the run folder rather than trained again, so the token ids cannot change under the checkpoint.
"""
from __future__ import annotations

import math
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, Iterator, List, Optional, Tuple, Union

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from zoo.errors import CheckpointError, ConfigError, DatasetNotFoundError
from zoo.finetune.config import DataCfg, check_at_least
from zoo.finetune.engine import read_run
from zoo.finetune.tasks import Task, register_task, token_mean
from zoo.position_sampling import check_position_mode, pose_window, randomized_ids
from zoo.positions import Positions
from zoo.splits import SPLITS

__all__ = ["CausalLMTask", "CodeData", "SOURCES", "DEFAULT_SEQ_LEN", "DEFAULT_VOCAB_SIZE", "open_source_tree",
           "get_tokenizer", "stream_tensors", "gather_windows", "lm_metrics", "load_run"]

#: data.name -> what it is (``source_tree`` needs data.root)
SOURCES = {"cpython_stdlib": "the CPython standard library (.py)", "go_stdlib": "the Go standard library (.go)",
           "source_tree": "any folder of source files given as data.root"}
DEFAULT_SEQ_LEN = 512
PACKINGS = ("stream", "packed", "padded")
DEFAULT_VOCAB_SIZE = 8192
IGNORE_INDEX = -100
# evaluation batches are capped so that the float32 logits stay below this many elements (~256 MiB)
_MAX_EVAL_LOGITS = 1 << 26


# ---- data -------------------------------------------------------------------------------------------------------

@dataclass
class CodeData(DataCfg):
    """``data.*`` of ``causal_lm``: the shared keys (``name`` of `SOURCES`, ``root``, limits in windows,
    ``eval_split`` val | test) and these."""

    seq_len: int = DEFAULT_SEQ_LEN             # tokens per window
    vocab_size: Optional[int] = None           # BPE size to train (null: DEFAULT_VOCAB_SIZE, or data.tokenizer's)
    tokenizer: Optional[str] = None            # load this tokenizer.json (or a run folder's) instead of training
    tokenizer_files: Optional[int] = None      # train the tokenizer on the first N training files (null: all)
    languages: Optional[List[str]] = None      # keep files of these languages only (null: all supported)
    augment: bool = True                       # a random window offset per epoch
    positions: str = "contiguous"              # contiguous | pose | randomized (training windows' position ids)
    target_len: Optional[int] = None           # pose / randomized: the length whose positions are sampled
    packing: str = "stream"                    # stream | packed (per-file masks) | padded (one file piece per row)
    cache: bool = True                         # cache tokenized corpora under $ZOO_HOME
    resume_mutable = DataCfg.resume_mutable | {"cache"}      # a resumed run may switch the cache

    @classmethod
    def check(cls, d) -> None:
        super().check(d)
        check_at_least(d, 1, "seq_len", "vocab_size", "tokenizer_files")
        check_at_least(d, 1, "target_len")
        check_position_mode(d.positions, d.seq_len, d.target_len)
        if d.packing not in PACKINGS:
            raise ConfigError(f"invalid value for config key 'data.packing': {d.packing!r} (one of "
                              f"{', '.join(PACKINGS)})")
        if d.positions != "contiguous" and d.packing != "stream":
            raise ConfigError(f"data.positions={d.positions} samples positions for windows of the stream; use it "
                              f"with data.packing=stream (got {d.packing})")
        if d.eval_split not in ("val", "test"):
            raise ConfigError(f"invalid value for config key 'data.eval_split': {d.eval_split!r} (code splits by "
                              f"content hash into {', '.join(SPLITS)}; evaluate on val or test)")


def open_source_tree(name: str, root: Optional[str] = None, languages: Optional[List[str]] = None):
    """The ``SourceTree`` named by ``data.name`` / ``data.root`` / ``data.languages``; clear errors naming the key."""
    from domains.code.data import SourceTree, cpython_stdlib, go_stdlib

    if name not in SOURCES:
        raise ConfigError(f"unknown code dataset data.name={name!r}; known: "
                          + ", ".join(f"{k} ({v})" for k, v in SOURCES.items()))
    langs = list(languages) if languages is not None else None
    try:
        if name == "source_tree":
            if root is None:
                raise ConfigError("data.name=source_tree needs data.root=<folder with source files>")
            tree = SourceTree(Path(root).expanduser(), languages=langs, name=Path(root).name)
        else:
            loader = cpython_stdlib if name == "cpython_stdlib" else go_stdlib
            tree = loader(root)
            if langs is not None and not set(tree.languages) & {lang.lower() for lang in langs}:
                raise ConfigError(f"data.languages={langs} selects nothing from {name} "
                                  f"(its language: {', '.join(tree.languages)})")
    except NotADirectoryError:
        raise DatasetNotFoundError(f"data.root={root!r} is not a directory (data.name={name})") from None
    except ValueError as e:
        if isinstance(e, ConfigError):
            raise
        raise ConfigError(f"data.languages={langs}: {e}") from None
    if len(tree) == 0:
        c = tree.counts()
        skipped = {k[8:]: v for k, v in c.items() if k.startswith("skipped:")}
        raise ConfigError(f"data.root {tree.root} holds no usable source files in {', '.join(tree.languages)} "
                          f"(other files: {c['other_files']}, skipped: {skipped or 'none'})")
    return tree


def get_tokenizer(d, train_files, resume_dir: Optional[Path] = None, progress: bool = False):
    """The tokenizer for ``data`` config ``d``: the run folder's copy on resume, else ``d.tokenizer``, else a BPE of
    ``d.vocab_size`` trained on the training files (the first ``d.tokenizer_files`` in content-hash order)."""
    from domains.code.tokenizer import TOKENIZER_FILE, CodeTokenizer, train_bpe

    if resume_dir is not None and (Path(resume_dir) / TOKENIZER_FILE).is_file():
        return CodeTokenizer.load(Path(resume_dir) / TOKENIZER_FILE)
    if resume_dir is not None:
        warnings.warn(f"resuming without {Path(resume_dir) / TOKENIZER_FILE}: deriving the tokenizer again")
    if d.tokenizer is not None:
        try:
            tok = CodeTokenizer.load(Path(d.tokenizer).expanduser())
        except FileNotFoundError as e:
            raise ConfigError(f"data.tokenizer: {e}") from None
        except ValueError as e:
            raise ConfigError(f"data.tokenizer={d.tokenizer!r}: {e}") from None
        if d.vocab_size is not None and d.vocab_size != tok.vocab_size:
            raise ConfigError(f"data.vocab_size={d.vocab_size} but the tokenizer {d.tokenizer} has "
                              f"{tok.vocab_size} tokens; drop data.vocab_size or train a new tokenizer")
        return tok
    files = sorted(train_files, key=lambda f: f.sha256)          # a spread-out, stable subset
    if d.tokenizer_files is not None:
        files = files[:d.tokenizer_files]
    vocab = d.vocab_size or DEFAULT_VOCAB_SIZE
    try:
        return train_bpe([f.path for f in files], vocab_size=vocab, show_progress=progress)
    except ValueError as e:
        raise ConfigError(f"data.vocab_size={vocab}: {e}") from None


def stream_tensors(corpus) -> Dict[str, Tensor]:
    """A ``TokenizedCorpus`` as the int tensors windows are cut from (``docs``: each token's file index)."""
    offsets = corpus.file_offsets.long()
    docs = torch.repeat_interleave(torch.arange(offsets.numel() - 1, dtype=torch.int32), offsets.diff())
    return {"tokens": corpus.tokens, "levels": corpus.levels, "segments": corpus.segments, "docs": docs}


def _windows_at(stream: Dict[str, Tensor], idx: Tensor, ids: Tensor, packed: bool = False,
                mask: Optional[Tensor] = None) -> Dict[str, Any]:
    """The batch of the source tokens ``idx`` ``[b, n + 1]`` (inputs: the first ``n``, labels: the last ``n``) with
    position ids ``ids`` ``[b, n]``; ``packed``: per-file ``doc_ids``, ids restarting per file, labels in another
    file ignored; ``mask`` ``[b, n]``: real tokens (padding's labels ignored)."""
    tokens = stream["tokens"]
    t = tokens[idx].long()                                                     # [b, n+1]
    levels = stream["levels"][idx[:, :-1]].long()                              # [b, n, 5]
    segments = stream["segments"][idx[:, :-1]].long()                          # [b, n]
    b, n = ids.shape
    labels = t[:, 1:]
    doc_ids = None
    if packed:
        docs = stream["docs"][idx].long()                                      # [b, n+1]
        doc_ids = docs[:, :-1] - docs[:, :1]
        ids = Positions.packed(doc_ids).ids
        labels = labels.masked_fill(docs[:, 1:] != docs[:, :-1], IGNORE_INDEX)   # the next file's first token
    if mask is not None:
        labels = labels.masked_fill(~mask, IGNORE_INDEX)
    pos = Positions(ids=ids, levels=levels - levels[:, :1], segments=segments - segments[:, :1],
                    mask=torch.ones(b, n, dtype=torch.bool, device=tokens.device) if mask is None else mask,
                    causal=True, doc_ids=doc_ids)
    return {"input_ids": t[:, :-1], "labels": labels, "positions": pos}


def gather_windows(stream: Dict[str, Tensor], starts: Tensor, seq_len: int, packed: bool = False) -> Dict[str, Any]:
    """Windows of ``seq_len`` tokens starting at ``starts`` ``[b]``: the batch ``collate_windows`` would build from
    ``CodeWindows`` items, gathered in one indexing op (on the stream's device)::

        input_ids [b, n]   labels [b, n]   positions: ids [b, n], levels [b, n, 5], segments [b, n], mask, causal
    """
    tokens = stream["tokens"]
    starts = starts.to(tokens.device, torch.long)
    if starts.numel() and int(starts.max()) + seq_len + 1 > tokens.shape[0]:
        raise ValueError(f"window at {int(starts.max())} + {seq_len} + 1 runs past the stream of {tokens.shape[0]} "
                         f"tokens")
    idx = starts[:, None] + torch.arange(seq_len + 1, device=tokens.device)   # [b, n+1]
    b = starts.shape[0]
    return _windows_at(stream, idx, torch.arange(seq_len, device=tokens.device).expand(b, seq_len), packed)


def pose_windows(stream: Dict[str, Tensor], starts: Tensor, seq_len: int, target_len: int,
                 generator: torch.Generator) -> Dict[str, Any]:
    """PoSE windows (`zoo.position_sampling.pose_window`) from the stream positions ``starts`` ``[b]``: the source
    of a window is the ``min(5 n, what remains)`` tokens from its start (the official code cuts documents at
    ``5 n``)."""
    tokens = stream["tokens"]
    total = tokens.shape[0]
    rows, ids = [], []
    for s in starts.tolist():
        span = min(5 * seq_len, total - 1 - s)
        text, pos = pose_window(seq_len, span, target_len, generator)
        rows.append(text + s)
        ids.append(pos)
    idx = torch.stack(rows).to(tokens.device)
    return _windows_at(stream, idx, torch.stack(ids).to(tokens.device))


def padded_pieces(stream: Dict[str, Tensor], seq_len: int) -> Tensor:
    """``[P, 2]`` (start, length) of every piece of every file: files cut into runs of at most ``seq_len`` inputs
    whose labels stay in the file (a file of ``m`` tokens gives ``m - 1`` predictions)."""
    docs = stream["docs"].long()
    offsets = torch.cat([torch.zeros(1, dtype=torch.long), torch.nonzero(docs.diff()).flatten() + 1,
                         torch.tensor([docs.numel()])])
    out = []
    for a, e in zip(offsets[:-1].tolist(), offsets[1:].tolist()):
        for s in range(a, e - 1, seq_len):
            out.append((s, min(seq_len, e - 1 - s)))
    return torch.tensor(out, dtype=torch.long).reshape(-1, 2)


def padded_windows(stream: Dict[str, Tensor], pieces: Tensor, seq_len: int) -> Dict[str, Any]:
    """One piece per row (`padded_pieces` rows ``[b, 2]``), padded to ``seq_len`` (mask False, labels ignored)."""
    tokens = stream["tokens"]
    ar = torch.arange(seq_len + 1)
    length = pieces[:, 1:2]                                                    # [b, 1]
    idx = pieces[:, :1] + ar[None, :].minimum(length)                          # [b, n+1], past the end: repeats
    mask = (ar[None, :seq_len] < length).to(tokens.device)                    # [b, n]
    b = pieces.shape[0]
    return _windows_at(stream, idx.to(tokens.device), torch.arange(seq_len, device=tokens.device).expand(b, seq_len),
                       mask=mask)


def _labels(batch: Dict[str, Any], pad_id: Optional[int]) -> Tensor:
    labels = batch["labels"]
    return labels.masked_fill(labels == pad_id, IGNORE_INDEX) if pad_id is not None else labels


@torch.no_grad()
def lm_metrics(model: nn.Module, stream: Dict[str, Tensor], seq_len: int, num_windows: Optional[int] = None,
               batch_size: int = 8, pad_id: Optional[int] = None, autocast=None) -> Dict[str, float]:
    """Next-token loss, perplexity and token accuracy over the first ``num_windows`` non-overlapping windows of
    ``seq_len`` tokens (all that fit when None), in eval mode; ``autocast`` a context factory or None."""
    from contextlib import nullcontext

    available = (stream["tokens"].shape[0] - 1) // seq_len
    if available < 1:
        raise ValueError(f"the stream has {stream['tokens'].shape[0]} tokens, fewer than one window of "
                         f"{seq_len} + 1")
    count = available if num_windows is None else min(int(num_windows), available)
    model.eval()
    total = torch.zeros((), dtype=torch.float64, device=stream["tokens"].device)
    correct = torch.zeros((), dtype=torch.long, device=total.device)
    tokens = 0
    ctx = autocast or nullcontext
    for i in range(0, count, batch_size):
        starts = torch.arange(i, min(i + batch_size, count)) * seq_len
        batch = gather_windows(stream, starts, seq_len)
        with ctx():
            logits = model(batch["input_ids"], batch["positions"])
        logits = logits.float().flatten(0, 1)                                  # [b*n, vocab]
        labels = _labels(batch, pad_id).flatten()
        total += F.cross_entropy(logits, labels, ignore_index=IGNORE_INDEX, reduction="sum").double()
        keep = labels != IGNORE_INDEX
        correct += (logits.argmax(-1)[keep] == labels[keep]).sum()
        tokens += int(keep.sum())
    loss = total.item() / max(tokens, 1)
    return {"loss": loss, "perplexity": math.exp(min(loss, 700.0)), "token_accuracy": correct.item() / max(tokens, 1),
            "tokens": float(tokens)}


# ---- the task ---------------------------------------------------------------------------------------------------

@register_task("causal_lm")
class CausalLMTask(Task):
    """Next-token cross-entropy (padding ignored, ``train.label_smoothing`` applied in training) for decoder LMs
    ``model(input_ids [b, n], positions) -> logits [b, n, vocab]``; eval loss, perplexity and token accuracy."""

    main_metric = "loss"
    main_mode = "min"
    data_schema = CodeData

    def __init__(self) -> None:
        self.cfg = None
        self.tokenizer = None
        self.train_stream = self.eval_stream = None

    def build_data(self, cfg) -> Tuple[Dict[str, Tensor], Dict[str, Tensor]]:
        from domains.code.data import tokenize_files

        self.cfg = cfg
        d, progress = cfg.data, bool(cfg.train.progress)
        self.seq_len = int(d.seq_len)
        self.tree = open_source_tree(d.name, d.root, d.languages)
        train_files, eval_files = self.tree.split("train"), self.tree.split(d.eval_split)
        for split, files in (("train", train_files), (d.eval_split, eval_files)):
            if not files:
                raise ConfigError(f"{self.tree.name} ({self.tree.root}) has no files in the {split!r} split "
                                  f"({len(self.tree)} files in all; splits are by content hash, 90/5/5): "
                                  f"point data.root at a larger tree")
        self.tokenizer = get_tokenizer(d, train_files, self.resume_dir, progress)
        cache = True if d.cache else None
        corpora = {}
        for split, files in (("train", train_files), (d.eval_split, eval_files)):
            corpora[split] = tokenize_files(files, self.tokenizer, progress=progress, cache_dir=cache)
        self.train_stream = stream_tensors(corpora["train"])
        self.eval_stream = stream_tensors(corpora[d.eval_split])
        n = self.seq_len
        # training windows that fit for every offset o in [0, n): o + (W-1)*n + n + 1 <= T
        total = len(corpora["train"])
        self.num_windows = (total - 2 * n) // n + 1 if total >= 2 * n else 0
        if self.num_windows < 1:
            raise ConfigError(f"data.seq_len={n} is too long for the training split of {self.tree.name}: "
                              f"{total} tokens in {corpora['train'].num_files} files, fewer than 2 * seq_len")
        self.packing, self.positions, self.target_len = d.packing, d.positions, d.target_len
        if d.packing == "padded":
            self.pieces = padded_pieces(self.train_stream, n)
            self.num_windows = int(self.pieces.shape[0])
        if d.train_limit is not None:
            self.num_windows = min(self.num_windows, d.train_limit)
        eval_total = len(corpora[d.eval_split])
        self.eval_windows = (eval_total - 1) // n
        if self.eval_windows < 1:
            raise ConfigError(f"data.seq_len={n} is too long for the {d.eval_split!r} split of {self.tree.name}: "
                              f"{eval_total} tokens, fewer than seq_len + 1")
        if d.eval_limit is not None:
            self.eval_windows = min(self.eval_windows, d.eval_limit)
        self.split_files = {"train": corpora["train"].num_files, d.eval_split: corpora[d.eval_split].num_files}
        self.split_tokens = {"train": total, d.eval_split: eval_total}
        return self.train_stream, self.eval_stream

    def model_kwargs(self, cfg) -> Dict[str, Any]:
        kwargs = {"vocab_size": self.tokenizer.vocab_size, "max_seq_len": self.target_len or self.seq_len}
        kwargs.update(dict(cfg.model.kwargs))
        if kwargs["vocab_size"] < self.tokenizer.vocab_size:
            raise ConfigError(f"model.kwargs.vocab_size={kwargs['vocab_size']} is smaller than the tokenizer's "
                              f"{self.tokenizer.vocab_size} tokens; drop it (the data fills it in)")
        if kwargs["max_seq_len"] < self.seq_len and not kwargs.get("allow_longer", False):
            raise ConfigError(f"data.seq_len={self.seq_len} exceeds model.kwargs.max_seq_len={kwargs['max_seq_len']}"
                              f"; lower data.seq_len, raise max_seq_len, or set model.kwargs.allow_longer=true")
        return kwargs

    def to(self, device: torch.device) -> "CausalLMTask":
        self.train_stream = {k: v.to(device) for k, v in self.train_stream.items()}
        self.eval_stream = {k: v.to(device) for k, v in self.eval_stream.items()}
        return self

    def num_train_samples(self) -> int:
        return self.num_windows

    def num_train_batches(self) -> int:
        return max(1, self.num_windows // self.cfg.train.batch_size)

    def train_batches(self, epoch: int, generator: torch.Generator, start: int = 0) -> Iterator[Dict[str, Any]]:
        n, bs, nb = self.seq_len, self.cfg.train.batch_size, self.num_train_batches()
        offset = int(torch.randint(0, n, (1,), generator=generator))
        if not self.cfg.data.augment or self.packing == "padded":
            offset = 0
        perm = torch.randperm(self.num_windows, generator=generator)
        base = None if self.positions == "contiguous" else int(torch.randint(0, 2 ** 62, (1,), generator=generator))
        for i in range(start, nb):
            rows = perm[i * bs:(i + 1) * bs]
            if self.packing == "padded":
                yield padded_windows(self.train_stream, self.pieces[rows], n)
                continue
            starts = offset + rows * n
            if self.positions == "contiguous":
                yield gather_windows(self.train_stream, starts, n, packed=self.packing == "packed")
                continue
            g = torch.Generator().manual_seed(base + i)                       # batch i: a function of (seed, i)
            if self.positions == "pose":
                yield pose_windows(self.train_stream, starts, n, self.target_len, g)
            else:
                batch = gather_windows(self.train_stream, starts, n)
                batch["positions"].ids = randomized_ids(len(starts), n, self.target_len, g).to(
                    batch["input_ids"].device)
                yield batch

    def loss(self, model: nn.Module, batch: Dict[str, Any]) -> Tuple[Tensor, int]:
        logits = model(batch["input_ids"], batch["positions"])                 # [b, n, vocab]
        labels = _labels(batch, self.tokenizer.pad_id).flatten()
        losses = F.cross_entropy(logits.float().flatten(0, 1), labels, ignore_index=IGNORE_INDEX, reduction="none",
                                 label_smoothing=float(self.cfg.train.label_smoothing))
        return token_mean(losses, labels != IGNORE_INDEX)                     # over the predicted tokens

    @torch.no_grad()
    def evaluate(self, model: nn.Module, batch_size: int = 512) -> Dict[str, float]:
        vocab = getattr(model, "vocab_size", self.tokenizer.vocab_size)
        bs = max(1, min(batch_size, _MAX_EVAL_LOGITS // (self.seq_len * vocab)))
        m = lm_metrics(model, self.eval_stream, self.seq_len, self.eval_windows, bs, self.tokenizer.pad_id)
        m.pop("tokens")
        return m

    def save_artifacts(self, run_dir: Path) -> List[str]:
        return [self.tokenizer.save(run_dir).name]

    def describe(self) -> Dict[str, Any]:
        d = self.cfg.data
        return {"dataset": self.tree.name, "root": str(self.tree.root), "fingerprint": self.tree.fingerprint,
                "languages": list(self.tree.languages), "seq_len": self.seq_len,
                "vocab_size": self.tokenizer.vocab_size, "tokenizer": self.tokenizer.fingerprint[:16],
                "files": self.split_files, "tokens": self.split_tokens, "train_windows": self.num_windows,
                "eval_windows": self.eval_windows, "eval_split": d.eval_split, "augment": bool(d.augment),
                "positions": d.positions, "target_len": d.target_len, "packing": d.packing}


# ---- a trained run back as model + tokenizer --------------------------------------------------------------------

def load_run(run_dir: Union[str, Path], device: Union[str, torch.device] = "cpu", allow_longer: bool = False,
             overrides: Optional[dict] = None):
    """``(model, tokenizer)`` of a finished ``causal_lm`` run folder (``summary.json``, ``model.safetensors``,
    ``tokenizer.json``); the model is in eval mode and knows its tokenizer's newline tokens (for ``generate``).
    ``overrides``: builder keywords replacing the run's (e.g. ``pe=`` / ``attention=`` of a training-free context
    extension, `zoo.extend`); the trained weights must still load."""
    import zoo
    from domains.code.tokenizer import TOKENIZER_FILE, CodeTokenizer

    run_dir = Path(run_dir)
    name, kwargs, weights = read_run(run_dir, "causal_lm",
                                     [(run_dir / TOKENIZER_FILE, "the tokenizer the model was trained with")])
    tokenizer = CodeTokenizer.load(run_dir / TOKENIZER_FILE)
    if kwargs.get("vocab_size", tokenizer.vocab_size) < tokenizer.vocab_size:
        raise CheckpointError(f"{run_dir}: {TOKENIZER_FILE} has {tokenizer.vocab_size} tokens but the model only "
                              f"{kwargs['vocab_size']}: the tokenizer does not belong to these weights")
    if overrides:
        from zoo.extend import merge_overrides
        kwargs = merge_overrides(kwargs, overrides)
    model = zoo.create(name, pretrained_file=str(weights), **kwargs)
    if allow_longer and hasattr(model, "allow_longer"):
        model.allow_longer = True
    if getattr(model, "newline_counts", 0) is None:
        from domains.code.models import newline_counts_from_tokenizer, newline_table
        model.newline_counts = newline_table(newline_counts_from_tokenizer(tokenizer), model.vocab_size)
    return model.to(device).eval(), tokenizer
