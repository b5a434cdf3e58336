"""Long-context options of the dna_lm task on a toy FASTA: PoSE windows inside one record (the official recipe),
randomized positions, records packed with masks (a packed window's loss is the sum of its records' losses)."""
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

import domains.genomics.models  # noqa: F401  (registers the dna_* models)
import domains.genomics.task as T
from zoo import Positions
from zoo.errors import ConfigError
from zoo.finetune.config import build_config
from zoo.finetune.engine import _epoch_generator, finetune

TAX = {"Xphylum": "Bacteria; Xphylum; C; O; F; G", "Yphylum": "Bacteria; Yphylum; C; O; F; G"}


@pytest.fixture
def fasta(tmp_path):
    """Records of 100..299 bases in two phyla (enough for several 32-base windows each)."""
    rng = np.random.default_rng(0)
    lines = []
    for i in range(30):
        for name in TAX:
            seq = "".join(rng.choice(list("ACGT"), int(rng.integers(100, 300))))
            lines += [f">{name}_{i} toy\t{TAX[name]}", seq]
    path = tmp_path / "toy.fasta"
    path.write_text("\n".join(lines) + "\n")
    return path


def cfg(tmp_path, root, **data):
    c = {"task": "dna_lm", "model": {"name": "dna_lm_rope_tiny", "kwargs": {"depth": 1, "dim": 32, "num_heads": 2}},
         "data": {"name": "16s_rrna", "root": str(root), "eval_split": "val", "seq_len": 32, **data},
         "optim": {"lr": 2e-3, "warmup_steps": 0},
         "train": {"steps": 3, "batch_size": 8, "progress": False, "log_every": 1, "eval_batch_size": 64,
                   "num_threads": 1},
         "output": {"dir": str(tmp_path / "run")}}
    return build_config(c)


def built(tmp_path, root, **data):
    task = T.DNACausalLMTask()
    task.build_data(cfg(tmp_path, root, **data))
    return task


def test_pose_windows_stay_in_their_record_and_follow_the_recipe(tmp_path, fasta):
    task = built(tmp_path, fasta, positions="pose", target_len=256)
    docs, ends, tokens = task.stream["docs"], task.stream["ends"], task.stream["tokens"]
    batches = list(task.train_batches(0, _epoch_generator(1, 0)))
    again = list(task.train_batches(0, _epoch_generator(1, 0), start=1))
    assert all(torch.equal(a["ids"], b["ids"]) for a, b in zip(batches[1:], again))   # resume: the same batches
    for b in batches:
        ids = b["ids"]
        assert ids.shape == (8, 32) and (ids.diff(dim=-1) >= 1).all() and ids.max() <= 255
        # inputs and targets are the next tokens of the joined text (the first chunk's last predicts the second's)
        assert torch.equal(b["inputs"][:, 1:], b["targets"][:, :-1])
    # every window's text lies inside one record: find it in the stream
    b = batches[0]
    for row in range(8):
        jump = int(torch.nonzero(b["ids"][row].diff() != 1).flatten()[0]) + 1 if (b["ids"][row].diff() != 1).any() \
            else 32
        start = int(torch.nonzero((tokens.unfold(0, jump, 1) == b["inputs"][row, :jump]).all(-1)).flatten()[0])
        assert int(ends[start]) - start >= 33 and len(set(docs[start:start + jump].tolist())) == 1


def test_randomized_ids_replace_the_window_positions(tmp_path, fasta):
    task = built(tmp_path, fasta, positions="randomized", target_len=128)
    b = next(iter(task.train_batches(0, _epoch_generator(1, 0))))
    assert (b["ids"].diff(dim=-1) > 0).all() and b["ids"].max() <= 127
    assert task.model_kwargs(cfg(tmp_path, fasta, positions="randomized", target_len=128))["max_seq_len"] == 128


def test_packed_window_loss_is_the_sum_of_its_records_losses(tmp_path, fasta):
    task = built(tmp_path, fasta, packing="packed")
    tokens, docs = task.stream["tokens"], task.stream["docs"]
    first_end = int(task.stream["ends"][0])
    import zoo
    torch.manual_seed(0)
    model = zoo.create("dna_lm_rope_tiny", vocab_size=task.tokenizer.vocab_size, depth=1, dim=32, num_heads=2,
                       max_seq_len=64).eval()
    n, start = 32, first_end - 12                                              # 12 bases of record 0, 20 of record 1
    idx = start + torch.arange(n + 1)
    t, r = tokens[idx][None], docs[idx][None]
    doc_ids = r[:, :-1] - r[:, :1]
    batch = {"inputs": t[:, :-1], "targets": t[:, 1:].masked_fill(r[:, 1:] != r[:, :-1], -100),
             "ids": Positions.packed(doc_ids).ids, "doc_ids": doc_ids}
    task.cfg.train.label_smoothing = 0.0
    with torch.no_grad():
        packed, _ = task.loss(model, batch)
        packed = packed * int((batch["targets"] != -100).sum())
        alone = 0.0
        for a, e in ((0, 12), (12, n)):
            inp, tgt = t[:, a:e], t[:, a + 1:e + 1].clone()
            if e == 12:
                tgt[0, -1] = -100                                              # the next record's first base
            logits = model(inp, model.positions(inp))
            alone += F.cross_entropy(logits.flatten(0, 1), tgt.flatten(), ignore_index=-100, reduction="sum")
    assert packed.item() == pytest.approx(alone.item(), rel=1e-5)
    assert batch["ids"][0].tolist() == list(range(12)) + list(range(20))


@pytest.mark.parametrize("data", [{"positions": "pose", "target_len": 128}, {"positions": "randomized",
                                                                             "target_len": 96},
                                  {"packing": "packed"}])
def test_fine_tunes_with_each_mode(tmp_path, fasta, data):
    summary = finetune(cfg(tmp_path, fasta, **data))
    assert math.isfinite(summary["final"]["loss"]) and {k: summary["data"][k] for k in data} == data


@pytest.mark.parametrize("data, match", [
    ({"positions": "pose"}, "needs data.target_len"),
    ({"positions": "pose", "target_len": 64, "packing": "packed"}, "use it with data.packing=records"),
    ({"packing": "packed", "tokenizer_kind": "kmer"}, "need data.tokenizer_kind=nucleotide"),
    ({"packing": "pack"}, "packing"),
])
def test_bad_keys_are_named(tmp_path, fasta, data, match):
    with pytest.raises(ConfigError, match=match):
        cfg(tmp_path, fasta, **data)
