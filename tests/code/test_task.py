"""The causal_lm fine-tune task on real source files (a few small CPython stdlib files) with one-block code LMs."""
import json
import math
from pathlib import Path

import pytest
import torch
from omegaconf import OmegaConf

import tree_sitter  # noqa: F401
import tokenizers  # noqa: F401

import zoo  # noqa: E402
from zoo.errors import CheckpointError, ConfigError, DatasetNotFoundError  # noqa: E402
from zoo.finetune import build_config, finetune, load_config  # noqa: E402
from zoo.finetune.engine import _epoch_generator  # noqa: E402

from code_test_helpers import TINY, built_task, copy_small_tree, lm_cfg  # noqa: E402
from domains.code import task as code_task  # noqa: E402
from domains.code.data import CodeWindows, collate_windows, tokenize_files  # noqa: E402
from domains.code.task import IGNORE_INDEX, _labels, gather_windows, load_run, stream_tensors  # noqa: E402

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def src(tmp_path_factory):
    return copy_small_tree(tmp_path_factory.mktemp("code") / "src")


def train_losses(out):
    rows = [json.loads(line) for line in (Path(out) / "metrics.jsonl").read_text().splitlines()]
    return {r["step"]: r["loss"] for r in rows if r["event"] == "train"}


# ---- a real run ---------------------------------------------------------------------------------------------------

def test_run_learns_saves_the_tokenizer_and_loads_back(src, tmp_path):
    out = tmp_path / "run"
    summary = finetune(lm_cfg(src, out, steps=40, eval_every=40))
    for name in ("model.safetensors", "tokenizer.json", "summary.json", "last.pt", "config.yaml"):
        assert (out / name).is_file(), name
    assert [p.name for p in out.iterdir() if p.name.endswith(".tmp")] == []
    assert summary["artifacts"] == ["tokenizer.json"]
    final = summary["final"]
    assert final["perplexity"] == pytest.approx(math.exp(final["loss"]), rel=1e-9)
    assert final["perplexity"] < 300 / 3, "40 steps must beat a uniform guess over 300 tokens by far"
    assert 0.0 < final["token_accuracy"] <= 1.0
    assert summary["model_kwargs"]["vocab_size"] == 300 and summary["model_kwargs"]["max_seq_len"] == 32
    assert summary["data"]["files"] == {"train": 10, "test": 2} and summary["data"]["eval_windows"] == 64

    model, tok = load_run(out)
    assert tok.vocab_size == 300 and not model.training and model.newline_counts is not None
    task = built_task(src)
    assert task.tokenizer.fingerprint == tok.fingerprint, "BPE training is deterministic"
    again = task.evaluate(model, batch_size=64)
    assert again["loss"] == pytest.approx(final["loss"], rel=1e-5)
    ids = torch.from_numpy(tok.encode("def f(x):\n    return x\n").ids)[None]
    gen = model.generate(ids, 5, temperature=0.0)
    assert gen.shape == (1, ids.shape[1] + 5) and torch.equal(gen[:, :ids.shape[1]], ids)


@pytest.mark.parametrize("model", ["code_lm_nope_tiny", "code_lm_alibi_tiny", "code_lm_hirope_tiny",
                                   "code_lm_bipe_tiny"])
def test_every_encoding_trains_on_the_task_batches(src, model):
    task = built_task(src)
    m = zoo.create(model, **task.model_kwargs(build_config(lm_cfg(src, "x", model))))
    batch = next(task.train_batches(0, _epoch_generator(0, 0)))
    loss, n = task.loss(m, batch)
    loss.backward()
    # the loss is the mean over the predicted tokens, and n counts them (every position but padding)
    predicted = int((_labels(batch, task.tokenizer.pad_id) != IGNORE_INDEX).sum())
    assert int(n) == predicted and 0 < predicted <= 8 * 32
    assert math.isfinite(loss.item()) and loss.item() == pytest.approx(math.log(300), abs=1.0)
    assert all(p.grad is not None for p in m.parameters() if p.requires_grad)


