"""`zoo finetune` under torchrun on the CPU (gloo): 2 ranks give the run of 1 process, stop together, resume anywhere.

Each test starts real processes (torchrun, or one process per rank by hand) on a Fashion-MNIST slice with a one-block
ViT-iRPE, in float32 (``train.amp=off``: bf16 would round differently on each side). The reference is the same
config run by one process: with the global batch split across ranks, the per-step losses must agree to 1e-5
(relative; float32 sums in another order differ by ~1e-7) and the trained weights to 1e-5.
"""
import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import yaml
from safetensors.torch import load_file

from zoo.finetune import finetune

ROOT = Path(__file__).resolve().parents[2]
ENTRY = ROOT / "tests" / "finetune" / "dist_entry.py"
MODEL = {"name": "vit_irpe_tiny", "kwargs": {"patch_size": 7, "depth": 1, "embed_dim": 32, "num_heads": 2}}
RTOL = 1e-5
pytestmark = pytest.mark.debian_data("dataset-fashion-mnist")


def config(out, **train):
    """256 train / 128 test images; micro-batch 16 (8 per rank) x accumulation 2; 4 steps; augmentation on; an EMA
    of the weights (its weights are model.safetensors; last.pt holds the raw ones)."""
    t = {"steps": 4, "batch_size": 16, "accumulation": 2, "log_every": 1, "progress": False, "seed": 3,
         "num_threads": 1, "amp": "off", "dist_timeout_s": 60, "ema_decay": 0.9}
    t.update(train)
    return {"task": "image_classification", "model": MODEL,
            "data": {"name": "fashion_mnist", "train_limit": 256, "eval_limit": 128, "augment": True},
            "optim": {"lr": 2e-3, "warmup_steps": 2}, "train": t, "output": {"dir": str(out)}}


def write_config(path, cfg):
    path.write_text(yaml.safe_dump(cfg))
    return path


def losses(out):
    rows = [json.loads(line) for line in (Path(out) / "metrics.jsonl").read_text().splitlines()]
    return {r["step"]: r["loss"] for r in rows if r["event"] == "train"}


def env(**extra):
    e = {k: v for k, v in os.environ.items() if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR",
                                                             "MASTER_PORT", "ZOO_TEST_ACT", "ZOO_TEST_DUMP")}
    e.update(OMP_NUM_THREADS="1", PYTHONPATH=str(ROOT), **extra)
    return e


def torchrun(cfg_path, *args, nproc=2, timeout=180, **extra):
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}", str(ENTRY),
           str(cfg_path), *args]
    return subprocess.run(cmd, cwd=ROOT, env=env(**extra), capture_output=True, text=True, timeout=timeout)


def assert_close_losses(got, ref, steps):
    assert sorted(got) == steps
    for s in steps:
        assert abs(got[s] - ref[s]) <= RTOL * abs(ref[s]), (s, got[s], ref[s])


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    """The one-process run: 4 steps of 2 micro-batches of 16."""
    out = tmp_path_factory.mktemp("one") / "run"
    summary = finetune(config(out))
    raw = torch.load(out / "last.pt", weights_only=True)["model"]
    return summary, losses(out), load_file(out / "model.safetensors"), raw


def test_two_ddp_ranks_give_the_one_process_run_and_identical_replicas(tmp_path, reference):
    ref_summary, ref_losses, ref_weights, _ = reference
    out = tmp_path / "run"
    r = torchrun(write_config(tmp_path / "c.yaml", config(out)), ZOO_TEST_DUMP="1")
    assert r.returncode == 0, r.stderr[-3000:]
    assert_close_losses(losses(out), ref_losses, [1, 2, 3, 4])
    summary = json.loads((out / "summary.json").read_text())
    assert (summary["world_size"], summary["parallel"], summary["per_rank_batch"]) == (2, "ddp", 8)
    assert summary["final"]["accuracy"] == pytest.approx(ref_summary["final"]["accuracy"], abs=1 / 128)
    weights = load_file(out / "model.safetensors")               # the EMA's, the same on every rank
    assert weights.keys() == ref_weights.keys()
    for k, v in weights.items():
        torch.testing.assert_close(v, ref_weights[k], rtol=RTOL, atol=RTOL)
    # every rank holds a full replica: bit-identical after training (one all-reduced gradient per step)
    r0, r1 = torch.load(out / "rank0.pt"), torch.load(out / "rank1.pt")
    assert all(torch.equal(r0[k], r1[k]) for k in r0) and set(r0) == set(weights)
    assert not all(torch.equal(r0[k], weights[k]) for k in r0)  # the raw weights are not the EMA's
    # rank 0 alone writes: one metrics line per step, one summary
    assert len([ln for ln in (out / "metrics.jsonl").read_text().splitlines() if '"train"' in ln]) == 4


def test_fsdp2_gives_the_one_process_run(tmp_path, reference):
    _, ref_losses, _, ref_raw = reference
    out = tmp_path / "run"
    cfg_path = write_config(tmp_path / "c.yaml", config(out, parallel="fsdp", ema_decay=None))
    r = torchrun(cfg_path)
    assert r.returncode == 0, r.stderr[-3000:]
    assert_close_losses(losses(out), ref_losses, [1, 2, 3, 4])
    weights = load_file(out / "model.safetensors")              # gathered from the shards on rank 0
    for k, v in weights.items():                                # no EMA here: the raw weights
        torch.testing.assert_close(v, ref_raw[k], rtol=RTOL, atol=RTOL)
    ckpt = torch.load(out / "last.pt", weights_only=True)        # the optimizer in the one-process form
    assert sorted(ckpt["optimizer"]["state"]) == list(range(len(weights)))
    assert json.loads((out / "summary.json").read_text())["parallel"] == "fsdp"


