"""``zoo bench ddp``: a recipe under torchrun (N ranks x 1 thread) against one process (N threads), same run.

    zoo bench ddp [--config configs/vision/vit_irpe_tiny_fmnist.yaml] [--nproc 2] [--steps 40] [--parallel ddp]
                  [--set data.eval_limit=500 ...] [--repeats 2] [--json out.json]

Both runs train the same global batch for ``--steps`` steps in float32 (``train.amp=off``); the report gives the
training throughput of the distributed run as a ratio to the one-process run (measured alternately, ``--repeats``
pairs) and the largest relative difference of their per-step losses (they compute the same steps).
"""
from __future__ import annotations

import argparse
import json
import math
import os
import subprocess
import sys
import tempfile
from pathlib import Path
from statistics import median
from typing import Dict, List

from ..errors import ConfigError

DEFAULT_CONFIG = "configs/vision/vit_irpe_tiny_fmnist.yaml"


def _losses(run_dir: Path) -> Dict[int, float]:
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    return {r["step"]: r["loss"] for r in rows if r["event"] == "train"}


def _run(cmd: List[str], run_dir: Path, quiet: bool) -> Dict:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    for key in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"):
        env.pop(key, None)
    r = subprocess.run(cmd, env=env, capture_output=True, text=True)
    if r.returncode != 0 or not (run_dir / "summary.json").is_file():
        tail = "\n".join((r.stderr or r.stdout).strip().splitlines()[-15:])
        raise ConfigError(f"zoo bench ddp: the run failed (exit {r.returncode}): {' '.join(cmd)}\n{tail}")
    if not quiet:
        print(f"  {' '.join(cmd[:6])} ...: done", flush=True)
    return json.loads((run_dir / "summary.json").read_text())


def run(args: argparse.Namespace) -> int:
    config = Path(args.config or DEFAULT_CONFIG)
    if not config.is_file():
        raise ConfigError(f"zoo bench ddp --config {config}: no such file")
    n = int(args.nproc)
    if n < 2:
        raise ConfigError(f"zoo bench ddp --nproc {n}: needs at least 2 processes")
    steps = int(args.steps)
    common = [f"train.steps={steps}", "train.progress=false", "train.log_every=1", "train.amp=off",
              f"train.eval_every={10 * steps}", "train.save_every=null", f"train.parallel={args.parallel}",
              *(args.set or [])]
    ratios, diffs, rows = [], [], []
    with tempfile.TemporaryDirectory(prefix="zoo-bench-ddp-") as tmp:
        for i in range(int(args.repeats)):
            one, many = Path(tmp) / f"one{i}", Path(tmp) / f"ddp{i}"
            s1 = _run([sys.executable, "-m", "zoo", "finetune", str(config), *common, f"train.num_threads={n}",
                       f"output.dir={one}"], one, args.quiet)
            sn = _run([sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={n}",
                       "-m", "zoo", "finetune", str(config), *common, "train.num_threads=1", f"output.dir={many}"],
                      many, args.quiet)
            a, b = _losses(one), _losses(many)
            diff = max(abs(b[s] - a[s]) / max(abs(a[s]), 1e-12) for s in a)
            ratio = sn["samples_per_s"] / s1["samples_per_s"]
            ratios.append(ratio)
            diffs.append(diff)
            rows.append({"one_process_samples_per_s": s1["samples_per_s"],
                         "ranks_samples_per_s": sn["samples_per_s"], "ratio": round(ratio, 3),
                         "max_rel_loss_diff": diff})
    result = {"config": str(config), "nproc": n, "steps": steps, "parallel": args.parallel,
              "model": sn["model"], "batch_size": sn["batch_size"], "per_rank_batch": sn["per_rank_batch"],
              "ratio_median": round(median(ratios), 3), "max_rel_loss_diff": max(diffs), "runs": rows}
    print(f"zoo bench ddp: {result['model']} ({config}), global batch {result['batch_size']}, {steps} steps, "
          f"float32")
    print(f"| run | 1 process x {n} threads (samples/s) | {n} ranks x 1 thread, {args.parallel} (samples/s) | "
          f"ratio | max rel. loss diff |")
    print("|---|---|---|---|---|")
    for i, r in enumerate(rows):
        print(f"| {i} | {r['one_process_samples_per_s']:.1f} | {r['ranks_samples_per_s']:.1f} | {r['ratio']:.3f} | "
              f"{r['max_rel_loss_diff']:.1e} |")
    print(f"median ratio {result['ratio_median']:.3f}; losses equal to {result['max_rel_loss_diff']:.1e} (relative)")
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=2) + "\n")
    return 0 if math.isfinite(result["max_rel_loss_diff"]) else 1


OPTIONS = [
    (("--config",), dict(default=None, help=f"zoo bench ddp: the recipe (default {DEFAULT_CONFIG})")),
    (("--nproc",), dict(type=int, default=None, help="zoo bench ddp: ranks (default 2)")),
    (("--steps",), dict(type=int, default=None, help="training steps per run")),
    (("--parallel",), dict(default=None, choices=("ddp", "fsdp"), help="zoo bench ddp: ddp or fsdp")),
    (("--repeats",), dict(type=int, default=None, help="zoo bench ddp: pairs of runs (default 2); zoo bench "
                                                       "long: timed steps per measurement, median (default 1)")),
    (("--set",), dict(action="append", default=None, metavar="KEY=VALUE",
                      help="zoo bench ddp: a config override for both runs (repeatable)")),
]


def register() -> None:
    from . import register_bench
    register_bench("ddp", run, options=OPTIONS, defaults={"nproc": 2, "steps": 40, "parallel": "ddp",
                                                           "repeats": 2},
                   help="torchrun N ranks vs one process: throughput ratio and loss equality")
