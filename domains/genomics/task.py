"""Genomics tasks for the fine-tune engine: sequence classification, masked-LM and causal-LM pretraining.

    sequence_classification   splice_junctions (EI / IE / N), 16s_rrna (taxonomy rank, top-N classes),
                              ecoli_promoters; "<cls>" + tokens, cross-entropy; accuracy, macro-F1, loss
    masked_lm                 16S (or any dataset's sequences) cut into windows; BERT masking (data.mask_prob);
                              loss, perplexity, masked_accuracy (over the masked tokens)
    dna_lm                    the same windows, next-token cross-entropy for decoders (dna_lm_*); loss,
                              perplexity, token_accuracy

Data config (``data.*``): `GenomicsData` (every task), `ClassificationData`, `WindowData` (dna_lm) and
`MaskedLMData` state the keys, their defaults and their ranges; ``train_limit`` / ``eval_limit`` count sequences for
classification, windows for LM tasks.

Splits: `stratified_split` by label, fractions 0.8 / 0.1 / 0.1, seed 0 (fixed: the split does not move with
``train.seed``).  LM windows are cut inside the sequences of one split, so no sequence is in two splits.  Limits
take the first N of a fixed (seed 0) permutation of a split, so a limited set still holds every class.

Exact resume: an epoch's order is ``randperm`` from the engine's epoch generator, followed by one seed per
micro-batch (MLM masks are drawn from the micro-batch's own generator), so starting at micro-batch ``k`` gives the
batches an uninterrupted epoch would give from ``k`` on.  Evaluation masks are fixed (seed 0).  The tokenizer is
saved with the weights (``dna_tokenizer.json``, `save_artifacts`; classification also writes ``classes.json``) and
read back from the run folder on ``--resume``.
"""
from __future__ import annotations

import json
import math
from abc import abstractmethod
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, Iterator, List, Optional, Tuple

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from zoo.errors import ConfigError
from zoo.finetune.config import DataCfg, check_at_least, check_one_of, invalid_value
from zoo.finetune.tasks import Task, register_task, token_mean
from zoo.position_sampling import check_position_mode, pose_window, randomized_ids
from zoo.positions import Positions

from .models import dna_positions

__all__ = ["SequenceClassificationTask", "MaskedLMTask", "DNACausalLMTask", "GenomicsData", "ClassificationData",
           "WindowData", "MaskedLMData", "TOKENIZER_KINDS", "build_tokenizer",
           "window_bases", "macro_f1", "IGNORE_INDEX"]

TOKENIZER_KINDS = ("nucleotide", "kmer", "codon")
SPLIT_FRACTIONS = (0.8, 0.1, 0.1)
DEFAULT_LM_SEQ_LEN = 256
IGNORE_INDEX = -100


# ---- data config ----------------------------------------------------------------------------------------------

@dataclass
class GenomicsData(DataCfg):
    """``data.*`` of every genomics task: the shared keys (``name`` of `domains.genomics.data.DATASETS`, ``root``: a
    copy of the dataset file, limits, ``eval_split`` val | test) and these."""

    tokenizer_kind: str = "nucleotide"         # nucleotide | kmer | codon
    k: int = 6                                 # k-mer size (kmer tokenizer; k-mers do not overlap)
    tokenizer: Optional[str] = None            # load a saved dna_tokenizer.json (or a run folder's) instead
    label_rank: str = "phylum"                 # 16S: the taxonomy rank used as the label
    top_n: int = 5                             # 16S: keep the N most frequent classes of that rank, drop the rest

    @classmethod
    def check(cls, d) -> None:
        super().check(d)
        check_one_of(d, "tokenizer_kind", TOKENIZER_KINDS)
        if not 2 <= d.k <= 8:
            raise invalid_value("data.k", d.k, "k-mer size, 2..8")
        check_at_least(d, 2, "top_n")
        check_one_of(d, "eval_split", ("val", "test"))


@dataclass
class ClassificationData(GenomicsData):
    seq_len: Optional[int] = None              # tokens kept per sequence, longer ones truncated (null: all)

    @classmethod
    def check(cls, d) -> None:
        super().check(d)
        check_at_least(d, 1, "seq_len")


@dataclass
class WindowData(GenomicsData):
    seq_len: int = DEFAULT_LM_SEQ_LEN          # tokens per window

    @classmethod
    def check(cls, d) -> None:
        super().check(d)
        check_at_least(d, 1, "seq_len")