# ---- batches and exact resume --------------------------------------------------------------------------------------

def test_gathered_windows_equal_the_data_pipeline_windows(src):
    task = built_task(src)
    corpus = tokenize_files(task.tree.split("train"), task.tokenizer, progress=False)
    ref = collate_windows([CodeWindows(corpus, 32)[i] for i in (0, 5, 17)])
    got = gather_windows(stream_tensors(corpus), torch.tensor([0, 5, 17]) * 32, 32)
    for key in ("input_ids", "labels"):
        assert torch.equal(got[key], ref[key])
    for key in ("ids", "levels", "segments", "mask"):
        assert torch.equal(getattr(got["positions"], key), getattr(ref["positions"], key)), key
    assert got["positions"].causal and got["positions"].levels.shape == (3, 32, 5)
    assert got["positions"].levels[:, 0].abs().sum() == 0 and got["positions"].segments.max() > 0


def test_train_batches_restart_exactly_and_epochs_differ(src):
    task = built_task(src, train_limit=100)
    task.cfg.train.batch_size = 8
    nb = task.num_train_batches()
    assert nb == 100 // 8 and task.num_train_samples() == 100
    full = [b["input_ids"] for b in task.train_batches(3, _epoch_generator(1, 3))]
    tail = [b["input_ids"] for b in task.train_batches(3, _epoch_generator(1, 3), start=7)]
    assert len(full) == nb and len(tail) == nb - 7
    assert all(torch.equal(a, b) for a, b in zip(full[7:], tail))
    other = next(task.train_batches(4, _epoch_generator(1, 4)))["input_ids"]
    assert not torch.equal(full[0], other)
    task.cfg.data.augment = False     # no offset: one epoch visits the windows 0, n, 2n, ... once each
    task.num_windows = 96
    seen = sorted(tuple(r.tolist()) for b in task.train_batches(0, _epoch_generator(1, 0)) for r in b["input_ids"])
    grid = gather_windows(task.train_stream, torch.arange(96) * 32, 32)["input_ids"]
    assert seen == sorted(tuple(r.tolist()) for r in grid)


def test_resume_continues_exactly_and_reuses_the_saved_tokenizer(src, tmp_path, monkeypatch):
    ref = tmp_path / "ref"
    finetune(lm_cfg(src, ref, steps=6))
    out = tmp_path / "split"
    finetune(lm_cfg(src, out, steps=3))
    saved = (out / "tokenizer.json").read_bytes()

    def no_training(*a, **k):
        raise AssertionError("resume must read tokenizer.json from the run folder, not train a new one")
    monkeypatch.setattr("domains.code.tokenizer.train_bpe", no_training)
    finetune(lm_cfg(src, out, steps=6), resume=True)
    a, b = train_losses(ref), train_losses(out)
    assert sorted(b) == list(range(1, 7))
    assert all(a[s] == pytest.approx(b[s], rel=1e-6, abs=1e-7) for s in range(1, 7))
    assert (out / "tokenizer.json").read_bytes() == saved


# ---- bad input ----------------------------------------------------------------------------------------------------

def test_unknown_dataset_lists_the_known_ones(src):
    with pytest.raises(ConfigError, match="unknown code dataset.*cpython_stdlib.*go_stdlib.*source_tree"):
        built_task(src, name="pystdlib")


def test_empty_and_missing_source_trees(src, tmp_path):
    empty = tmp_path / "empty"
    empty.mkdir()
    (empty / "README.txt").write_text("no code here")
    with pytest.raises(ConfigError, match=r"no usable source files.*other files: 1"):
        built_task(src, root=str(empty))
    with pytest.raises(DatasetNotFoundError, match="data.root.*not a directory"):
        built_task(src, root=str(tmp_path / "nope"))
    with pytest.raises(ConfigError, match="data.name=source_tree needs data.root"):
        built_task(src, root=None)
    one = copy_small_tree(tmp_path / "one", train=1, val=0, test=0)
    with pytest.raises(ConfigError, match="no files in the 'test' split"):
        built_task(src, root=str(one))
    with pytest.raises(ConfigError, match="data.languages"):
        built_task(src, languages=["cobol"])


