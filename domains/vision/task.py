"""Image classification for the fine-tune engine (``task: image_classification``).

The dataset is held in memory as two tensors (``dataset.tensors()``: normalised images ``[N,C,H,W]``, labels
``[N]``), moved once to the training device; batches are slices of them, augmented in one batched call. That keeps
the 2-core CPU busy with the model rather than with Python collation.

Exact resume: an epoch's order and every batch's augmentation come from the epoch generator the engine seeds from
``(seed, epoch)``. The generator first draws the permutation, then one seed per micro-batch; micro-batch ``i``
augments with its own generator seeded from that seed, so starting at micro-batch ``k`` reproduces the batches an
uninterrupted epoch would have produced from ``k`` on.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Dict, Iterator, Tuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from zoo.errors import ConfigError
from zoo.finetune.config import DataCfg
from zoo.finetune.tasks import Task, register_task

from .data import DATASETS, _canonical_name, build_dataset, random_crop_flip

__all__ = ["ImageClassificationTask", "ImageData", "augment_settings"]


@dataclass
class ImageData(DataCfg):
    """``data.*`` of image classification: the shared keys (``name`` of `domains.vision.data.DATASETS`, ``root``,
    limits, ``eval_split`` among the dataset's splits) and these."""

    download: bool = False                     # fetch the dataset into data.root when it is not there
    augment: bool = True                       # random crop + flip in training (`augment_settings`)
    resume_mutable = DataCfg.resume_mutable | {"download"}   # a resumed run may switch the download


def augment_settings(dataset: str, img_size: int) -> Dict[str, Any]:
    """Crop padding and flip probability used when ``data.augment`` is on.

    Padding is ~1/14 of the side (2 px at 28, 16 at 224); digits are not mirror-symmetric, so no flip there."""
    padding = max(1, round(img_size / 14))
    return {"padding": padding, "p_flip": 0.0 if dataset == "digits" else 0.5}


@register_task("image_classification")
class ImageClassificationTask(Task):
    """Cross-entropy (with ``train.label_smoothing``) on logits ``[B, num_classes]``; accuracy on the eval split."""

    main_metric = "accuracy"
    main_mode = "max"
    data_schema = ImageData

    def __init__(self) -> None:
        self.cfg = None
        self.classes = []
        self.mean_std = None
        self.train_x = self.train_y = self.eval_x = self.eval_y = None

    # ---- data -------------------------------------------------------------------------------------------------
    def build_data(self, cfg) -> Tuple[Tuple[Tensor, Tensor], Tuple[Tensor, Tensor]]:
        self.cfg = cfg
        d, kw = cfg.data, cfg.model.kwargs
        try:
            name = _canonical_name(d.name)
        except ValueError as e:
            raise ConfigError(f"data.name: {e}") from None
        splits = DATASETS[name].get("splits")
        if splits is not None and d.eval_split not in splits:
            raise ConfigError(f"invalid value for config key 'data.eval_split': {d.eval_split!r} "
                              f"({name} has splits {', '.join(splits)})")
        common = dict(root=d.root, download=d.download, img_size=kw.get("img_size"), in_chans=kw.get("in_chans"))
        train = build_dataset(name, "train", limit=d.train_limit, **common)
        evald = build_dataset(name, d.eval_split, limit=d.eval_limit, **common)
        self.dataset_name = name
        self.classes = list(train.classes)
        self.train_x, self.train_y = train.tensors()
        self.eval_x, self.eval_y = evald.tensors()
        if len(self.train_y) == 0:
            raise ConfigError(f"data.train_limit={d.train_limit} leaves no training samples")
        if len(self.eval_y) == 0:
            raise ConfigError(f"data.eval_limit={d.eval_limit} leaves no evaluation samples")
        side = self.train_x.shape[-1]
        self.augment = augment_settings(name, side) if d.augment else None
        # what the model sees: pixels in [0, 1], standardised when the dataset normalises (timm's mean / std)
        chans = int(self.train_x.shape[1])
        norm = bool(getattr(train, "normalize", False))
        self.mean_std = (((float(train.mean),) * chans, (float(train.std),) * chans) if norm else
                         ((0.0,) * chans, (1.0,) * chans)) if hasattr(train, "normalize") else None
        return (self.train_x, self.train_y), (self.eval_x, self.eval_y)

    def model_kwargs(self, cfg) -> Dict[str, Any]:
        h, w = self.train_x.shape[-2:]
        kwargs = {"num_classes": len(self.classes), "in_chans": int(self.train_x.shape[1]),
                  "img_size": int(h) if h == w else (int(h), int(w))}
        kwargs.update(dict(cfg.model.kwargs))
        labels_max = int(max(self.train_y.max(), self.eval_y.max()))
        if kwargs["num_classes"] is not None and 0 < kwargs["num_classes"] <= labels_max:
            raise ConfigError(f"model.kwargs.num_classes={kwargs['num_classes']} but {cfg.data.name} has labels "
                              f"up to {labels_max} ({len(self.classes)} classes)")
        return kwargs

    def to(self, device: torch.device) -> "ImageClassificationTask":
        self.train_x, self.train_y = self.train_x.to(device), self.train_y.to(device)
        self.eval_x, self.eval_y = self.eval_x.to(device), self.eval_y.to(device)
        return self

    def num_train_samples(self) -> int:
        return int(self.train_y.shape[0])

    def num_train_batches(self) -> int:
        # drop the last incomplete batch (a different one each epoch); a set smaller than a batch is one batch
        n, bs = self.num_train_samples(), self.cfg.train.batch_size
        return max(1, n // bs)

    def train_batches(self, epoch: int, generator: torch.Generator, start: int = 0
                      ) -> Iterator[Tuple[Tensor, Tensor]]:
        n, bs, nb = self.num_train_samples(), self.cfg.train.batch_size, self.num_train_batches()
        perm = torch.randperm(n, generator=generator)
        seeds = torch.randint(0, 2 ** 62, (nb,), generator=generator)   # one augmentation stream per batch
        perm = perm.to(self.train_x.device)
        for i in range(start, nb):
            idx = perm[i * bs:(i + 1) * bs]
            x, y = self.train_x[idx], self.train_y[idx]
            if self.augment is not None:
                g = torch.Generator().manual_seed(int(seeds[i]))
                x = random_crop_flip(x, generator=g, **self.augment)
            yield x, y

    # ---- loss and metrics -------------------------------------------------------------------------------------
    def loss(self, model: nn.Module, batch: Tuple[Tensor, Tensor]) -> Tuple[Tensor, int]:
        x, y = batch
        logits = model(x)
        loss = F.cross_entropy(logits.float(), y, label_smoothing=float(self.cfg.train.label_smoothing))
        return loss, int(y.shape[0])

    @torch.no_grad()
    def evaluate(self, model: nn.Module, batch_size: int = 512) -> Dict[str, float]:
        return self.eval_metrics(self.eval_sums(model, batch_size, 0, 1))

    @torch.no_grad()
    def eval_sums(self, model: nn.Module, batch_size: int, rank: int, world_size: int) -> Dict[str, Tensor]:
        from zoo.finetune.distributed import rank_slice

        model.eval()
        lo, hi = rank_slice(int(self.eval_y.shape[0]), rank, world_size)
        correct = torch.zeros((), dtype=torch.long, device=self.eval_y.device)
        total_loss = torch.zeros((), dtype=torch.float64, device=self.eval_y.device)
        for i in range(lo, hi, batch_size):
            x, y = self.eval_x[i:min(i + batch_size, hi)], self.eval_y[i:min(i + batch_size, hi)]
            logits = model(x).float()
            total_loss += F.cross_entropy(logits, y, reduction="sum").double()
            correct += (logits.argmax(-1) == y).sum()
        return {"correct": correct, "loss_sum": total_loss, "count": torch.tensor(hi - lo, device=correct.device)}

    def eval_metrics(self, sums: Dict[str, Tensor]) -> Dict[str, float]:
        n = max(int(sums["count"]), 1)
        return {"accuracy": int(sums["correct"]) / n, "loss": float(sums["loss_sum"]) / n}

    def describe(self) -> Dict[str, Any]:
        return {"dataset": self.dataset_name, "train_samples": self.num_train_samples(),
                "eval_samples": int(self.eval_y.shape[0]), "eval_split": self.cfg.data.eval_split,
                "classes": len(self.classes), "input": list(self.train_x.shape[1:]),
                "augment": self.augment,
                **({"mean": list(self.mean_std[0]), "std": list(self.mean_std[1])} if self.mean_std else {})}