@dataclass
class DNALMData(WindowData):
    """``data.*`` of ``dna_lm``: `WindowData` plus the long-context options (`zoo.position_sampling`)."""

    positions: str = "contiguous"              # contiguous | pose | randomized (training windows' position ids)
    target_len: Optional[int] = None           # pose / randomized: the length whose positions are sampled
    packing: str = "records"                   # records (windows inside a record) | packed (across records, masked)

    @classmethod
    def check(cls, d) -> None:
        super().check(d)
        check_at_least(d, 1, "target_len")
        check_position_mode(d.positions, d.seq_len, d.target_len)
        check_one_of(d, "packing", ("records", "packed"))
        if d.positions != "contiguous" and d.packing != "records":
            raise ConfigError(f"data.positions={d.positions} samples positions inside one record; use it with "
                              f"data.packing=records (got {d.packing})")
        if (d.positions == "pose" or d.packing == "packed") and d.tokenizer is None \
                and d.tokenizer_kind != "nucleotide":
            raise ConfigError(f"data.positions=pose and data.packing=packed cut windows at any base: they need "
                              f"data.tokenizer_kind=nucleotide (one token per base), got {d.tokenizer_kind}")


@dataclass
class MaskedLMData(WindowData):
    mask_prob: float = 0.15                    # BERT masking probability (`domains.genomics.data.mlm_mask`)

    @classmethod
    def check(cls, d) -> None:
        super().check(d)
        if not 0.0 < d.mask_prob < 1.0:
            raise invalid_value("data.mask_prob", d.mask_prob, "must be in (0, 1)")


# ---- shared pieces --------------------------------------------------------------------------------------------

def build_tokenizer(d, resume_dir: Optional[Path] = None):
    """The tokenizer named by data config ``d`` (the run folder's copy on resume)."""
    from .tokenizers import TOKENIZER_FILE, DNATokenizer, codon_tokenizer, kmer_tokenizer, nucleotide_tokenizer

    if resume_dir is not None and (Path(resume_dir) / TOKENIZER_FILE).is_file():
        return DNATokenizer.load(Path(resume_dir) / TOKENIZER_FILE)
    if d.tokenizer is not None:
        try:
            return DNATokenizer.load(Path(d.tokenizer).expanduser())
        except (FileNotFoundError, ValueError) as e:
            raise ConfigError(f"data.tokenizer={d.tokenizer!r}: {e}") from None
    if d.tokenizer_kind == "nucleotide":
        return nucleotide_tokenizer()
    if d.tokenizer_kind == "codon":
        return codon_tokenizer()
    return kmer_tokenizer(d.k, overlapping=False)


def _load(d):
    from .data import DATASETS, load_16s

    if d.name not in DATASETS:
        raise ConfigError(f"unknown genomics dataset data.name={d.name!r}; known: {', '.join(DATASETS)}")
    try:
        if d.name == "16s_rrna":
            return load_16s(d.root, rank=d.label_rank, top_n=d.top_n)
        return DATASETS[d.name](d.root)
    except ValueError as e:
        if isinstance(e, ConfigError):
            raise
        raise ConfigError(f"data ({d.name}): {e}") from None


def _split(d, labels) -> Tuple[np.ndarray, np.ndarray]:
    from .data import stratified_split

    parts = stratified_split(labels, SPLIT_FRACTIONS, seed=0)
    return parts["train"], parts[d.eval_split]


def _limit(n: int, limit: Optional[int]) -> np.ndarray:
    """Indices ``0..n-1``: all in order, or the first ``limit`` of a fixed permutation (sorted back)."""
    if limit is None or limit >= n:
        return np.arange(n)
    return np.sort(np.random.default_rng(0).permutation(n)[:limit])


def _positions(model: nn.Module, ids: Tensor, spans: Tensor, mask: Optional[Tensor]):
    if mask is not None and bool(mask.all()):
        mask = None                                  # nothing to hide: keep the attention's fused path
    if hasattr(model, "positions"):
        return model.positions(ids, spans, mask)
    return dna_positions(ids, spans, mask, causal=bool(getattr(model, "causal", False)))


