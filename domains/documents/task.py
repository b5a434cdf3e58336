"""Document tasks for the fine-tune engine: word labelling on R-manual pages, entity linking on the R manuals' link
pages and on FUNSD-format forms.

    word_labelling   data.name=r_manuals: every page's words (reading order) with boxes 0..1000 and a font label
                     (body / heading / code / math, `domains.documents.data.LABELS`), cut into windows of
                     ``data.seq_len`` words (default 256); per-word cross-entropy (padding ignored);
                     metrics over the eval words: accuracy, macro_f1 (main), f1_<label>, loss
    entity_linking   data.name=funsd: FUNSD annotation JSON (``data.root`` is required: FUNSD is not installable
                     here), or data.name=r_manual_links: the table-of-contents and index pages of the R manuals,
                     entry text (key) -> page number (value) from the PDFs' own link annotations
                     (`domains.documents.pdf_links`), cut into crops of whole lines of <= ``data.seq_len`` words
                     (`link_windows`); the first ``data.seq_len`` words of a form / crop (default 512); the
                     encoder's word features are pooled per entity and scored pairwise by the model's
                     `EntityLinkingHead` (built with ``link_dim``); binary cross-entropy over ordered entity pairs
                     i != j (forms without words are left out, counted as ``skipped["empty_form"]``);
                     metrics: link_f1 (main), link_precision, link_recall, loss

Models: any ``doc_*`` encoder taking ``(input_ids, pos=Positions(ids=reading order, boxes, mask))``. The data fills
``vocab_size``, ``num_classes`` (word labelling) or ``link_dim`` (entity linking, default 128) into the builder
kwargs, and ``pad_token_id=0`` for LayoutLMv3 (whose RoBERTa positions count non-pad tokens; our ``<unk>`` is 1).

Data config (``data.*``): `DocumentData` (both tasks), `WordLabellingData` and `EntityLinkingData` state the keys,
their defaults and their ranges; ``root`` is, for the R manuals, a folder of the PDFs (default Debian's r-doc-pdf) and
for FUNSD the dataset folder (`read_funsd_pages`); ``train_limit`` / ``eval_limit`` count pages / forms (the first N
of a fixed seed-0 permutation).

Splits: R manuals (both tasks) by page content hash (`domains.documents.data.split_of_page`, 90/5/5); FUNSD by
its own ``training_data`` / ``testing_data`` folders (val = a fixed 10% of training_data), or by file-name hash
(80/10/10) for a plain folder of annotations. The word vocabulary is built on the (limited) training pages, saved with the
weights (``word_vocab.json`` + ``labels.json``, `save_artifacts`) and read back from the run folder on ``--resume``.

Exact resume: an epoch's order is ``randperm`` from the engine's epoch generator; micro-batch ``i`` is the slice
``perm[i*bs:(i+1)*bs]`` (the last partial batch is dropped), so starting at ``k`` gives the batches an uninterrupted
epoch gives from ``k`` on. Nothing else is random in the data.
"""
from __future__ import annotations

import hashlib
import json
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, Iterator, List, Optional, Sequence, Tuple

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from zoo.errors import ConfigError, ZooError
from zoo.finetune.config import DataCfg, check_at_least, check_one_of, invalid_value
from zoo.finetune.tasks import Task, register_task, token_mean
from zoo.positions import Positions

__all__ = ["WordLabellingTask", "EntityLinkingTask", "DocumentData", "WordLabellingData", "EntityLinkingData",
           "VOCAB_FILE", "LABELS_FILE", "confusion_f1",
           "read_funsd_pages", "link_counts"]

VOCAB_FILE = "word_vocab.json"
LABELS_FILE = "labels.json"
IGNORE = -100
_LINK_DIM = 128                      # model.kwargs.link_dim of entity linking when the config sets none


@dataclass
class DocumentData(DataCfg):
    """``data.*`` of both document tasks: the shared keys (``eval_split`` val | test) and these."""

    manuals: Optional[List[str]] = None        # R manuals to use, e.g. [R-intro, R-exts] (null: all eight)
    vocab_size: int = 20_000                   # most words kept in the vocabulary built on the train split
    min_freq: int = 2                          # words seen fewer times in the train split map to <unk>
    tokenizer: Optional[str] = None            # a saved word_vocab.json (or a run folder holding one) instead
    cache: bool = True                         # R-manual page cache under $ZOO_HOME/documents
    resume_mutable = DataCfg.resume_mutable | {"cache"}      # a resumed run may switch the cache

    @classmethod
    def check(cls, d) -> None:
        super().check(d)
        check_one_of(d, "eval_split", ("val", "test"))
        check_at_least(d, 1, "min_freq", "seq_len")
        if d.vocab_size < 3:
            raise invalid_value("data.vocab_size", d.vocab_size, "must be >= 3: <pad>, <unk> and a word")


