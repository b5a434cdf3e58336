"""Long-sequence benchmark over 1D encodings: forward + backward at 16k tokens, time and peak memory of every
encoding against NoPE, each encoding in a subprocess of its own (so a peak RSS belongs to one model).

    zoo bench long [--tokens 16384] [--models nope,alibi,kerple] [--depth 1]
    python -m zoo.bench.long --model 'dna_{pe}_tiny' --low 5 --high 9 --tokens 16384 --pes nope,alibi --depth 1

The models come from the plugin that registers the suite: ``model`` is a registered model name with ``{pe}`` in
place of the encoding (``zoo.create(model.format(pe=pe))``), ``token_range`` the ids drawn as random input and
targets. Per encoding the worker builds that model with ``allow_longer=True``, runs one warm-up forward + backward at
``warmup_tokens`` (default ``min(tokens, 2048)``: it warms the kernels without doubling the cost of a 16k step), then
one timed forward + backward at ``tokens`` (cross-entropy of the token logits against random tokens).
``peak_rss`` is the worker's ``ru_maxrss``, ``step_rss`` the growth of the peak during the timed step over the
resident size before it.  Bias encodings go through the query-chunked attention (`zoo.nn.chunked`) whenever their
``[b, h, n, n]`` bias would exceed ``Attention.max_bias_bytes``; ``chunk`` is the number of query rows per chunk
(``-`` = unchunked path).

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

__all__ = ["long_sequence_bench", "measure_one", "run_from_cli", "OPTIONS"]

ROOT = Path(__file__).resolve().parents[2]
#: the suite's own options (`zoo.bench.register_bench`); ``--models`` names the encodings
OPTIONS = [
    (("--tokens",), dict(type=int, default=16384, help="sequence length (default 16384)")),
    (("--depth",), dict(type=int, default=None, help="blocks (default: the model's; 1 = one layer)")),
]


def _rss_mib() -> float:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2 ** 20


def _peak_rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0          # KiB on Linux


def measure_one(pe: str, model: str, token_range: Sequence[int], tokens: int = 16384, batch: int = 1,
                depth: Optional[int] = None, warmup_tokens: Optional[int] = None, chunk_size: Optional[int] = None,
                seed: int = 0) -> Dict:
    """One encoding in this process: warm-up, then one timed forward + backward of ``model.format(pe=pe)`` on
    random ids in ``[token_range[0], token_range[1])``.  Returns a row (a dict)."""
    import torch
    import torch.nn.functional as F

    import zoo
    from zoo.nn import Attention

    torch.manual_seed(seed)
    name = model.format(pe=pe)
    low, high = (int(v) for v in token_range)
    kw = dict(max_seq_len=tokens, allow_longer=True)
    if depth is not None:
        kw["depth"] = depth
    net = zoo.create(name, **kw).train()
    attns = [m for m in net.modules() if isinstance(m, Attention)]
    if chunk_size is not None:
        for a in attns:
            a.chunk_size = chunk_size

    def step(n: int) -> float:
        ids = torch.randint(low, high, (batch, n))                               # [b, n]
        target = torch.randint(low, high, (batch, n))
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
    return dict(pe=pe, model=name, tokens=tokens, batch=batch, depth=len(net.blocks), seconds=round(seconds, 4),
                peak_rss_mib=round(peak, 1), step_rss_mib=round(max(peak - rss_before, 0.0), 1),
                chunk=chunk if chunk is not None else "-", torch_threads=torch.get_num_threads())


def long_sequence_bench(model: str, token_range: Sequence[int], pes: Sequence[str], tokens: int = 16384,
                        batch: int = 1, depth: Optional[int] = None, warmup_tokens: Optional[int] = None,
                        chunk_size: Optional[int] = None, timeout: float = 1800.0, verbose: bool = True,
                        malloc_mmap_threshold: Optional[int] = None) -> List[Dict]:
    """Forward + backward at ``tokens`` for every encoding in ``pes`` (NoPE first: the baseline), each in its own
    subprocess; prints a table with time and peak-RSS ratios against NoPE and returns the rows.

    Args:
        model: a registered model name with ``{pe}`` in place of the encoding, e.g. a plugin's ``"..._{pe}_tiny"``;
            ``depth`` overrides its number of blocks (e.g. 1 for a single layer).
        token_range: ``(low, high)``: input and target ids are drawn from ``[low, high)``.
        pes: encodings the model template is filled with; "nope" is added when missing.
        tokens, batch: input size.
        warmup_tokens: size of the warm-up step (default ``min(tokens, 2048)``).
        chunk_size: force ``Attention.chunk_size`` (None = automatic, 0 = never chunk).
        timeout: seconds per encoding; a worker that fails or times out gives a row with ``error``.
        malloc_mmap_threshold: bytes; sets glibc's ``MALLOC_MMAP_THRESHOLD_`` in the workers (module docstring).
    """
    pes = ["nope"] + [p for p in pes if p != "nope"]
    rows: List[Dict] = []
    for pe in pes:
        args = dict(pe=pe, model=model, token_range=list(token_range), tokens=tokens, batch=batch, depth=depth,
                    warmup_tokens=warmup_tokens, chunk_size=chunk_size)
        cmd = [sys.executable, "-m", "zoo.bench.long", "--worker", json.dumps(args)]
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


def run_from_cli(args) -> int:
    """``zoo bench long``: ``args.long_model``, ``args.long_token_range`` and ``args.long_pes`` (the default
    encodings) are the registering plugin's defaults; ``--models`` names the encodings."""
    from .speed import parse_list

    if "{pe}" not in str(getattr(args, "long_model", None)):
        from ..errors import ConfigError
        raise ConfigError("zoo bench long needs a model name with '{pe}' (long_model) from the plugin registering it")
    pes = parse_list(getattr(args, "models", None)) or list(args.long_pes)
    rows = long_sequence_bench(args.long_model, args.long_token_range, pes, tokens=args.tokens, depth=args.depth,
                               batch=args.batch_size or 1)
    if getattr(args, "json", None):
        from ..io import atomic_write_text
        atomic_write_text(args.json, json.dumps(rows, indent=2))
    return 0 if all("error" not in r for r in rows) else 1


def main(argv: Optional[Sequence[str]] = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--worker", help=argparse.SUPPRESS)
    p.add_argument("--model", help="registered model name with {pe}, e.g. dna_{pe}_tiny")
    p.add_argument("--low", type=int, help="lowest token id drawn")
    p.add_argument("--high", type=int, help="one past the highest token id drawn")
    p.add_argument("--tokens", type=int, default=16384)
    p.add_argument("--pes", default="nope,alibi,rope")
    p.add_argument("--batch", type=int, default=1)
    p.add_argument("--depth", type=int, default=None)
    p.add_argument("--warmup-tokens", type=int, default=None)
    p.add_argument("--chunk-size", type=int, default=None)
    p.add_argument("--timeout", type=float, default=1800.0)
    p.add_argument("--malloc-mmap-threshold", type=int, default=None)
    a = p.parse_args(argv)
    if a.worker:
        print(json.dumps(measure_one(**json.loads(a.worker))), flush=True)
        return
    if a.model is None or a.low is None or a.high is None:
        p.error("--model, --low and --high are required")
    long_sequence_bench(a.model, (a.low, a.high), [s for s in a.pes.split(",") if s], a.tokens, a.batch, a.depth,
                        a.warmup_tokens, a.chunk_size, a.timeout, malloc_mmap_threshold=a.malloc_mmap_threshold)


if __name__ == "__main__":
    main()
