"""Genomics fine-tune tasks: toy separable data beats chance, metrics, artifacts, exact-resume batches, errors."""
import json
import math

import numpy as np
import pytest
import torch
from genomics_test_helpers import require

import domains.genomics.models  # noqa: F401  (registers the dna_* models)
import domains.genomics.task as T
from domains.genomics.data import SPLICE_PATH
from domains.genomics.tokenizers import DNATokenizer, codon_tokenizer, kmer_tokenizer, nucleotide_tokenizer
from zoo.errors import ConfigError
from zoo.finetune.config import build_config
from zoo.finetune.engine import finetune
from zoo.finetune.tasks import get_task

TAX = {"Xphylum": "Bacteria; Xphylum; C; O; F; G", "Yphylum": "Bacteria; Yphylum; C; O; F; G"}


def _toy_fasta(path, n=40, length=48, seed=0):
    """Two phyla that differ in base composition only (X: A/C, Y: G/T): trivially separable by an encoder."""
    rng = np.random.default_rng(seed)
    lines = []
    for i in range(n):
        for name, alphabet in (("Xphylum", "AC"), ("Yphylum", "GT")):
            seq = "".join(rng.choice(list(alphabet), length))
            lines += [f">{name}_{i} toy\t{TAX[name]}", seq]
    path.write_text("\n".join(lines) + "\n")
    return path


def _cfg(tmp_path, task, model, root, **over):
    cfg = {"task": task, "model": {"name": model, "kwargs": {"depth": 2}},
           "data": {"name": "16s_rrna", "root": None if root is None else str(root), "eval_split": "val"},
           "optim": {"lr": 2e-3, "warmup_steps": 2},
           "train": {"steps": 12, "batch_size": 16, "progress": False, "log_every": 4, "eval_batch_size": 64},
           "output": {"dir": str(tmp_path / "run")}}
    return build_config(cfg, [f"{k}={v}" for k, v in over.items()])


def test_tasks_registered():
    assert get_task("sequence_classification") is T.SequenceClassificationTask
    assert get_task("masked_lm") is T.MaskedLMTask and get_task("dna_lm") is T.DNACausalLMTask


def test_classification_beats_chance_on_separable_toy_set(tmp_path):
    root = _toy_fasta(tmp_path / "toy.fasta")
    s = finetune(_cfg(tmp_path, "sequence_classification", "dna_alibi_tiny", root))
    final = s["final"]
    assert set(final) == {"accuracy", "macro_f1", "loss"}
    assert 0.0 <= final["macro_f1"] <= 1.0 and final["loss"] >= 0
    assert final["accuracy"] >= 0.9, final                      # chance is 0.5
    assert s["data"]["classes"] == ["Xphylum", "Yphylum"] and s["model_kwargs"]["num_classes"] == 2
    run = tmp_path / "run"
    assert DNATokenizer.load(run) == nucleotide_tokenizer()
    assert json.loads((run / "classes.json").read_text()) == ["Xphylum", "Yphylum"]


def test_decoder_classifies_too(tmp_path):
    root = _toy_fasta(tmp_path / "toy.fasta")
    s = finetune(_cfg(tmp_path, "sequence_classification", "dna_lm_rope_tiny", root))
    assert s["final"]["accuracy"] >= 0.9, s["final"]


@pytest.mark.debian_data("r-cran-mlbench")
@require(SPLICE_PATH, "r-cran-mlbench")
def test_splice_slice_trains_and_evaluates(tmp_path):
    cfg = _cfg(tmp_path, "sequence_classification", "dna_bipe_tiny", None, **{
        "data.name": "splice_junctions", "data.root": "null", "data.train_limit": 96, "data.eval_limit": 48,
        "train.steps": 3, "train.batch_size": 32})
    s = finetune(cfg)
    assert s["data"]["classes"] == ["EI", "IE", "N"] and s["data"]["seq_len"] == 61
    assert s["data"]["train_samples"] == 96 and s["data"]["eval_samples"] == 48
    assert min(s["data"]["train_class_counts"]) > 0             # the limited slice keeps every class
    assert 0 <= s["final"]["accuracy"] <= 1 and 0 <= s["final"]["macro_f1"] <= 1


@pytest.mark.parametrize("task,model,acc", [("masked_lm", "dna_bipe_tiny", "masked_accuracy"),
                                            ("dna_lm", "dna_lm_kerple_tiny", "token_accuracy")])
def test_lm_tasks(tmp_path, task, model, acc):
    root = _toy_fasta(tmp_path / "toy.fasta", n=12, length=200)
    s = finetune(_cfg(tmp_path, task, model, root, **{"data.seq_len": 32, "train.steps": 6}))
    f = s["final"]
    assert set(f) == {"loss", "perplexity", acc}
    assert math.isclose(f["perplexity"], math.exp(f["loss"]), rel_tol=1e-9) and 0 <= f[acc] <= 1
    assert s["data"]["window_bases"] == (31 if task == "masked_lm" else 33)
    # two-letter alphabets: far better than uniform over the 12 ids after a few steps
    assert f["loss"] < math.log(12)


