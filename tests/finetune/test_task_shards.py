"""Every registered task splits a global micro-batch across ranks without changing the step.

Under torchrun each rank keeps its contiguous rows of the same global micro-batch (`Task.shard`), weighs its mean
loss by the number of terms it averages (`Task.loss` returns it), and the engine divides the all-reduced sum by the
global count. For every task, on real data, the shards for 2, 3 and 8 ranks (uneven, and with ranks left empty)
must give the whole batch's loss and gradients: sum_r n_r * loss_r / sum_r n_r == loss, same for the gradients.
"""
from pathlib import Path

import pytest
import torch

import zoo
from zoo.finetune import build_config, get_task, list_tasks
from zoo.finetune.engine import _epoch_generator

from support.modules import load_test_module

_code = load_test_module(Path(__file__).resolve().parents[1] / "code" / "code_test_helpers.py", "_shards")
CODE_TINY, copy_small_tree = _code.TINY, _code.copy_small_tree

MANUALS = Path("/usr/share/doc/r-doc-pdf/manual")
DOC_TINY = {"dim": 32, "depth": 1, "num_heads": 2, "mlp_hidden": 64, "drop": 0.0, "attn_drop": 0.0}
DNA_TINY = {"depth": 1, "dim": 32, "num_heads": 2}
TRAIN = {"steps": 1, "progress": False, "num_threads": 1, "amp": "off", "seed": 5}


@pytest.fixture(scope="module")
def sources(tmp_path_factory):
    """Small real inputs: a few stdlib files; six R-intro pages of text."""
    import pypdfium2 as pdfium
    root = tmp_path_factory.mktemp("data")
    code = copy_small_tree(root / "code", train=6, val=1, test=1)
    manuals = {}
    for name, manual, pages in (("text", "R-intro", [10, 11, 12, 13, 14, 18]),):
        src, out = pdfium.PdfDocument(str(MANUALS / f"{manual}.pdf")), pdfium.PdfDocument.new()
        out.import_pages(src, pages)
        (root / name).mkdir()
        out.save(str(root / name / f"{manual}.pdf"))
        out.close()
        src.close()
        manuals[name] = root / name
    return {"code": code, **manuals}


def _config(task, src):
    """A small config of ``task`` on real data; a task without one here fails the registry test below."""
    def cfg(model, kwargs, data, batch):
        return {"task": task, "model": {"name": model, "kwargs": kwargs}, "data": data,
                "train": {**TRAIN, "batch_size": batch}, "output": {"dir": "unused"}}
    configs = {
        "image_classification": lambda: cfg(
            "vit_irpe_tiny", {"patch_size": 7, "depth": 1, "embed_dim": 32, "num_heads": 2},
            {"name": "fashion_mnist", "train_limit": 64, "eval_limit": 16, "augment": True}, 11),
        "causal_lm": lambda: cfg("code_lm_hirope_tiny", dict(CODE_TINY),
                                 {"name": "source_tree", "root": str(src["code"]), "seq_len": 32, "vocab_size": 300,
                                  "eval_limit": 16}, 7),
        "sequence_classification": lambda: cfg("dna_alibi_tiny", dict(DNA_TINY),
                                               {"name": "16s_rrna", "train_limit": 64, "eval_limit": 16,
                                                "seq_len": 96}, 7),
        "masked_lm": lambda: cfg("dna_bipe_tiny", dict(DNA_TINY),
                                 {"name": "16s_rrna", "train_limit": 64, "eval_limit": 16, "seq_len": 64}, 7),
        "dna_lm": lambda: cfg("dna_lm_rope_tiny", dict(DNA_TINY),
                              {"name": "16s_rrna", "train_limit": 64, "eval_limit": 16, "seq_len": 32,
                               "packing": "packed"}, 7),
        "word_labelling": lambda: cfg("doc_layoutlm_tiny", dict(DOC_TINY),
                                      {"name": "r_manuals", "root": str(src["text"]), "seq_len": 64,
                                       "min_freq": 1}, 5),
        "entity_linking": lambda: cfg("doc_layoutlm_tiny", {**DOC_TINY, "link_dim": 16},
                                      {"name": "r_manual_links", "root": str(MANUALS), "manuals": ["R-data"],
                                       "seq_len": 64, "min_freq": 1, "eval_split": "test"}, 5),
    }
    return configs[task]() if task in configs else None


def test_every_registered_task_has_a_shard_check():
    missing = [t for t in list_tasks() if _config(t, {"code": "", "text": ""}) is None]
    assert not missing, f"add a small real-data config for {missing} to _config"


def _grads(model):
    return [p.grad.detach().clone() if p.grad is not None else torch.zeros_like(p) for p in model.parameters()]


@pytest.mark.debian_data("dataset-fashion-mnist", "golang-src", "microbiomeutil-data", "r-doc-pdf")
@pytest.mark.parametrize("task_name", list_tasks())
def test_shards_of_every_task_give_the_whole_batch(task_name, sources):
    cfg = build_config(_config(task_name, sources))
    task = get_task(task_name)()
    task.build_data(cfg)
    torch.manual_seed(0)
    model = zoo.create(cfg.model.name, **task.model_kwargs(cfg))
    model.eval()                                    # no dropout: the same function on every shard
    batch = next(task.train_batches(0, _epoch_generator(cfg.train.seed, 0)))
    rows = task.batch_samples(batch)
    assert rows == cfg.train.batch_size
    model.zero_grad()
    whole, n_whole = task.loss(model, batch)
    whole.backward()
    ref = _grads(model)
    assert float(n_whole) > rows - 1                # at least one term per row
    for world in (2, 3, 8):
        model.zero_grad()
        total, terms, kept = 0.0, 0.0, 0
        for rank in range(world):
            part, has_rows = task.shard(batch, rank, world)
            loss, n = task.loss(model, part)
            n = n if has_rows else n * 0            # the engine's weight for a rank without rows
            (loss * n).backward()
            total, terms = total + float(loss.detach()) * float(n), terms + float(n)
            kept += task.batch_samples(part) if has_rows else 0
        assert kept == rows                         # every row on exactly one rank
        assert terms == pytest.approx(float(n_whole))
        assert total / terms == pytest.approx(float(whole), rel=1e-5)
        for g, r in zip(_grads(model), ref):
            torch.testing.assert_close(g / terms, r, rtol=1e-4, atol=1e-6)
    # a task that evaluates in shards (Task.eval_sums) gives the whole split's metrics from the summed shares
    if task.eval_sums(model, 8, 0, 1) is not None:
        whole = task.evaluate(model, batch_size=8)
        for world in (2, 3):
            parts = [task.eval_sums(model, 8, rank, world) for rank in range(world)]
            summed = {k: sum(p[k].double() for p in parts) for k in parts[0]}
            assert task.eval_metrics(summed) == pytest.approx(whole, rel=1e-6)


def test_a_task_defines_both_eval_sums_and_eval_metrics_or_neither():
    from zoo.finetune.tasks import Task, register_task

    class HalfSharded(Task):
        def eval_sums(self, model, batch_size, rank, world_size):
            return {}

    with pytest.raises(TypeError, match="defines both"):
        register_task("half_sharded_eval")(HalfSharded)
    assert "half_sharded_eval" not in list_tasks()
