"""Streaming generation benchmark: peak memory and tokens/s of ``generate`` over many new tokens, with a bounded
(`zoo.nn.attention.StreamingKVCache`) and with the full KV cache.

    python -m zoo bench streaming --domain code [--models code_lm_rope_tiny] [--stream-tokens 2000,20000] [--window 1024]

Every (model, cache, token count) cell runs in a subprocess of its own.  ``peak_mib`` is the highest resident memory
sampled during ``generate`` (`zoo.bench.memory.PeakMemory`, every 5 ms; on CUDA the allocator's peak), ``growth_mib``
that peak minus the resident memory just before it (model built, a short warm-up done): what decoding itself
added.  The
model has its seeded random initialisation (memory and speed do not depend on the weights); sampling uses a seeded
generator.  The ratios compare the longest run with the shortest one of the same cache.
"""
from __future__ import annotations

import json
import subprocess
import sys
import time
from typing import Any, Dict, List, Optional, Sequence

__all__ = ["streaming_bench", "measure_one", "OPTIONS"]

#: the suite's own options (`zoo.bench.register_bench`)
OPTIONS = [
    (("--stream-tokens",), dict(default=None, help="comma-separated counts of generated tokens (default 2000,20000)")),
    (("--window",), dict(type=int, default=None, help="recent tokens the streaming cache keeps (default 1024)")),
    (("--sinks",), dict(type=int, default=None, help="first tokens the streaming cache keeps (default 4)")),
    (("--full-cache",), dict(action="store_true", help="also run every count with the full (unbounded) cache")),
]


def measure_one(model: str, tokens: int, window: Optional[int], sinks: int, prompt: int = 16, seed: int = 0,
                model_kwargs: Optional[Dict[str, Any]] = None, device: str = "cpu") -> Dict[str, Any]:
    """Generate ``tokens`` new tokens after a random ``prompt`` with ``model`` (window None: the full cache); run
    this in a fresh process (see the module docstring)."""
    import torch

    import zoo

    torch.manual_seed(seed)
    m = zoo.create(model, **dict(model_kwargs or {})).to(device).eval()
    m.allow_longer = True                                              # the full cache runs past max_seq_len
    vocab = m.vocab_size
    g = torch.Generator(device=device).manual_seed(seed)
    x = torch.randint(0, vocab, (1, prompt), generator=g, device=device)
    m.generate(x, 8, temperature=1.0, generator=g, window=window, sinks=sinks)   # warm-up
    from .memory import PeakMemory
    with PeakMemory(device, interval=0.005) as mem:
        t0 = time.perf_counter()
        out = m.generate(x, tokens, temperature=1.0, generator=g, window=window, sinks=sinks)
        dt = time.perf_counter() - t0
    before, peak = mem.base_mib, mem.peak_mib
    return {"model": model, "tokens": tokens, "cache": "full" if window is None else "streaming",
            "window": window, "sinks": sinks if window is not None else None, "prompt": prompt,
            "generated": int(out.shape[1] - prompt), "seconds": round(dt, 3), "tokens_per_s": round(tokens / dt, 1),
            "rss_before_mib": round(before, 1), "peak_mib": round(peak, 1),
            "growth_mib": round(max(0.0, peak - before), 1)}


def _run_worker(opts: Dict[str, Any]) -> Dict[str, Any]:
    proc = subprocess.run([sys.executable, "-m", "zoo.bench.streaming", "_worker", json.dumps(opts)],
                          capture_output=True, text=True)
    if proc.returncode != 0:
        raise RuntimeError(f"streaming worker {opts} failed:\n{proc.stderr[-3000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def streaming_bench(models: Sequence[str], tokens: Sequence[int] = (2000, 20000), window: int = 1024, sinks: int = 4,
                    full_cache: bool = False, prompt: int = 16, device: str = "cpu",
                    model_kwargs: Optional[Dict[str, Any]] = None, progress: bool = True,
                    json_path: Optional[str] = None) -> Dict[str, Any]:
    """Every model x cache x token count in its own subprocess; prints the table and returns ``{"rows", "ratios"}``
    (``ratios``: peak and growth of the longest count over the shortest, per model and cache)."""
    from tqdm import tqdm

    from ..errors import ConfigError

    tokens = sorted({int(t) for t in tokens})
    if not tokens or tokens[0] < 1:
        raise ConfigError(f"--tokens must be positive counts, got {tokens}")
    caches = [window] + ([None] if full_cache else [])
    cells = [(m, c, t) for m in models for c in caches for t in tokens]
    rows: List[Dict[str, Any]] = []
    for m, c, t in tqdm(cells, desc="zoo bench streaming", unit="run", disable=not progress, dynamic_ncols=True):
        rows.append(_run_worker({"model": m, "tokens": t, "window": c, "sinks": sinks, "prompt": prompt,
                                 "model_kwargs": model_kwargs or {}, "device": device}))
    ratios = []
    for m in models:
        for c in caches:
            mine = [r for r in rows if r["model"] == m and r["window"] == c]
            lo, hi = mine[0], mine[-1]
            ratios.append({"model": m, "cache": lo["cache"], "tokens": [lo["tokens"], hi["tokens"]],
                           "peak_ratio": round(hi["peak_mib"] / lo["peak_mib"], 4),
                           "growth_ratio": round(hi["growth_mib"] / max(lo["growth_mib"], 1e-9), 3)
                           if lo["growth_mib"] > 0 else None})
    print(f"zoo bench streaming: generate() with a bounded cache (sinks {sinks} + window {window})"
          + (" and the full cache" if full_cache else "") + f", {device}, one process per run")
    print(f"{'model':24s} {'cache':>9s} {'tokens':>7s} {'tok/s':>8s} {'peak MiB':>9s} {'growth MiB':>11s}")
    for r in rows:
        print(f"{r['model']:24s} {r['cache']:>9s} {r['tokens']:7d} {r['tokens_per_s']:8.1f} {r['peak_mib']:9.1f} "
              f"{r['growth_mib']:11.1f}")
    for q in ratios:
        print(f"{q['model']} {q['cache']}: peak x{q['peak_ratio']:.3f} from {q['tokens'][0]} to {q['tokens'][1]} "
              f"tokens" + (f" (growth x{q['growth_ratio']:.2f})" if q["growth_ratio"] is not None else ""))
    result = {"benchmark": "streaming", "window": window, "sinks": sinks, "prompt": prompt, "device": device,
              "rows": rows, "ratios": ratios}
    if json_path:
        from ..io import atomic_write_text
        atomic_write_text(json_path, json.dumps(result, indent=2) + "\n")
    return result


if __name__ == "__main__" and len(sys.argv) > 2 and sys.argv[1] == "_worker":
    print(json.dumps(measure_one(**json.loads(sys.argv[2]))))