def _task(tmp_path, task, model="dna_rope_tiny", **over):
    root = _toy_fasta(tmp_path / "toy.fasta", n=12, length=200)
    cfg = _cfg(tmp_path, task, model, root, **{"data.seq_len": 32, "train.batch_size": 4, **over})
    t = get_task(task)()
    t.build_data(cfg)
    return t, cfg


@pytest.mark.parametrize("task", ["masked_lm", "sequence_classification"])
def test_batches_resume_exactly(tmp_path, task):
    t, _ = _task(tmp_path, task)
    full = list(t.train_batches(3, torch.Generator().manual_seed(7)))
    tail = list(t.train_batches(3, torch.Generator().manual_seed(7), start=2))
    assert len(full) == t.num_train_batches() >= 3 and len(tail) == len(full) - 2
    for a, b in zip(full[2:], tail):
        assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    other = list(t.train_batches(4, torch.Generator().manual_seed(8)))
    key = "inputs" if task == "masked_lm" else "input_ids"
    assert not all(torch.equal(a[key], b[key]) for a, b in zip(full, other))


def test_mlm_masks_only_bases(tmp_path):
    t, _ = _task(tmp_path, "masked_lm")
    b = next(iter(t.train_batches(0, torch.Generator().manual_seed(0))))
    assert (b["inputs"][:, 0] == 1).all() and (b["targets"][:, 0] == T.IGNORE_INDEX).all()   # <cls> kept
    chosen = b["targets"] != T.IGNORE_INDEX
    assert chosen.any() and (b["targets"][chosen] >= 7).all()


def test_wrong_model_kind_is_a_clear_error(tmp_path):
    root = _toy_fasta(tmp_path / "toy.fasta", n=12, length=200)
    with pytest.raises(ConfigError, match="needs an encoder"):
        finetune(_cfg(tmp_path, "masked_lm", "dna_lm_rope_tiny", root, **{"data.seq_len": 32}))


def test_bad_data_config_errors(tmp_path):
    with pytest.raises(ConfigError, match="unknown genomics dataset data.name='yeast'"):
        finetune(_cfg(tmp_path, "sequence_classification", "dna_rope_tiny", None, **{"data.name": "yeast"}))
    with pytest.raises(ConfigError, match="data.eval_split"):
        finetune(_cfg(tmp_path, "sequence_classification", "dna_rope_tiny", _toy_fasta(tmp_path / "t.fa"),
                      **{"data.eval_split": "train"}))
    # the value checks of the task's data schema, at config load
    for task, key, value, need in (("sequence_classification", "tokenizer_kind", "bpe", "one of nucleotide, kmer"),
                                   ("dna_lm", "k", 20, "k-mer size, 2..8"), ("masked_lm", "k", 1, "2..8"),
                                   ("sequence_classification", "top_n", 1, ">= 2"),
                                   ("masked_lm", "mask_prob", 1.0, r"in \(0, 1\)"),
                                   ("masked_lm", "eval_split", "train", "one of val, test")):
        with pytest.raises(ConfigError, match=rf"'data\.{key}': {value!r} \(.*{need}"):
            _cfg(tmp_path, task, "dna_rope_tiny", None, **{f"data.{key}": value})
    with pytest.raises(ConfigError, match=r"task 'dna_lm' has no data key 'mask_prob'; it is a data key of task "
                                          r"masked_lm\)$"):
        _cfg(tmp_path, "dna_lm", "dna_lm_rope_tiny", None, **{"data.mask_prob": 0.2})
    with pytest.raises(ConfigError, match="data.tokenizer="):
        T.build_tokenizer(_cfg(tmp_path, "masked_lm", "dna_rope_tiny", None,
                               **{"data.tokenizer": str(tmp_path / "missing.json")}).data)
    kmer = _cfg(tmp_path, "masked_lm", "dna_rope_tiny", None, **{"data.tokenizer_kind": "kmer", "data.k": 4}).data
    assert T.build_tokenizer(kmer) == kmer_tokenizer(4, False)


def test_window_bases_gives_exact_token_counts():
    for tok in (nucleotide_tokenizer(), kmer_tokenizer(4, overlapping=False), codon_tokenizer(frame=1)):
        for n in (5, 31, 64):
            w = T.window_bases(tok, n)
            assert len(tok.encode("A" * w).ids) == n


def test_macro_f1_pinned():
    pred = torch.tensor([0, 0, 1, 1, 2, 0])
    target = torch.tensor([0, 1, 1, 1, 2, 2])
    # F1 = 2tp / (2tp + fp + fn): class 0 tp 1 fp 2 -> 0.5; class 1 tp 2 fn 1 -> 0.8; class 2 tp 1 fn 1 -> 2/3
    assert math.isclose(T.macro_f1(pred, target, 3), (0.5 + 0.8 + 2 / 3) / 3, rel_tol=1e-12)
    assert T.macro_f1(target, target, 4) == 1.0                 # class 3 absent everywhere: left out
