"""Long-sequence benchmark of the DNA transformers: forward + backward at 16k tokens on the CPU, time and peak memory
of every encoding against NoPE, each encoding in a subprocess of its own (so a peak RSS belongs to one model).

    python -m domains.genomics.long_bench --tokens 16384 --pes nope,alibi,kerple,t5,fire --depth 1

Per encoding the worker builds ``dna_{pe}_{model}`` (``dna_lm_...`` with ``causal``) with ``allow_longer=True``,
runs one warm-up forward + backward at ``warmup_tokens`` (default ``min(tokens, 2048)``: it warms the kernels without
doubling the cost of a 16k step), then one timed forward + backward at ``tokens`` (cross-entropy of the token logits
against random bases).  ``peak_rss`` is the worker's ``ru_maxrss``, ``step_rss`` the growth of the peak during the
timed step over the resident size before it.  Bias encodings go through the query-chunked attention
(`zoo.nn.chunked`) whenever their ``[b, h, n, n]`` bias would exceed ``Attention.max_bias_bytes``; ``chunk`` is the
number of query rows per chunk (``-`` = unchunked path).

Peak RSS and the C allocator.  ``peak_rss`` is what the OS sees, so it includes blocks glibc keeps after a free.  (A
small tensor kept alive per chunk once pinned each chunk's freed temporaries and the RSS grew by one ``[h, n, n]``
bias per layer; `zoo.nn.chunked.run_query_chunks` writes into one output buffer for that reason.)
``malloc_mmap_threshold=1 << 20`` (``MALLOC_MMAP_THRESHOLD_`` in the workers) returns every block of 1 MiB or more
to the OS on free, so the peak RSS follows the live tensors exactly, at a cost in time.

Ratios are against NoPE measured in the same run, never absolute thresholds (DESIGN.md: speed and memory live in
``zoo bench``).
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time
from pathlib import Path
from typing import Dict, List, Optional, Sequence

__all__ = ["long_sequence_bench", "measure_one"]

ROOT = Path(__file__).resolve().parents[2]
DEFAULT_PES = ("nope", "alibi", "rope", "kerple", "fire", "t5", "bipe")


def _rss_mib() -> float:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2 ** 20


def _peak_rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0          # KiB on Linux


def measure_one(pe: str, tokens: int = 16384, model: str = "tiny", batch: int = 1, depth: Optional[int] = None,
                causal: bool = False, warmup_tokens: Optional[int] = None, chunk_size: Optional[int] = None,
                seed: int = 0) -> Dict:
    """One encoding in this process: warm-up, then one timed forward + backward.  Returns a row (a dict)."""
    import torch
    import torch.nn.functional as F

    import zoo
    from domains.genomics.models import NUM_SPECIAL
    from zoo.nn import Attention

    torch.manual_seed(seed)
    name = f"dna_{'lm_' if causal else ''}{pe}_{model}"
    kw = dict(max_seq_len=tokens, allow_longer=True)
    if depth is not None:
        kw["depth"] = depth
    net = zoo.create(name, **kw).train()
    attns = [m for m in net.modules() if isinstance(m, Attention)]
    if chunk_size is not None:
        for a in attns:
            a.chunk_size = chunk_size

    def step(n: int) -> float:
        ids = torch.randint(NUM_SPECIAL, NUM_SPECIAL + 4, (batch, n))            # A C G T
        target = torch.randint(NUM_SPECIAL, NUM_SPECIAL + 4, (batch, n))
        t0 = time.perf_counter()
        logits = net(ids)                                                        # [b, n, vocab]
        loss = F.cross_entropy(logits.flatten(0, 1).float(), target.flatten())
        loss.backward()
        elapsed = time.perf_counter() - t0
        net.zero_grad(set_to_none=True)
        return elapsed

    step(min(tokens, 2048) if warmup_tokens is None else warmup_tokens)
    rss_before = _rss_mib()
    seconds = step(tokens)
    peak = _peak_rss_mib()
    a = attns[0]
    h, has_bias = a.num_heads, a.pe is not None and a.pe.has_bias
    q = torch.empty(batch, h, tokens, 0)                                         # shapes only
    chunk = a._query_chunk(q, q) if has_bias and not a.pe.needs_weights else None
    return dict(pe=pe, model=name, tokens=tokens, batch=batch, depth=len(net.blocks), seconds=round(seconds, 2),
                peak_rss_mib=round(peak, 1), step_rss_mib=round(max(peak - rss_before, 0.0), 1),
                chunk=chunk if chunk is not None else "-", torch_threads=torch.get_num_threads())


def long_sequence_bench(tokens: int = 16384, pes: Sequence[str] = DEFAULT_PES, model: str = "tiny", batch: int = 1,
                        depth: Optional[int] = None, causal: bool = False, warmup_tokens: Optional[int] = None,
                        chunk_size: Optional[int] = None, timeout: float = 1800.0, verbose: bool = True,
                        malloc_mmap_threshold: Optional[int] = None) -> List[Dict]:
    """Forward + backward at ``tokens`` for every encoding in ``pes`` (NoPE first: the baseline), each in its own
    subprocess; prints a table with time and peak-RSS ratios against NoPE and returns the rows.

    Args:
        tokens, batch: input size.
        pes: genomics encoding kinds (``domains.genomics.models.PE_KINDS``); "nope" is added when missing.
        model: "tiny" or "small"; ``depth`` overrides its number of blocks (e.g. 1 for a single layer).
        causal: the decoder (``dna_lm_*``) instead of the encoder.
        warmup_tokens: size of the warm-up step (default ``min(tokens, 2048)``).
        chunk_size: force ``Attention.chunk_size`` (None = automatic, 0 = never chunk).
        timeout: seconds per encoding; a worker that fails or times out gives a row with ``error``.
        malloc_mmap_threshold: bytes; sets glibc's ``MALLOC_MMAP_THRESHOLD_`` in the workers (module docstring).
    """
    pes = ["nope"] + [p for p in pes if p != "nope"]
    rows: List[Dict] = []
    for pe in pes:
        args = dict(pe=pe, tokens=tokens, model=model, batch=batch, depth=depth, causal=causal,
                    warmup_tokens=warmup_tokens, chunk_size=chunk_size)
        cmd = [sys.executable, "-m", "domains.genomics.long_bench", "--worker", json.dumps(args)]
        env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]))
        if malloc_mmap_threshold is not None:
            env["MALLOC_MMAP_THRESHOLD_"] = str(int(malloc_mmap_threshold))
        try:
            res = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=timeout)
            if res.returncode != 0:
                err = (res.stderr.strip().splitlines() or [f"exit code {res.returncode}"])[-1]
                row = dict(pe=pe, error=f"exit {res.returncode}: {err}")
            else:
                row = json.loads(res.stdout.strip().splitlines()[-1])
        except subprocess.TimeoutExpired:
            row = dict(pe=pe, error=f"timed out after {timeout:g} s")
        rows.append(row)
        if verbose:
            print(f"  measured {pe}: {row}", file=sys.stderr, flush=True)
    base = rows[0] if "error" not in rows[0] else None
    for r in rows:
        if base is not None and "error" not in r:
            r["time_vs_nope"] = round(r["seconds"] / base["seconds"], 2)
            r["peak_rss_vs_nope"] = round(r["peak_rss_mib"] / base["peak_rss_mib"], 2)
    if verbose:
        print(format_table(rows))
    return rows


def format_table(rows: Sequence[Dict]) -> str:
    cols = ("pe", "tokens", "depth", "chunk", "seconds", "time_vs_nope", "peak_rss_mib", "step_rss_mib",
            "peak_rss_vs_nope")
    lines = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    for r in rows:
        if "error" in r:
            lines.append(f"| {r['pe']} | " + " | ".join(["-"] * (len(cols) - 2)) + f" | {r['error']} |")
        else:
            lines.append("| " + " | ".join(str(r.get(c, "-")) for c in cols) + " |")
    return "\n".join(lines)


def main(argv: Optional[Sequence[str]] = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--worker", help=argparse.SUPPRESS)
    p.add_argument("--tokens", type=int, default=16384)
    p.add_argument("--pes", default=",".join(DEFAULT_PES))
    p.add_argument("--model", default="tiny", choices=("tiny", "small"))
    p.add_argument("--batch", type=int, default=1)
    p.add_argument("--depth", type=int, default=None)
    p.add_argument("--causal", action="store_true")
    p.add_argument("--warmup-tokens", type=int, default=None)
    p.add_argument("--chunk-size", type=int, default=None)
    p.add_argument("--timeout", type=float, default=1800.0)
    p.add_argument("--malloc-mmap-threshold", type=int, default=None)
    a = p.parse_args(argv)
    if a.worker:
        print(json.dumps(measure_one(**json.loads(a.worker))), flush=True)
        return
    long_sequence_bench(a.tokens, [s for s in a.pes.split(",") if s], a.model, a.batch, a.depth, a.causal,
                        a.warmup_tokens, a.chunk_size, a.timeout, malloc_mmap_threshold=a.malloc_mmap_threshold)


if __name__ == "__main__":
    main()
