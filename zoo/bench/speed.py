"""Speed and memory as ratios against a baseline measured in the same run (image models: `image_speed`).

Each measurement runs in its own subprocess (so peak memory is that model's alone); baseline and candidates are
interleaved over several rounds so that machine drift hits both alike. The figure of merit is
``throughput(model) / throughput(baseline)`` (1.0 = as fast as the baseline) and
``peak_memory(model) / peak_memory(baseline)``.
"""
from __future__ import annotations

import json
import os
import resource
import statistics
import subprocess
import sys
import time
from typing import Callable, Dict, List

__all__ = ["image_speed", "interleaved", "run_worker", "parse_list"]


def parse_list(text, kind=str):
    """``"a,b"`` -> ``["a", "b"]`` (``kind`` applied to each item); None -> None; a bad item raises ConfigError."""
    from ..errors import ConfigError
    if text is None:
        return None
    items = [t.strip() for t in str(text).split(",") if t.strip()]
    try:
        return [kind(t) for t in items]
    except ValueError:
        raise ConfigError(f"expected a comma-separated list of {kind.__name__}, got {text!r}") from None


def _worker(spec: str, batch: int, iters: int, warmup: int, img: int, device: str) -> dict:
    import torch

    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    torch.manual_seed(0)
    if spec.startswith("timm:"):
        import timm
        model = timm.create_model(spec[5:], img_size=img)
    else:
        import zoo
        model = zoo.create(spec, img_size=img)
    model.to(device).train()
    x = torch.randn(batch, 3, img, img, device=device)
    amp = torch.autocast("cuda", dtype=torch.bfloat16) if device == "cuda" else torch.autocast("cpu", enabled=False)

    def step():
        with amp:
            out = model(x)
        out.float().mean().backward()
        model.zero_grad(set_to_none=True)

    for _ in range(warmup):
        step()
    if device == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    rss0 = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    times = []
    for _ in range(iters):
        t = time.perf_counter()
        step()
        if device == "cuda":
            torch.cuda.synchronize()
        times.append(time.perf_counter() - t)
    if device == "cuda":
        peak = torch.cuda.max_memory_allocated() / 2**20
    else:
        # high-water mark of the whole process (MiB); warm-up already reached the steady-state peak
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
        peak = max(peak, rss0 / 1024)
    params = sum(p.numel() for p in model.parameters())
    return {"model": spec, "times": times, "peak_mib": peak, "params": params, "device": device}


def run_worker(module: str, spec: str, *worker_args: str) -> dict:
    """Run ``python -m module _worker spec *worker_args`` in a subprocess (so its peak memory is its own) and return
    the JSON object printed on its last stdout line; a failed worker raises RuntimeError with the end of stderr."""
    cmd = [sys.executable, "-m", module, "_worker", spec, *worker_args]
    res = subprocess.run(cmd, capture_output=True, text=True, env=dict(os.environ))
    if res.returncode != 0:
        raise RuntimeError(f"benchmark of {spec} failed:\n{res.stderr[-3000:]}")
    return json.loads(res.stdout.strip().splitlines()[-1])


def _run_one(spec: str, args) -> dict:
    return run_worker("zoo.bench.speed", spec, str(args.batch_size), str(args.iters), str(args.warmup),
                      str(args.img_size), args.device)


def interleaved(specs: List[str], run_one: Callable[[str], dict], rounds: int, desc: str,
                progress: bool = True) -> Dict[str, List[dict]]:
    """``run_one(spec)`` for every spec, ``rounds`` times, in the order s1 s2 ... s1 s2 ...: drift of the machine
    (thermal, other load) then hits the baseline and the candidates alike. Returns ``{spec: [result per round]}``."""
    from tqdm import tqdm

    results: Dict[str, List[dict]] = {s: [] for s in specs}
    with tqdm(total=rounds * len(specs), desc=desc, unit="model", disable=not progress) as bar:
        for _ in range(rounds):
            for s in specs:
                results[s].append(run_one(s))
                bar.update(1)
    return results


def image_speed(suite: str, baseline: str, candidates: List[str], args, rounds: int = 2) -> int:
    """Forward+backward of image models (``args.models`` or ``candidates``) at ``args.img_size`` against
    ``baseline`` (``"timm:<name>"`` builds a timm model), interleaved over ``rounds``; prints the ratio table."""
    if getattr(args, "models", None):
        candidates = [m.strip() for m in args.models.split(",") if m.strip()]
    specs = [baseline] + list(candidates)
    results = interleaved(specs, lambda s: _run_one(s, args), rounds, f"bench {suite}")
    summary = []
    base_t = statistics.median([t for r in results[baseline] for t in r["times"]])
    base_m = min(r["peak_mib"] for r in results[baseline])
    for s in specs:
        t = statistics.median([t for r in results[s] for t in r["times"]])
        m = min(r["peak_mib"] for r in results[s])
        summary.append({"model": s, "ms_per_iter": 1000 * t, "speed_vs_baseline": base_t / t,
                        "peak_mib": m, "memory_vs_baseline": m / base_m, "params": results[s][0]["params"],
                        "device": results[s][0]["device"]})
    dev = summary[0]["device"]
    print(f"\nzoo bench {suite}: forward+backward, batch {args.batch_size}, {args.img_size}x{args.img_size}, "
          f"{dev}, median of {rounds}x{args.iters} iterations; baseline {baseline}")
    print(f"{'model':40s} {'ms/iter':>9s} {'speed x':>8s} {'peak MiB':>9s} {'mem x':>6s} {'params':>8s}")
    for r in summary:
        print(f"{r['model']:40s} {r['ms_per_iter']:9.1f} {r['speed_vs_baseline']:8.3f} {r['peak_mib']:9.0f} "
              f"{r['memory_vs_baseline']:6.2f} {r['params'] / 1e6:7.1f}M")
    if getattr(args, "json", None):
        from ..io import atomic_write_text
        atomic_write_text(args.json, json.dumps(summary, indent=2))
    return 0


if __name__ == "__main__" and len(sys.argv) > 1 and sys.argv[1] == "_worker":
    spec, b, it, wu, img, dev = sys.argv[2:8]
    out = _worker(spec, int(b), int(it), int(wu), int(img), dev)
    print(json.dumps(out))