def macro_f1(pred: Tensor, target: Tensor, num_classes: int) -> float:
    """Unweighted mean over classes of F1 (a class absent from both pred and target counts as 0 and is left out)."""
    idx = target * num_classes + pred
    conf = torch.bincount(idx, minlength=num_classes ** 2).reshape(num_classes, num_classes).double()
    tp = conf.diag()
    support, predicted = conf.sum(1), conf.sum(0)
    present = (support + predicted) > 0
    f1 = 2 * tp / (support + predicted).clamp_min(1)
    return float(f1[present].mean()) if bool(present.any()) else 0.0


class _GenomicsTask(Task):
    """Tokenizer handling shared by the three tasks."""

    def __init__(self) -> None:
        self.cfg = None
        self.tokenizer = None

    def save_artifacts(self, run_dir: Path) -> List[str]:
        return [self.tokenizer.save(run_dir).name]

    def _check_width(self, kwargs: Dict[str, Any], width: int) -> Dict[str, Any]:
        if kwargs["vocab_size"] < self.tokenizer.vocab_size:
            raise ConfigError(f"model.kwargs.vocab_size={kwargs['vocab_size']} is smaller than the tokenizer's "
                              f"{self.tokenizer.vocab_size} ids; drop it (the data fills it in)")
        if kwargs["max_seq_len"] < width and not kwargs.get("allow_longer", False):
            raise ConfigError(f"the data has {width} tokens per sequence but model.kwargs.max_seq_len="
                              f"{kwargs['max_seq_len']}; lower data.seq_len or set model.kwargs.allow_longer=true")
        return kwargs


# ---- sequence classification ------------------------------------------------------------------------------------