@dataclass
class WordLabellingData(DocumentData):
    seq_len: int = 256                         # words per window


@dataclass
class EntityLinkingData(DocumentData):
    seq_len: int = 512                         # words of a form / crop kept
    dangling_links: str = "error"              # FUNSD links to missing entities: error | drop

    @classmethod
    def check(cls, d) -> None:
        super().check(d)
        check_one_of(d, "dangling_links", ("error", "drop"))


def _limit(n: int, limit: Optional[int]) -> np.ndarray:
    """Indices ``0..n-1``: all, or the first ``limit`` of a fixed (seed 0) permutation, sorted back."""
    if limit is None or limit >= n:
        return np.arange(n)
    return np.sort(np.random.default_rng(0).permutation(n)[:limit])


def _choose_pages(by_split: Dict[str, list], d, eval_split: str, empty) -> Dict[str, list]:
    """``{"train": ..., "eval": ...}``: the train split and ``eval_split`` of ``by_split``, each cut to
    ``data.train_limit`` / ``data.eval_limit`` (`_limit`); an empty one is a ConfigError with ``empty(name, src)``."""
    chosen = {}
    for name, src, limit in (("train", "train", d.train_limit), ("eval", eval_split, d.eval_limit)):
        ps = by_split[src]
        chosen[name] = [ps[i] for i in _limit(len(ps), limit)]
        if not chosen[name]:
            raise ConfigError(empty(name, src))
    return chosen


def confusion_f1(conf: Tensor) -> Tuple[Tensor, Tensor]:
    """Per-class F1 from a confusion matrix ``[target, pred]`` and a mask of the classes present (in the targets
    or the predictions); macro-F1 is the mean over the present classes."""
    conf = conf.double()
    tp, support, predicted = conf.diag(), conf.sum(1), conf.sum(0)
    return 2 * tp / (support + predicted).clamp_min(1), (support + predicted) > 0


def _vocab(d, texts, resume_dir: Optional[Path]):
    """The word vocabulary: the run folder's copy on resume, ``data.tokenizer``, or built on ``texts``."""
    from .data import WordVocab

    if resume_dir is not None and (Path(resume_dir) / VOCAB_FILE).is_file():
        return WordVocab.load(Path(resume_dir) / VOCAB_FILE)
    if d.tokenizer is not None:
        path = Path(d.tokenizer).expanduser()
        path = path / VOCAB_FILE if path.is_dir() else path
        if not path.is_file():
            raise ConfigError(f"data.tokenizer={d.tokenizer!r}: no {path} (a {VOCAB_FILE} or a run folder)")
        try:
            return WordVocab.load(path)
        except ValueError as e:
            raise ConfigError(f"data.tokenizer={d.tokenizer!r}: {e}") from None
    return WordVocab.build(texts, min_freq=d.min_freq, max_size=d.vocab_size)


def _positions(ids: Tensor, boxes: Tensor, mask: Tensor) -> Positions:
    # all-real rows need no mask: keeps the attention on its fused path
    return Positions(ids=ids, boxes=boxes, mask=None if bool(mask.all()) else mask)