def test_sequences_beyond_the_limits_are_clear_errors(src, tmp_path):
    task = built_task(src)
    cfg = build_config(lm_cfg(src, "x"))
    cfg.model.kwargs.max_seq_len = 16
    with pytest.raises(ConfigError, match=r"data.seq_len=32 exceeds model.kwargs.max_seq_len=16"):
        task.model_kwargs(cfg)
    cfg.model.kwargs.allow_longer = True               # the configured behaviour: run past max_seq_len
    assert task.model_kwargs(cfg)["max_seq_len"] == 16
    cfg.model.kwargs = {"vocab_size": 100}
    with pytest.raises(ConfigError, match="model.kwargs.vocab_size=100 is smaller than the tokenizer's 300"):
        task.model_kwargs(cfg)
    with pytest.raises(ConfigError, match="data.seq_len=100000 is too long for the training split"):
        built_task(src, seq_len=100000)
    model = zoo.create("code_lm_rope_tiny", vocab_size=300, max_seq_len=32, **TINY)
    with pytest.raises(ValueError, match="exceed max_seq_len=32"):
        model(torch.zeros(1, 33, dtype=torch.long))


def test_missing_or_broken_tokenizer_files(src, tmp_path):
    with pytest.raises(ConfigError, match=r"data.tokenizer: no tokenizer at .*missing.json"):
        built_task(src, tokenizer=str(tmp_path / "missing.json"))
    bad = tmp_path / "bad.json"
    bad.write_text("{not json")
    with pytest.raises(ConfigError, match="data.tokenizer=.*bad.json.*not a valid tokenizers JSON"):
        built_task(src, tokenizer=str(bad))
    run = tmp_path / "run"
    finetune(lm_cfg(src, run, steps=1))
    loaded = built_task(src, tokenizer=str(run))        # a run folder works as data.tokenizer
    assert loaded.tokenizer.vocab_size == 300
    with pytest.raises(ConfigError, match="data.vocab_size=512 but the tokenizer"):
        built_task(src, tokenizer=str(run), vocab_size=512)
    (run / "tokenizer.json").unlink()
    with pytest.raises(CheckpointError, match="tokenizer.json .*the tokenizer the model was trained with.* missing"):
        load_run(run)


def test_config_keys_are_checked(src, tmp_path):
    with pytest.raises(ConfigError, match="unknown config key 'data.seq_length'.*did you mean 'data.seq_len'"):
        build_config(lm_cfg(src, tmp_path), ["data.seq_length=64"])
    with pytest.raises(ConfigError, match="'data.seq_len': 0"):
        build_config(lm_cfg(src, tmp_path), ["data.seq_len=0"])
    with pytest.raises(ConfigError, match="data.vocab_size=100.*too small"):
        built_task(src, vocab_size=100)
    with pytest.raises(ConfigError, match="data.eval_split.*'train'"):
        built_task(src, eval_split="train")


def test_the_recipes_are_the_same_but_for_the_model():
    recipes = sorted((ROOT / "configs" / "code").glob("code_lm_*_tiny_pystdlib.yaml"))
    assert [p.name.split("_")[2] for p in recipes] == ["alibi", "bipe", "hirope", "nope", "rope"]
    cfgs = []
    for p in recipes:
        assert p.read_text().splitlines()[0] == f"# zoo finetune configs/code/{p.name}"
        cfg = load_config(p)
        assert cfg.task == "causal_lm" and cfg.data.seq_len == 512 and cfg.output.dir == f"runs/{p.stem}"
        assert cfg.model.name == p.stem.replace("_pystdlib", "")
        plain = OmegaConf.to_container(cfg, resolve=True)
        cfgs.append({k: v for k, v in plain.items() if k not in ("model", "output")})
    assert all(c == cfgs[0] for c in cfgs)