@register_task("sequence_classification")
class SequenceClassificationTask(_GenomicsTask):
    """Cross-entropy on class logits ``model(input_ids, positions) -> [b, num_classes]``; the model pools its
    ``<cls>`` token (encoders) or last token (decoders)."""

    main_metric = "accuracy"
    main_mode = "max"
    data_schema = ClassificationData

    def build_data(self, cfg):
        from .data import classification_tensors

        self.cfg, d = cfg, cfg.data
        data = _load(d)
        self.dataset_name, self.classes = d.name, list(data.classes)
        train_idx, eval_idx = _split(d, data.labels)
        train_idx = train_idx[_limit(len(train_idx), d.train_limit)]
        eval_idx = eval_idx[_limit(len(eval_idx), d.eval_limit)]
        self.tokenizer = build_tokenizer(d, self.resume_dir)
        self.tensors = {}
        for split, idx in (("train", train_idx), ("eval", eval_idx)):
            if len(idx) == 0:
                raise ConfigError(f"{d.name}: no {split} sequences (data.{split}_limit / the split is empty)")
            t = classification_tensors(data, self.tokenizer, idx, max_length=d.seq_len,
                                       truncation=d.seq_len is not None)
            self.tensors[split] = {k: t[k] for k in ("input_ids", "spans", "mask", "labels")}
        return self.tensors["train"], self.tensors["eval"]

    def model_kwargs(self, cfg) -> Dict[str, Any]:
        width = max(int(t["input_ids"].shape[1]) for t in self.tensors.values())
        kwargs = {"vocab_size": self.tokenizer.vocab_size, "num_classes": len(self.classes),
                  "max_seq_len": max(width, 64)}
        kwargs.update(dict(cfg.model.kwargs))
        if kwargs["num_classes"] != len(self.classes):
            raise ConfigError(f"model.kwargs.num_classes={kwargs['num_classes']} but {self.dataset_name} has "
                              f"{len(self.classes)} classes ({', '.join(self.classes)})")
        return self._check_width(kwargs, width)

    def to(self, device):
        self.tensors = {s: {k: v.to(device) for k, v in t.items()} for s, t in self.tensors.items()}
        return self

    def num_train_samples(self) -> int:
        return int(self.tensors["train"]["labels"].shape[0])

    def num_train_batches(self) -> int:
        return max(1, self.num_train_samples() // self.cfg.train.batch_size)

    @staticmethod
    def _batch(t: Dict[str, Tensor], idx: Tensor) -> Dict[str, Tensor]:
        b = {k: v[idx] for k, v in t.items()}
        width = int(b["mask"].sum(1).max())                   # trim the padding no row of the batch uses
        return {k: (v[:, :width] if v.ndim > 1 else v) for k, v in b.items()}

    def train_batches(self, epoch: int, generator: torch.Generator, start: int = 0) -> Iterator[Dict[str, Tensor]]:
        bs, nb, t = self.cfg.train.batch_size, self.num_train_batches(), self.tensors["train"]
        perm = torch.randperm(self.num_train_samples(), generator=generator).to(t["labels"].device)
        for i in range(start, nb):
            yield self._batch(t, perm[i * bs:(i + 1) * bs])

    def _logits(self, model: nn.Module, b: Dict[str, Tensor]) -> Tensor:
        logits = model(b["input_ids"], _positions(model, b["input_ids"], b["spans"], b["mask"]))
        if logits.ndim != 2 or logits.shape[-1] != len(self.classes):
            raise ConfigError(f"sequence_classification needs class logits [b, {len(self.classes)}], the model "
                              f"returned {tuple(logits.shape)}: build it with num_classes={len(self.classes)}")
        return logits.float()

    def loss(self, model: nn.Module, batch: Dict[str, Tensor]) -> Tuple[Tensor, int]:
        loss = F.cross_entropy(self._logits(model, batch), batch["labels"],
                               label_smoothing=float(self.cfg.train.label_smoothing))
        return loss, int(batch["labels"].shape[0])

    @torch.no_grad()
    def evaluate(self, model: nn.Module, batch_size: int = 512) -> Dict[str, float]:
        model.eval()
        t = self.tensors["eval"]
        n = int(t["labels"].shape[0])
        total = torch.zeros((), dtype=torch.float64, device=t["labels"].device)
        preds = []
        for i in range(0, n, batch_size):
            b = self._batch(t, torch.arange(i, min(i + batch_size, n), device=t["labels"].device))
            logits = self._logits(model, b)
            total += F.cross_entropy(logits, b["labels"], reduction="sum").double()
            preds.append(logits.argmax(-1))
        pred = torch.cat(preds)
        return {"accuracy": (pred == t["labels"]).double().mean().item(),
                "macro_f1": macro_f1(pred, t["labels"], len(self.classes)), "loss": total.item() / n}

    def save_artifacts(self, run_dir: Path) -> List[str]:
        from zoo.io import atomic_write_text
        names = super().save_artifacts(run_dir)
        atomic_write_text(Path(run_dir) / "classes.json", json.dumps(self.classes) + "\n")
        return names + ["classes.json"]

    def describe(self) -> Dict[str, Any]:
        counts = torch.bincount(self.tensors["train"]["labels"].cpu(), minlength=len(self.classes)).tolist()
        return {"dataset": self.dataset_name, "classes": self.classes, "train_class_counts": counts,
                "train_samples": self.num_train_samples(), "eval_samples": int(self.tensors["eval"]["labels"].numel()),
                "eval_split": self.cfg.data.eval_split, "tokenizer": self.tokenizer.kind,
                "seq_len": int(self.tensors["train"]["input_ids"].shape[1])}


# ---- language modelling on windows ------------------------------------------------------------------------------

def window_bases(tokenizer, tokens: int) -> int:
    """Bases ``W`` whose window tokenizes to exactly ``tokens`` tokens (no specials): ``frame`` leading single bases
    plus ``tokens - frame`` k-mers ``stride`` apart."""
    m = tokens - tokenizer.frame
    if m < 1:
        raise ConfigError(f"data.seq_len leaves {tokens} tokens per window, too few for {tokenizer.kind}")
    w = tokenizer.frame + (m - 1) * tokenizer.stride + tokenizer.k
    assert tokenizer.num_tokens(w) == tokens, (tokenizer, tokens, w)
    return w


class _WindowTask(_GenomicsTask):
    data_schema = WindowData
    prefix: Tuple[str, ...] = ()
    extra: int = 0                   # tokens beyond the model input per window (the causal LM's last label)
    causal: bool = False

    def build_data(self, cfg):
        from .data import lm_windows

        self.cfg = cfg
        d = cfg.data
        data = _load(d)
        self.dataset_name = d.name
        train_idx, eval_idx = _split(d, data.labels)
        self.tokenizer = build_tokenizer(d, self.resume_dir)
        self.seq_len = int(d.seq_len)
        self.window = window_bases(self.tokenizer, self.seq_len + self.extra - len(self.prefix))
        self.spans = torch.from_numpy(self.tokenizer.encode("A" * self.window, self.prefix).spans)  # [L, 2]
        self.ids = {}
        for split, idx, limit in (("train", train_idx, d.train_limit), ("eval", eval_idx, d.eval_limit)):
            ids = lm_windows([data.seqs[i] for i in idx], self.tokenizer, self.window, prefix=self.prefix)["input_ids"]
            if ids.shape[0] == 0:
                raise ConfigError(f"{d.name}: no {split} sequence holds a window of {self.window} bases "
                                  f"(data.seq_len={self.seq_len}); lower data.seq_len")
            self.ids[split] = ids[torch.from_numpy(_limit(ids.shape[0], limit))]
        self.mask_prob = float(d.get("mask_prob", 0.0))          # masked_lm only
        self.eval_inputs = self._eval_inputs()
        return self.ids["train"], self.ids["eval"]

    def _eval_inputs(self) -> Dict[str, Tensor]:
        return self._make_batch(self.ids["eval"], 0)                             # a fixed mask stream (seed 0)

    def model_kwargs(self, cfg) -> Dict[str, Any]:
        kwargs = {"vocab_size": self.tokenizer.vocab_size, "max_seq_len": self.seq_len}
        kwargs.update(dict(cfg.model.kwargs))
        return self._check_width(kwargs, self.seq_len)

    def to(self, device):
        self.device = torch.device(device)
        self.eval_inputs = {k: v.to(device) for k, v in self.eval_inputs.items()}
        self.spans = self.spans.to(device)
        return self

    def num_train_samples(self) -> int:
        return int(self.ids["train"].shape[0])

    def num_train_batches(self) -> int:
        return max(1, self.num_train_samples() // self.cfg.train.batch_size)

    def train_batches(self, epoch: int, generator: torch.Generator, start: int = 0) -> Iterator[Dict[str, Tensor]]:
        bs, nb = self.cfg.train.batch_size, self.num_train_batches()
        perm = torch.randperm(self.num_train_samples(), generator=generator)
        seeds = torch.randint(0, 2 ** 62, (nb,), generator=generator)            # one mask stream per batch
        for i in range(start, nb):
            ids = self.ids["train"][perm[i * bs:(i + 1) * bs]]
            b = self._make_batch(ids, int(seeds[i]))
            yield {k: v.to(getattr(self, "device", "cpu")) for k, v in b.items()}

    @abstractmethod
    def _make_batch(self, ids: Tensor, seed: int) -> Dict[str, Tensor]:
        """Model inputs and targets for the windows ``ids``; ``seed`` drives any masking."""

    def _check_model(self, model: nn.Module) -> None:
        causal = getattr(model, "causal", None)
        if causal is not None and bool(causal) != self.causal:
            want = "a decoder (dna_lm_*)" if self.causal else "an encoder (dna_*)"
            raise ConfigError(f"task {self.name} needs {want}; model.name={self.cfg.model.name} is "
                              f"{'a decoder' if causal else 'an encoder'}")

    def _token_loss(self, model: nn.Module, inputs: Tensor, targets: Tensor, smoothing: float = 0.0):
        self._check_model(model)
        spans = self.spans[: inputs.shape[1]]
        logits = model(inputs, _positions(model, inputs, spans, None))           # [b, n, vocab]
        if logits.ndim != 3:
            raise ConfigError(f"task {self.name} needs token logits [b, n, vocab], the model returned "
                              f"{tuple(logits.shape)}: build it with num_classes=0")
        logits = logits.float().flatten(0, 1)
        flat = targets.flatten()
        losses = F.cross_entropy(logits, flat, ignore_index=IGNORE_INDEX, reduction="none", label_smoothing=smoothing)
        return losses, logits, flat

    def loss(self, model: nn.Module, batch: Dict[str, Tensor]) -> Tuple[Tensor, Tensor]:
        losses, _, flat = self._token_loss(model, batch["inputs"], batch["targets"],
                                           float(self.cfg.train.label_smoothing))
        return token_mean(losses, flat != IGNORE_INDEX)                          # over the predicted tokens

    @torch.no_grad()
    def evaluate(self, model: nn.Module, batch_size: int = 512) -> Dict[str, float]:
        model.eval()
        inputs, targets = self.eval_inputs["inputs"], self.eval_inputs["targets"]
        total = torch.zeros((), dtype=torch.float64, device=inputs.device)
        correct = torch.zeros((), dtype=torch.long, device=inputs.device)
        count = 0
        for i in range(0, inputs.shape[0], batch_size):
            _, logits, flat = self._token_loss(model, inputs[i:i + batch_size], targets[i:i + batch_size])
            keep = flat != IGNORE_INDEX
            total += F.cross_entropy(logits[keep], flat[keep], reduction="sum").double()
            correct += (logits[keep].argmax(-1) == flat[keep]).sum()
            count += int(keep.sum())
        loss = total.item() / max(count, 1)
        return {"loss": loss, "perplexity": math.exp(min(loss, 700.0)), self.accuracy_key: correct.item() / max(count, 1)}

    def describe(self) -> Dict[str, Any]:
        return {"dataset": self.dataset_name, "tokenizer": self.tokenizer.kind, "seq_len": self.seq_len,
                "window_bases": self.window, "train_windows": self.num_train_samples(),
                "eval_windows": int(self.eval_inputs["inputs"].shape[0]), "eval_split": self.cfg.data.eval_split}


@register_task("masked_lm")
class MaskedLMTask(_WindowTask):
    """BERT-style masked-token cross-entropy for encoders (``dna_*`` with ``num_classes=0``) on ``<cls>`` + a window
    of bases; `domains.genomics.data.mlm_mask` with ``data.mask_prob``."""

    main_metric = "loss"
    main_mode = "min"
    data_schema = MaskedLMData
    prefix = ("<cls>",)
    accuracy_key = "masked_accuracy"

    def _make_batch(self, ids: Tensor, seed: int) -> Dict[str, Tensor]:
        from .data import mlm_mask
        inputs, targets = mlm_mask(ids, self.tokenizer, self.mask_prob, seed=seed)
        return {"inputs": inputs, "targets": targets}


@register_task("dna_lm")
class DNACausalLMTask(_WindowTask):
    """Next-token cross-entropy for decoders (``dna_lm_*``): a window of ``seq_len + 1`` tokens gives inputs
    ``[:-1]`` and labels ``[1:]``.

    Long context (``data.*``, `zoo.position_sampling`): ``positions=pose`` (PoSE, the official recipe inside one
    record: the window's second chunk of bases comes from up to ``5 n`` bases on and its position ids are shifted by a
    skip drawn from ``target_len``) or ``randomized`` (sorted distinct ids from ``0 .. target_len - 1``);
    ``packing=packed`` cuts the windows from all training records joined, each token carrying its record as
    ``Positions.doc_ids`` (attention stays inside a record, ids restart, a label in the next record is ignored).
    Both read the records base by base (nucleotide tokenizer).  Evaluation keeps the plain windows."""

    main_metric = "loss"
    main_mode = "min"
    extra = 1
    causal = True
    accuracy_key = "token_accuracy"
    data_schema = DNALMData

    def build_data(self, cfg):
        out = super().build_data(cfg)
        d = cfg.data
        self.positions, self.target_len, self.packing = d.positions, d.target_len, d.packing
        if self.positions == "pose" or self.packing == "packed":
            self._build_stream(d)
        return out

    def _build_stream(self, d) -> None:
        """The training records as one token stream (``tokens``, ``docs`` [T]) and the window starts: inside each
        record (pose: as the plain windows, ``seq_len + 1`` tokens apart) or across records (packed)."""
        if self.tokenizer.kind != "nucleotide":
            raise ConfigError(f"data.positions=pose / data.packing=packed need the nucleotide tokenizer, the data "
                              f"uses {self.tokenizer.kind}")
        data = _load(d)
        train_idx, _ = _split(d, data.labels)
        toks, docs, starts = [], [], []
        offset, n = 0, self.seq_len
        for r, i in enumerate(train_idx):
            ids = torch.from_numpy(np.asarray(self.tokenizer.encode(data.seqs[i]).ids)).long()
            toks.append(ids)
            docs.append(torch.full((ids.numel(),), r, dtype=torch.long))
            if self.packing == "records":
                starts += [offset + s for s in range(0, ids.numel() - n, n + 1)]   # the plain windows' starts
            offset += ids.numel()
        docs = torch.cat(docs)
        bounds = torch.cumsum(torch.tensor([0] + [t.numel() for t in toks]), 0)   # [R + 1] record offsets
        self.stream = {"tokens": torch.cat(toks), "docs": docs, "ends": bounds[1:][docs]}   # ends: per token
        if self.packing == "packed":
            starts = list(range(0, offset - n - 1, n))
        self.starts = torch.tensor(starts, dtype=torch.long)
        if d.train_limit is not None:
            self.starts = self.starts[torch.from_numpy(_limit(self.starts.numel(), d.train_limit))]
        if self.starts.numel() == 0:
            raise ConfigError(f"{d.name}: no training window of {n} + 1 bases (data.seq_len={n})")

    def num_train_samples(self) -> int:
        if getattr(self, "starts", None) is not None:
            return int(self.starts.numel())
        return super().num_train_samples()

    def model_kwargs(self, cfg) -> Dict[str, Any]:
        kwargs = super().model_kwargs(cfg)
        if self.target_len and "max_seq_len" not in dict(cfg.model.kwargs):
            kwargs["max_seq_len"] = self.target_len
        return kwargs

    def train_batches(self, epoch: int, generator: torch.Generator, start: int = 0) -> Iterator[Dict[str, Tensor]]:
        if self.positions == "contiguous" and self.packing == "records":
            yield from super().train_batches(epoch, generator, start)            # the plain windows, as before
            return
        bs, nb, n = self.cfg.train.batch_size, self.num_train_batches(), self.seq_len
        dev = getattr(self, "device", "cpu")
        if getattr(self, "starts", None) is None:                                # randomized ids, plain windows
            perm = torch.randperm(self.num_train_samples(), generator=generator)
            base = int(torch.randint(0, 2 ** 62, (1,), generator=generator))
            for i in range(start, nb):
                ids = self.ids["train"][perm[i * bs:(i + 1) * bs]]
                g = torch.Generator().manual_seed(base + i)
                b = {"inputs": ids[:, :-1], "targets": ids[:, 1:],
                     "ids": randomized_ids(ids.shape[0], n, self.target_len, g)}
                yield {k: v.to(dev) for k, v in b.items()}
            return
        perm = torch.randperm(self.num_train_samples(), generator=generator)
        base = int(torch.randint(0, 2 ** 62, (1,), generator=generator)) if self.positions != "contiguous" else 0
        tokens, docs, ends = self.stream["tokens"], self.stream["docs"], self.stream["ends"]
        for i in range(start, nb):
            starts = self.starts[perm[i * bs:(i + 1) * bs]]
            if self.positions == "pose":
                g = torch.Generator().manual_seed(base + i)
                rows, pos = [], []
                for s in starts.tolist():
                    end = int(ends[s])                                           # the record's end (exclusive)
                    text, p = pose_window(n, min(5 * n, end - 1 - s), self.target_len, g)
                    rows.append(text + s)
                    pos.append(p)
                idx = torch.stack(rows)
                b = {"inputs": tokens[idx[:, :-1]], "targets": tokens[idx[:, 1:]], "ids": torch.stack(pos)}
            else:                                                                # packed
                idx = starts[:, None] + torch.arange(n + 1)
                t, r = tokens[idx], docs[idx]
                doc_ids = r[:, :-1] - r[:, :1]
                b = {"inputs": t[:, :-1], "targets": t[:, 1:].masked_fill(r[:, 1:] != r[:, :-1], IGNORE_INDEX),
                     "ids": Positions.packed(doc_ids).ids, "doc_ids": doc_ids}
            yield {k: v.to(dev) for k, v in b.items()}

    def loss(self, model: nn.Module, batch: Dict[str, Tensor]) -> Tuple[Tensor, int]:
        if "ids" not in batch:
            return super().loss(model, batch)
        self._check_model(model)
        inputs = batch["inputs"]
        pos = _positions(model, inputs, self.spans[: inputs.shape[1]], None)
        pos.ids = batch["ids"]
        if "doc_ids" in batch:
            pos.doc_ids = batch["doc_ids"]
            seg = getattr(model, "segment_bases", None)
            if pos.segments is not None and seg:                                 # BiPE: segments restart too
                pos.segments = torch.div(batch["ids"], seg, rounding_mode="floor")
        logits = model(inputs, pos)
        targets = batch["targets"].flatten()
        losses = F.cross_entropy(logits.float().flatten(0, 1), targets, ignore_index=IGNORE_INDEX, reduction="none",
                                 label_smoothing=float(self.cfg.train.label_smoothing))
        return token_mean(losses, targets != IGNORE_INDEX)

    def describe(self) -> Dict[str, Any]:
        return {**super().describe(), "positions": self.positions, "target_len": self.target_len,
                "packing": self.packing}

    def _make_batch(self, ids: Tensor, seed: int) -> Dict[str, Tensor]:
        return {"inputs": ids[:, :-1], "targets": ids[:, 1:]}