def test_ctrl_c_on_one_rank_stops_both_and_one_process_resumes_exactly(tmp_path, reference):
    _, ref_losses, ref_weights, _ = reference
    out = tmp_path / "run"
    cfg_path = write_config(tmp_path / "c.yaml", config(out))
    # Ctrl-C reaches rank 1 only, during its 3rd micro-batch (step 2): both ranks stop after step 2
    r = torchrun(cfg_path, ZOO_TEST_ACT="1:3:sigint")
    assert r.returncode != 0                                     # the CLI exits 130 when interrupted
    assert "stopping after this step" in r.stdout + r.stderr
    ckpt = torch.load(out / "last.pt", weights_only=True)
    assert (ckpt["step"], ckpt["world_size"], len(ckpt["rng_ranks"])) == (2, 2, 2)
    summary = json.loads((out / "summary.json").read_text())
    assert summary["interrupted"] and summary["resume_command"].startswith("torchrun --standalone --nproc_per_node=2")
    assert_close_losses(losses(out), ref_losses, [1, 2])
    # the same global batch on one process: the uninterrupted run's remaining steps and weights
    resumed = finetune(config(out), resume=True)
    assert resumed["steps"] == 4 and not resumed["interrupted"]
    assert_close_losses(losses(out), ref_losses, [1, 2, 3, 4])
    for k, v in load_file(out / "model.safetensors").items():
        torch.testing.assert_close(v, ref_weights[k], rtol=RTOL, atol=RTOL)


def _free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_a_rank_that_dies_makes_the_other_exit_with_an_error_not_a_hang(tmp_path):
    out = tmp_path / "run"
    cfg_path = write_config(tmp_path / "c.yaml", config(out, steps=50, dist_timeout_s=30))
    port = str(_free_port())
    procs = []
    for rank in (0, 1):                          # started by hand, as two nodes would be: no agent to kill rank 0
        procs.append(subprocess.Popen(
            [sys.executable, str(ENTRY), str(cfg_path)], cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
            text=True, env=env(RANK=str(rank), LOCAL_RANK=str(rank), WORLD_SIZE="2", MASTER_ADDR="127.0.0.1",
                               MASTER_PORT=port, ZOO_TEST_ACT="1:5:kill")))
    t0 = time.monotonic()
    _, err0 = procs[0].communicate(timeout=120)
    procs[1].wait(timeout=30)
    assert procs[1].returncode == -signal.SIGKILL
    assert procs[0].returncode == 2, err0[-3000:]                # the CLI's error exit, within the timeout
    assert time.monotonic() - t0 < 90
    assert "rank 0 of 2" in err0 and "another rank has stopped" in err0
    assert "Traceback" not in err0


def test_zoo_bench_ddp_reports_the_ratio_of_the_same_run(tmp_path):
    cfg_path = write_config(tmp_path / "c.yaml", config(tmp_path / "unused"))
    out = tmp_path / "bench.json"
    r = subprocess.run([sys.executable, "-m", "zoo", "bench", "ddp", "--config", str(cfg_path), "--steps", "3",
                        "--repeats", "1", "--quiet", "--json", str(out)], cwd=ROOT, env=env(), capture_output=True,
                       text=True, timeout=180)
    assert r.returncode == 0, r.stderr[-3000:]
    result = json.loads(out.read_text())
    assert (result["nproc"], result["steps"], result["per_rank_batch"], len(result["runs"])) == (2, 3, 8, 1)
    run = result["runs"][0]
    assert run["ratio"] == pytest.approx(run["ranks_samples_per_s"] / run["one_process_samples_per_s"], rel=1e-2)
    assert result["max_rel_loss_diff"] <= RTOL                   # both runs computed the same three steps


def test_the_readme_memory_table_is_the_formula_over_the_registry():
    import re

    from zoo.finetune.distributed import training_state_bytes
    from zoo.registry import count_params

    text = (ROOT / "README.md").read_text()
    rows = re.findall(r"^\| `(\w+)` \| ([\d.]+)M \| ([\d,.]+) MiB \| ([\d,.]+) MiB \|$", text, flags=re.M)
    assert len(rows) >= 4

    def shown(cell, value):                      # the cell is the value rounded to the digits it shows
        cell = cell.replace(",", "")
        decimals = len(cell.split(".")[1]) if "." in cell else 0
        return abs(float(cell) - value) <= 0.5 * 10 ** -decimals + 1e-9

    for name, params, ddp, fsdp in rows:
        n = count_params(name)
        assert shown(params, n / 1e6), name
        assert shown(ddp, training_state_bytes(n) / 2 ** 20), name
        assert shown(fsdp, training_state_bytes(n, 8, "fsdp") / 2 ** 20), name
    # 16 bytes a parameter: float32 weight and gradient, AdamW's two moments
    assert training_state_bytes(1000) == 16000 and training_state_bytes(1000, 3, "fsdp") == 5334


def test_fsdp2_refuses_what_it_cannot_shard_yet_on_every_rank(tmp_path):
    out = tmp_path / "run"
    r = torchrun(write_config(tmp_path / "c.yaml", config(out, parallel="fsdp")))     # with the EMA
    assert r.returncode != 0
    assert r.stderr.count("zoo: error: train.ema_decay is not supported with train.parallel=fsdp yet") == 2
    assert not (out / "last.pt").exists()