class _DocumentTask(Task):
    """Vocabulary, model kwargs and artifacts shared by the two tasks."""

    labels: Sequence[str] = ()

    def __init__(self) -> None:
        self.cfg = None
        self.vocab = None
        self.device = torch.device("cpu")

    def _base_kwargs(self, cfg) -> Dict[str, Any]:
        kwargs = {"vocab_size": len(self.vocab)}
        if cfg.model.name.split(".")[0].startswith("doc_layoutlmv3"):
            kwargs["pad_token_id"] = self.vocab.pad_id
        return kwargs

    def _check_vocab(self, kwargs: Dict[str, Any]) -> None:
        if kwargs["vocab_size"] < len(self.vocab):
            raise ConfigError(f"model.kwargs.vocab_size={kwargs['vocab_size']} is smaller than the word vocabulary "
                              f"({len(self.vocab)} words); drop it (the data fills it in)")

    def to(self, device):
        self.device = torch.device(device)
        return self

    def save_artifacts(self, run_dir: Path) -> List[str]:
        from zoo.io import atomic_write_text
        self.vocab.save(Path(run_dir) / VOCAB_FILE)
        atomic_write_text(Path(run_dir) / LABELS_FILE, json.dumps(list(self.labels)) + "\n")
        return [VOCAB_FILE, LABELS_FILE]

    def num_train_batches(self) -> int:
        return max(1, self.num_train_samples() // self.cfg.train.batch_size)

    def _order(self, generator: torch.Generator) -> Tensor:
        return torch.randperm(self.num_train_samples(), generator=generator)


# ---- word labelling -------------------------------------------------------------------------------------------

@register_task("word_labelling")
class WordLabellingTask(_DocumentTask):
    """Per-word font labels of R-manual pages: ``model(input_ids, pos=...) -> [b, n, 4]`` logits."""

    main_metric = "macro_f1"
    main_mode = "max"
    data_schema = WordLabellingData
    DATASETS = ("r_manuals",)

    def build_data(self, cfg):
        from .data import LABELS, SPLITS, WordLabelling, collate_words, r_manual_pages

        self.cfg, d = cfg, cfg.data
        self.labels = LABELS
        if d.name not in self.DATASETS:
            raise ConfigError(f"unknown dataset data.name={d.name!r} for task word_labelling; known: "
                              f"{', '.join(self.DATASETS)}")
        split, seq_len = d.eval_split, int(d.seq_len)
        try:
            pages = r_manual_pages(d.root, list(d.manuals) if d.manuals is not None else None,
                                   cache_dir=bool(d.cache), progress=bool(cfg.train.progress))
        except ZooError as e:                       # DatasetNotFoundError: names the folder and the fix
            raise ConfigError(f"data (r_manuals, data.root={d.root!r}, data.manuals="
                              f"{list(d.manuals) if d.manuals is not None else None}): {e}") from None
        by_split = {s: [p for p in pages if p.split == s] for s in SPLITS}
        chosen = _choose_pages(by_split, d, split, lambda name, src: (
            f"r_manuals: no {src} pages with words in {d.manuals or 'all manuals'} (data.manuals / "
            f"data.{name}_limit)"))
        self.pages = chosen
        self.vocab = _vocab(d, (t for p in chosen["train"] for t in p.texts), self.resume_dir)
        self.seq_len = seq_len
        self.tensors = {}
        for name, ps in chosen.items():
            ds = WordLabelling(ps, self.vocab, max_len=seq_len)
            b = collate_words([ds[i] for i in range(len(ds))])
            self.tensors[name] = {"input_ids": b["input_ids"], "boxes": b["boxes"], "labels": b["labels"],
                                  "mask": b["mask"], "ids": b["positions"].ids}
        return self.tensors["train"], self.tensors["eval"]

    def model_kwargs(self, cfg) -> Dict[str, Any]:
        kwargs = self._base_kwargs(cfg)
        kwargs["num_classes"] = len(self.labels)
        kwargs.update(dict(cfg.model.kwargs))
        self._check_vocab(kwargs)
        if kwargs["num_classes"] != len(self.labels):
            raise ConfigError(f"model.kwargs.num_classes={kwargs['num_classes']} but word_labelling has "
                              f"{len(self.labels)} labels ({', '.join(self.labels)})")
        return kwargs

    def to(self, device):
        super().to(device)
        self.tensors = {s: {k: v.to(device) for k, v in t.items()} for s, t in self.tensors.items()}
        return self

    def num_train_samples(self) -> int:
        return int(self.tensors["train"]["input_ids"].shape[0])

    @staticmethod
    def _batch(t: Dict[str, Tensor], idx: Tensor) -> Dict[str, Any]:
        b = {k: v[idx] for k, v in t.items()}
        width = int(b["mask"].sum(1).max())                          # trim the padding no row uses
        b = {k: v[:, :width] for k, v in b.items()}
        b["positions"] = _positions(b["ids"], b["boxes"], b["mask"])
        return b

    def train_batches(self, epoch: int, generator: torch.Generator, start: int = 0) -> Iterator[Dict[str, Any]]:
        bs, t = self.cfg.train.batch_size, self.tensors["train"]
        perm = self._order(generator).to(t["input_ids"].device)
        for i in range(start, self.num_train_batches()):
            yield self._batch(t, perm[i * bs:(i + 1) * bs])

    def _logits(self, model: nn.Module, b: Dict[str, Any]) -> Tensor:
        logits = model(b["input_ids"], pos=b["positions"])
        if logits.ndim != 3 or logits.shape[-1] != len(self.labels):
            raise ConfigError(f"word_labelling needs per-word logits [b, n, {len(self.labels)}], the model returned "
                              f"{tuple(logits.shape)}: build it with num_classes={len(self.labels)}")
        return logits.float()

    def loss(self, model: nn.Module, batch: Dict[str, Any]) -> Tuple[Tensor, int]:
        logits, labels = self._logits(model, batch), batch["labels"].flatten()
        losses = F.cross_entropy(logits.flatten(0, 1), labels, ignore_index=IGNORE, reduction="none",
                                 label_smoothing=float(self.cfg.train.label_smoothing))
        return token_mean(losses, labels != IGNORE)                              # over the labelled words

    @torch.no_grad()
    def evaluate(self, model: nn.Module, batch_size: int = 512) -> Dict[str, float]:
        model.eval()
        t, k = self.tensors["eval"], len(self.labels)
        n = int(t["input_ids"].shape[0])
        dev = t["input_ids"].device
        conf = torch.zeros(k * k, dtype=torch.long, device=dev)
        total = torch.zeros((), dtype=torch.float64, device=dev)
        for i in range(0, n, batch_size):
            b = self._batch(t, torch.arange(i, min(i + batch_size, n), device=dev))
            logits, target = self._logits(model, b).flatten(0, 1), b["labels"].flatten()
            keep = target != IGNORE
            total += F.cross_entropy(logits[keep], target[keep], reduction="sum").double()
            conf += torch.bincount(target[keep] * k + logits[keep].argmax(-1), minlength=k * k)
        conf = conf.reshape(k, k).cpu()
        words = int(conf.sum())
        f1, present = confusion_f1(conf)
        out = {"accuracy": float(conf.diag().sum()) / max(words, 1),
               "macro_f1": float(f1[present].mean()) if bool(present.any()) else 0.0,
               "loss": total.item() / max(words, 1)}
        out.update({f"f1_{lab}": float(f1[i]) for i, lab in enumerate(self.labels)})
        return out

    def describe(self) -> Dict[str, Any]:
        counts = {s: dict(Counter(self.labels[int(j)] for p in ps for j in p.labels)) for s, ps in self.pages.items()}
        return {"dataset": self.cfg.data.name, "manuals": sorted({p.source for p in self.pages["train"]}),
                "train_pages": len(self.pages["train"]), "eval_pages": len(self.pages["eval"]),
                "train_windows": self.num_train_samples(), "eval_windows": int(self.tensors["eval"]["mask"].shape[0]),
                "words_per_window": self.seq_len, "vocab_size": len(self.vocab), "label_counts": counts,
                "eval_split": self.cfg.data.eval_split}


# ---- entity linking ---------------------------------------------------------------------------------------------

def _hash_split(name: str, fractions=(0.8, 0.1, 0.1)) -> str:
    x = int(hashlib.sha256(name.encode("utf-8")).hexdigest()[:16], 16) / float(1 << 64)
    return "train" if x < fractions[0] else "val" if x < fractions[0] + fractions[1] else "test"


def read_funsd_pages(root, policy=None, skipped: Optional[Counter] = None) -> Dict[str, list]:
    """FUNSD pages of ``root`` by split. ``root`` is FUNSD's ``dataset`` folder (``training_data`` and
    ``testing_data``, each with ``annotations/*.json`` + ``images/``: train / test, val = the training forms whose
    file-name hash falls in a fixed 10%), or one folder in that layout (``annotations/`` + ``images/``: split by
    file-name hash 80/10/10)."""
    from .funsd import read_funsd_dir

    root = Path(root).expanduser()
    if not root.is_dir():
        raise ConfigError(f"data.root={str(root)!r}: no such folder (FUNSD is not installable here: download it "
                          f"from https://guillaumejaume.github.io/FUNSD/ and point data.root at its dataset/ folder)")
    kw = dict(policy=policy, skipped=skipped)
    if (root / "training_data").is_dir() and (root / "testing_data").is_dir():
        train = read_funsd_dir(root / "training_data", **kw)
        is_val = [_hash_split(Path(p.source).name, (0.9, 0.1, 0.0)) == "val" for p in train]
        return {"train": [p for p, v in zip(train, is_val) if not v], "val": [p for p, v in zip(train, is_val) if v],
                "test": read_funsd_dir(root / "testing_data", **kw)}
    pages = read_funsd_dir(root, **kw)
    out = {"train": [], "val": [], "test": []}
    for p in pages:
        out[_hash_split(Path(p.source).name)].append(p)
    return out


def link_counts(logits: Tensor, target: Tensor, valid: Tensor) -> Tuple[int, int, int]:
    """``(true positives, predicted, gold)`` links over the valid pairs (prediction: logit > 0)."""
    pred = (logits > 0) & valid
    gold = target & valid
    return int((pred & gold).sum()), int(pred.sum()), int(gold.sum())


def _r_manual_links(cfg, skipped: Counter) -> Dict[str, list]:
    """The R manuals' link pages by split (``data.root``, ``data.manuals``, ``data.cache``), cut into crops of at
    most ``data.seq_len`` words (`domains.documents.pdf_links.link_windows`)."""
    from .pdf_links import r_manual_link_pages

    d = cfg.data
    manuals = list(d.manuals) if d.manuals is not None else None
    try:
        return r_manual_link_pages(d.root, manuals, cache_dir=bool(d.cache), progress=bool(cfg.train.progress),
                                   skipped=skipped, max_words=int(d.seq_len))
    except ZooError as e:                           # DatasetNotFoundError / PdfError: names the folder or file
        raise ConfigError(f"data (r_manual_links, data.root={d.root!r}, data.manuals={manuals}): {e}") from None


@register_task("entity_linking")
class EntityLinkingTask(_DocumentTask):
    """Links between FUNSD entities: ``model.link_head(model(input_ids, pos=...), word_entity, entity_boxes)``
    -> ``[b, e, e]`` logits, binary cross-entropy over ordered pairs of distinct real entities."""

    main_metric = "link_f1"
    main_mode = "max"
    data_schema = EntityLinkingData
    DATASETS = ("funsd", "r_manual_links")
    labels = ("no_link", "link")

    def build_data(self, cfg):
        from .data import linking_example
        from .document import DocumentFormatError, LayoutPolicy

        self.cfg, d = cfg, cfg.data
        if d.name not in self.DATASETS:
            raise ConfigError(f"unknown dataset data.name={d.name!r} for task entity_linking; known: "
                              f"{', '.join(self.DATASETS)}")
        split = d.eval_split
        self.skipped = Counter()
        if d.name == "r_manual_links":
            by_split = _r_manual_links(cfg, self.skipped)
        else:
            if d.root is None:
                raise ConfigError("entity_linking needs data.root: the folder of your FUNSD copy (FUNSD is not "
                                  "installable here; https://guillaumejaume.github.io/FUNSD/)")
            try:
                by_split = read_funsd_pages(d.root, LayoutPolicy(dangling_link=d.dangling_links), self.skipped)
            except (DocumentFormatError, FileNotFoundError) as e:
                hint = "; set data.dangling_links=drop to drop such links" if "link" in str(e) else ""
                raise ConfigError(f"data.root={d.root!r}: {e}{hint}") from None
        for s, ps in by_split.items():               # a form without words has nothing to link
            kept = [p for p in ps if p.words]
            self.skipped["empty_form"] += len(ps) - len(kept)
            by_split[s] = kept
        chosen = _choose_pages(by_split, d, split, lambda name, src: (
            f"{d.name} ({d.root or 'default folder'}): no {src} pages (data.{name}_limit / the split is empty)"))
        self.pages = chosen
        self.seq_len = int(d.seq_len)
        self.vocab = _vocab(d, (w.text for p in chosen["train"] for w in p.words[:self.seq_len]), self.resume_dir)
        try:
            self.items = {s: [linking_example(p, self.vocab, max_len=self.seq_len) for p in ps]
                          for s, ps in chosen.items()}
        except DocumentFormatError as e:
            raise ConfigError(f"data.root={d.root!r}: {e}") from None
        return self.items["train"], self.items["eval"]

    def model_kwargs(self, cfg) -> Dict[str, Any]:
        kwargs = self._base_kwargs(cfg)
        kwargs["link_dim"] = _LINK_DIM
        kwargs.update(dict(cfg.model.kwargs))
        self._check_vocab(kwargs)
        if kwargs.get("num_classes"):
            raise ConfigError("entity_linking scores the encoder's features: drop model.kwargs.num_classes")
        if not kwargs.get("link_dim"):
            raise ConfigError("entity_linking needs the model's link head: model.kwargs.link_dim must be >= 1")
        return kwargs

    def num_train_samples(self) -> int:
        return len(self.items["train"])

    def _batch(self, items: List[dict]) -> Dict[str, Any]:
        from .data import collate_linking
        b = collate_linking(items)
        out = {k: b[k].to(self.device) for k in ("input_ids", "boxes", "mask", "word_entity", "entity_boxes",
                                                 "entity_mask", "link_matrix")}
        out["positions"] = _positions(b["positions"].ids.to(self.device), out["boxes"], out["mask"])
        em = out["entity_mask"]
        eye = torch.eye(em.shape[1], dtype=torch.bool, device=self.device)
        out["valid_pairs"] = em[:, :, None] & em[:, None, :] & ~eye                        # [b, e, e]
        return out

    def train_batches(self, epoch: int, generator: torch.Generator, start: int = 0) -> Iterator[Dict[str, Any]]:
        bs, items = self.cfg.train.batch_size, self.items["train"]
        perm = self._order(generator).tolist()
        for i in range(start, self.num_train_batches()):
            yield self._batch([items[j] for j in perm[i * bs:(i + 1) * bs]])

    def _logits(self, model: nn.Module, b: Dict[str, Any]) -> Tensor:
        head = getattr(model, "link_head", None)
        if head is None:
            raise ConfigError(f"entity_linking needs a model with a link head: {self.cfg.model.name} was built "
                              f"without one (model.kwargs.link_dim)")
        x = model(b["input_ids"], pos=b["positions"])
        if x.ndim != 3:
            raise ConfigError(f"entity_linking needs word features [b, n, c], the model returned {tuple(x.shape)}")
        return head(x, b["word_entity"], b["entity_boxes"]).float()

    def _pair_loss(self, logits: Tensor, b: Dict[str, Any], reduction: str = "mean") -> Tensor:
        valid = b["valid_pairs"]
        if not bool(valid.any()):
            return logits.sum() * 0.0
        return F.binary_cross_entropy_with_logits(logits[valid], b["link_matrix"][valid].float(), reduction=reduction)

    def loss(self, model: nn.Module, batch: Dict[str, Any]) -> Tuple[Tensor, Tensor]:
        logits, valid = self._logits(model, batch), batch["valid_pairs"]
        n = valid.sum()                                                          # over the entity pairs
        return self._pair_loss(logits, batch, reduction="sum") / n.clamp(min=1), n

    @torch.no_grad()
    def evaluate(self, model: nn.Module, batch_size: int = 512) -> Dict[str, float]:
        model.eval()
        items = self.items["eval"]
        tp = npred = ngold = pairs = 0
        total = 0.0
        for i in range(0, len(items), batch_size):
            b = self._batch(items[i:i + batch_size])
            logits = self._logits(model, b)
            total += float(self._pair_loss(logits, b, reduction="sum"))
            pairs += int(b["valid_pairs"].sum())
            t, p, g = link_counts(logits, b["link_matrix"], b["valid_pairs"])
            tp, npred, ngold = tp + t, npred + p, ngold + g
        prec, rec = tp / max(npred, 1), tp / max(ngold, 1)
        return {"link_f1": 2 * prec * rec / max(prec + rec, 1e-12), "link_precision": prec, "link_recall": rec,
                "loss": total / max(pairs, 1)}

    def describe(self) -> Dict[str, Any]:
        return {"dataset": self.cfg.data.name, "root": str(self.cfg.data.root),
                "train_forms": len(self.items["train"]), "eval_forms": len(self.items["eval"]),
                "train_links": sum(len(it["links"]) for it in self.items["train"]),
                "eval_links": sum(len(it["links"]) for it in self.items["eval"]),
                "words_per_form": self.seq_len, "vocab_size": len(self.vocab), "skipped": dict(self.skipped),
                "eval_split": self.cfg.data.eval_split}
