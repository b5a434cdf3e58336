"""Long-input benchmark: forward-only (inference) and forward + backward (training) time and peak memory of every
model against a baseline measured in the same run, one subprocess per (model, mode) so that a peak belongs to one
measurement.

    zoo bench long [--tokens 16384] [--models nope,alibi,kerple] [--depth 1] [--mode fwd,fwdbwd] [--repeats 1]
                   [--device auto] [--out DIR] [--json FILE]
    zoo bench long --domain vision [--img-size 1024] [--models vit_rope_small] ...        (`zoo.bench.long_image`)
    python -m zoo.bench.long --model 'dna_{pe}_tiny' --low 5 --high 9 --tokens 16384 --pes nope,alibi --depth 1

Token sequences (this module).  The models come from the plugin that registers the suite: ``model`` is a
registered model name with ``{pe}`` in place of the encoding (``zoo.create(model.format(pe=pe))``), ``token_range``
the ids drawn as random input and targets; NoPE is the baseline.  Per (encoding, mode) the worker builds that model
with ``allow_longer=True``, runs one warm-up step at ``warmup_tokens`` (default ``min(tokens, 2048)``: it warms the
kernels without doubling the cost of a 16k step), then ``repeats`` timed steps at ``tokens``:

- ``fwd``: ``model.eval()`` under ``torch.inference_mode()``, the logits ``[b, n, vocab]`` and nothing else;
- ``fwdbwd``: ``model.train()``, cross-entropy of the logits against random tokens, ``backward()``.

Every step is float32 on ``--device``.  ``seconds`` is the median of the timed steps.  Memory: ``peak_rss_mib`` is
the worker's ``ru_maxrss`` (its whole life: import, build, warm-up, steps), ``step_rss_mib`` the growth of that peak
during the timed steps over the resident size before them; on CUDA ``peak_mib`` / ``step_mib`` are
``torch.cuda.max_memory_allocated`` over the timed steps and its growth over the memory allocated before them (on
the CPU they equal the RSS pair).  ``path`` is the attention's kernel (`zoo.nn.Attention.kernel_path`): ``sdpa``,
``toeplitz`` (a Toeplitz bias read from an O(n) table in the fused kernel), ``flex``, ``chunks of R`` (query chunks of
R rows: the bias is built R rows at a time), ``bias`` (one whole bias) or ``weights``.

Peak RSS and the C allocator.  ``peak_rss`` is what the OS sees, so it includes blocks glibc keeps after a free.  (A
small tensor kept alive per chunk once pinned each chunk's freed temporaries and the RSS grew by one ``[h, n, n]``
bias per layer; `zoo.nn.chunked.run_query_chunks` writes into one output buffer for that reason.)
``malloc_mmap_threshold=1 << 20`` (``MALLOC_MMAP_THRESHOLD_`` in the workers) returns every block of 1 MiB or more
to the OS on free, so the peak RSS follows the live tensors exactly, at a cost in time.

Ratios (``time_ratio``, ``peak_ratio``, ``step_ratio``) are against the baseline's row of the same mode measured in
the same run, never absolute thresholds (DESIGN.md: speed and memory live in ``zoo bench``).  Every row records the
machine (CPU model and count, torch threads, load average, commit; `zoo.bench.long_report`).
"""
from __future__ import annotations

import argparse
import json
import os
import re
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

from .long_report import MODES, add_ratios, format_note, format_table, machine_facts, write_outputs

__all__ = ["long_sequence_bench", "measure_one", "timed_steps", "run_jobs", "run_suite", "worker_command",
           "run_from_cli", "parse_modes", "check_positive", "resolve_device", "OPTIONS"]

ROOT = Path(__file__).resolve().parents[2]
#: the suite's own options (`zoo.bench.register_bench`); ``--models`` names the encodings.  ``--out`` and
#: ``--repeats`` may already be declared by another suite (then that declaration, with default None, is used)
OPTIONS = [
    (("--tokens",), dict(type=int, default=16384, help="sequence length (default 16384)")),
    (("--depth",), dict(type=int, default=None, help="blocks (default: the model's; 1 = one layer)")),
    (("--mode",), dict(default=None, help="zoo bench long: fwd (inference), fwdbwd (training step) or both, "
                                          "comma-separated (default fwd,fwdbwd)")),
    (("--repeats",), dict(type=int, default=None, help="zoo bench long: timed steps per measurement, median "
                                                       "(default 1)")),
    (("--out",), dict(default=None, help="output folder (long.json, long.md, long.png)")),
]
#: a worker that neither finishes nor fails within this many seconds gives an error row
DEFAULT_TIMEOUT = 1800.0


def _rss_mib() -> float:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2 ** 20


def _peak_rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0          # KiB on Linux


# ---- worker side: one (model, mode) in this process ----------------------------------------------------------------

def timed_steps(net, inputs: Tuple[Any, Any], warmup_inputs: Tuple[Any, Any], loss_fn: Callable, mode: str,
                repeats: int, device: str) -> Dict[str, Any]:
    """One warm-up step on ``warmup_inputs``, then ``repeats`` timed steps on ``inputs`` (``(x, target)`` each),
    ``mode`` ``"fwd"`` (eval, inference mode) or ``"fwdbwd"`` (train, ``loss_fn(net(x), target).backward()``).

    Returns ``seconds`` (median, s), ``times`` (every timed step, s), ``peak_rss_mib`` / ``step_rss_mib`` (MiB,
    module docstring), ``peak_mib`` / ``step_mib`` (what the ratios compare: CUDA allocator on CUDA, else the RSS
    pair), ``memory`` (which), ``torch_threads``, ``load_avg`` (1/5/15 min, before the timed steps), ``device`` and
    ``gpu`` (its name on CUDA)."""
    import torch

    if mode not in MODES:
        raise ValueError(f"mode must be one of {', '.join(MODES)}, got {mode!r}")
    dev = torch.device(device)
    cuda = dev.type == "cuda"
    train = mode == "fwdbwd"
    net.train(train)

    def sync():
        if cuda:
            torch.cuda.synchronize(dev)

    def step(x, target) -> float:
        sync()
        t0 = time.perf_counter()
        if train:
            loss_fn(net(x), target).backward()
        else:
            with torch.inference_mode():
                net(x)
        sync()
        elapsed = time.perf_counter() - t0
        if train:
            net.zero_grad(set_to_none=True)
        return elapsed

    step(*warmup_inputs)
    load = [round(v, 2) for v in os.getloadavg()]
    rss_before = _rss_mib()
    if cuda:
        torch.cuda.reset_peak_memory_stats(dev)
        alloc_before = torch.cuda.memory_allocated(dev) / 2 ** 20
    times = [step(*inputs) for _ in range(repeats)]
    peak_rss = _peak_rss_mib()
    row = dict(seconds=round(statistics.median(times), 4), times=[round(t, 4) for t in times],
               peak_rss_mib=round(peak_rss, 1), step_rss_mib=round(max(peak_rss - rss_before, 0.0), 1))
    if cuda:
        peak = torch.cuda.max_memory_allocated(dev) / 2 ** 20
        row.update(peak_mib=round(peak, 1), step_mib=round(max(peak - alloc_before, 0.0), 1),
                   memory="cuda_max_allocated", gpu=torch.cuda.get_device_name(dev))
    else:
        row.update(peak_mib=row["peak_rss_mib"], step_mib=row["step_rss_mib"], memory="rss", gpu=None)
    row.update(repeats=repeats, torch_threads=torch.get_num_threads(), load_avg=load, device=str(dev))
    return row


def measure_one(pe: str, model: str, token_range: Sequence[int], tokens: int = 16384, batch: int = 1,
                depth: Optional[int] = None, warmup_tokens: Optional[int] = None, chunk_size: Optional[int] = None,
                seed: int = 0, mode: str = "fwdbwd", repeats: int = 1, device: str = "cpu") -> Dict[str, Any]:
    """One encoding in one mode in this process: ``model.format(pe=pe)`` on random ids in
    ``[token_range[0], token_range[1])`` of shape ``[batch, tokens]`` (`timed_steps`).  Returns a row (a dict)."""
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
    net = zoo.create(name, **kw).to(device)
    attns = [m for m in net.modules() if isinstance(m, Attention)]
    if chunk_size is not None:
        for a in attns:
            a.chunk_size = chunk_size

    def ids(n: int):
        return (torch.randint(low, high, (batch, n), device=device),                # [b, n] input
                torch.randint(low, high, (batch, n), device=device))                # [b, n] targets

    def loss(logits, target):                                                       # logits [b, n, vocab]
        return F.cross_entropy(logits.flatten(0, 1).float(), target.flatten())

    row = timed_steps(net, ids(tokens), ids(min(tokens, 2048) if warmup_tokens is None else warmup_tokens), loss,
                      mode, repeats, device)
    path = attns[0].kernel_path(tokens, batch, device, grad=mode == "fwdbwd")
    return dict(pe=pe, model=name, tokens=tokens, batch=batch, depth=len(net.blocks), path=path, **row)


# ---- parent side: one subprocess per job, ratios, report -----------------------------------------------------------

def worker_command(job: Dict[str, Any]) -> List[str]:
    """The command that measures ``job`` (``{"kind", "label", "input", "args"}``) in a fresh interpreter."""
    return [sys.executable, "-m", "zoo.bench.long", "--worker", json.dumps(job)]


def _run_worker(job: Dict[str, Any]) -> Dict[str, Any]:
    if job["kind"] == "image":
        from .long_image import measure_image
        return measure_image(**job["args"])
    return measure_one(**job["args"])


def run_jobs(jobs: Sequence[Dict[str, Any]], timeout: float = DEFAULT_TIMEOUT,
             malloc_mmap_threshold: Optional[int] = None, verbose: bool = True) -> List[Dict[str, Any]]:
    """Run every job in a subprocess of its own, in order; returns one row per job with its ``label``, ``mode``
    and ``input``.  A worker that fails or runs past ``timeout`` seconds gives a row with ``error``."""
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]))
    if malloc_mmap_threshold is not None:
        env["MALLOC_MMAP_THRESHOLD_"] = str(int(malloc_mmap_threshold))
    rows: List[Dict[str, Any]] = []
    for job in jobs:
        ident = dict(label=job["label"], mode=job["args"]["mode"], input=job["input"])
        try:
            res = subprocess.run(worker_command(job), cwd=ROOT, env=env, capture_output=True, text=True,
                                 timeout=timeout)
            if res.returncode != 0:
                err = (res.stderr.strip().splitlines() or [f"exit code {res.returncode}"])[-1]
                row = dict(ident, error=f"exit {res.returncode}: {err}")
            else:
                row = dict(ident, **json.loads(res.stdout.strip().splitlines()[-1]))
        except subprocess.TimeoutExpired:
            row = dict(ident, error=f"timed out after {timeout:g} s")
        except (ValueError, IndexError) as e:                   # no JSON line on stdout
            row = dict(ident, error=f"unreadable worker output: {e}")
        rows.append(row)
        if verbose:
            shown = {k: v for k, v in row.items() if k not in ("times", "load_avg")}
            print(f"  measured {row['label']} ({row['mode']}): {shown}", file=sys.stderr, flush=True)
    return rows


def run_suite(jobs: Sequence[Dict[str, Any]], baseline: str, *, variant: Optional[str], input: str,
              modes: Sequence[str], repeats: int, device: str, label: str = "model", out: Optional[str] = None,
              timeout: float = DEFAULT_TIMEOUT, malloc_mmap_threshold: Optional[int] = None,
              verbose: bool = True) -> Dict[str, Any]:
    """`run_jobs`, then ratios against the rows labelled ``baseline`` (`long_report.add_ratios`), the machine
    facts on every row, the note and table printed, and with ``out`` the JSON, markdown and PNG written there.
    Returns the result: the settings, ``machine``, ``load_avg_after`` and ``rows``."""
    machine = machine_facts()
    rows = run_jobs(jobs, timeout, malloc_mmap_threshold, verbose)
    add_ratios(rows, baseline)
    for r in rows:
        r.update(cpu=machine["cpu"], cpus=machine["cpus"], commit=machine["commit"])
    result = dict(suite="long", variant=variant, baseline=baseline, input=input, modes=list(modes),
                  repeats=repeats, device=device, machine=machine,
                  load_avg_after=[round(v, 2) for v in os.getloadavg()], rows=rows)
    if verbose:
        print("\n" + format_note(result) + "\n\n" + format_table(rows, label), end="")
    if out:
        result["files"] = write_outputs(result, out, label)
        if verbose:
            print(f"wrote {', '.join(result['files'].values())}")
    return result


def long_sequence_bench(model: str, token_range: Sequence[int], pes: Sequence[str], tokens: int = 16384,
                        batch: int = 1, depth: Optional[int] = None, warmup_tokens: Optional[int] = None,
                        chunk_size: Optional[int] = None, timeout: float = DEFAULT_TIMEOUT, verbose: bool = True,
                        malloc_mmap_threshold: Optional[int] = None, modes: Sequence[str] = MODES,
                        repeats: int = 1, device: str = "cpu", out: Optional[str] = None,
                        variant: Optional[str] = None) -> Dict[str, Any]:
    """Every encoding in ``pes`` (NoPE first: the baseline) in every mode of ``modes``, each (encoding, mode) in its
    own subprocess (`measure_one`); returns the result of `run_suite` (rows with ratios against NoPE).

    Args:
        model: a registered model name with ``{pe}`` in place of the encoding, e.g. a plugin's ``"..._{pe}_tiny"``;
            ``depth`` overrides its number of blocks (e.g. 1 for a single layer).
        token_range: ``(low, high)``: input and target ids are drawn from ``[low, high)``.
        pes: encodings the model template is filled with; "nope" is added when missing.
        tokens, batch: input size ``[batch, tokens]``.
        warmup_tokens: size of the warm-up step (default ``min(tokens, 2048)``).
        chunk_size: force ``Attention.chunk_size`` (None = automatic, 0 = never chunk).
        timeout: seconds per worker; a worker that fails or times out gives a row with ``error``.
        malloc_mmap_threshold: bytes; sets glibc's ``MALLOC_MMAP_THRESHOLD_`` in the workers (module docstring).
        modes: ``"fwd"`` and/or ``"fwdbwd"``; repeats: timed steps per measurement (median).
        device: ``"cpu"``, ``"cuda"``, ``"cuda:N"``; out: folder for long.json / long.md / long.png.
        variant: the plugin's variant of the suite (shown in the report), e.g. its domain.
    """
    pes = ["nope"] + [p for p in pes if p != "nope"]
    jobs = [dict(kind="tokens", label=pe, input=f"{batch}x{tokens}" if batch > 1 else str(tokens),
                 args=dict(pe=pe, model=model, token_range=list(token_range), tokens=tokens, batch=batch,
                           depth=depth, warmup_tokens=warmup_tokens, chunk_size=chunk_size, mode=mode,
                           repeats=repeats, device=device))
            for mode in modes for pe in pes]
    return run_suite(jobs, "nope", variant=variant, input=f"{tokens:,} tokens, batch {batch}", modes=modes,
                     repeats=repeats, device=device, label="encoding", out=out, timeout=timeout,
                     malloc_mmap_threshold=malloc_mmap_threshold, verbose=verbose)


# ---- command line ------------------------------------------------------------------------------------------------

def parse_modes(text: Optional[str]) -> List[str]:
    """``"fwd,fwdbwd"`` -> ``["fwd", "fwdbwd"]`` in the order of `MODES` (None = both); anything else is a
    ConfigError naming ``--mode``."""
    from ..errors import ConfigError

    if text is None:
        return list(MODES)
    items = [t.strip() for t in str(text).split(",") if t.strip()]
    bad = [t for t in items if t not in MODES]
    if bad or not items:
        raise ConfigError(f"--mode: expected fwd, fwdbwd or fwd,fwdbwd, got {text!r}")
    return [m for m in MODES if m in items]


def check_positive(option: str, value: Optional[int], allow_none: bool = False) -> Optional[int]:
    """``value`` if it is an int >= 1 (or None with ``allow_none``), else a ConfigError naming ``option``."""
    from ..errors import ConfigError

    if value is None and allow_none:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ConfigError(f"{option} must be a positive integer, got {value!r}")
    return value


def resolve_device(name: Optional[str]) -> str:
    """``--device``: ``auto`` (CUDA when available), ``cpu``, ``cuda`` or ``cuda:N``; ConfigError otherwise."""
    import torch

    from ..errors import ConfigError

    name = name or "auto"
    if name == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if not re.fullmatch(r"cpu|cuda(:\d+)?", name):
        raise ConfigError(f"--device: expected auto, cpu, cuda or cuda:N, got {name!r}")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise ConfigError(f"--device {name}: no CUDA device is available (use --device auto or cpu)")
    return name


def common_options(args) -> Dict[str, Any]:
    """The options every variant shares, checked: modes, repeats, depth, batch, device, out."""
    def given(name: str, default: Any = None) -> Any:
        value = getattr(args, name, None)
        return default if value is None else value

    return dict(modes=parse_modes(given("mode")), repeats=check_positive("--repeats", given("repeats", 1)),
                depth=check_positive("--depth", given("depth"), allow_none=True),
                batch=check_positive("--batch-size", given("batch_size", 1)),
                device=resolve_device(getattr(args, "device", None)), out=getattr(args, "out", None))


def finish_cli(result: Dict[str, Any], args) -> int:
    """``--json FILE``: every row (a list), written atomically; exit code 1 when a row failed, else 0."""
    if getattr(args, "json", None):
        from ..io import atomic_write_text
        atomic_write_text(args.json, json.dumps(result["rows"], indent=2) + "\n")
    return 0 if all("error" not in r for r in result["rows"]) else 1


def run_from_cli(args) -> int:
    """``zoo bench long``: ``args.long_model``, ``args.long_token_range`` and ``args.long_pes`` (the default
    encodings) are the registering plugin's defaults; ``--models`` names the encodings."""
    import zoo

    from ..errors import ConfigError
    from .speed import parse_list

    template = str(getattr(args, "long_model", None))
    if "{pe}" not in template:
        raise ConfigError("zoo bench long needs a model name with '{pe}' (long_model) from the plugin registering it")
    opts = common_options(args)
    tokens = check_positive("--tokens", args.tokens)
    pes = parse_list(getattr(args, "models", None)) or list(args.long_pes)
    pattern = re.compile(re.escape(template).replace(re.escape("{pe}"), "(.+)"))
    known = sorted({m.group(1) for m in map(pattern.fullmatch, zoo.list_models()) if m})
    bad = [p for p in pes if p not in known]
    if bad:
        raise ConfigError(f"--models: no {template} for {', '.join(map(repr, bad))}; known encodings: "
                          f"{', '.join(known)}")
    result = long_sequence_bench(template, args.long_token_range, pes, tokens=tokens, depth=opts["depth"],
                                 batch=opts["batch"], modes=opts["modes"], repeats=opts["repeats"],
                                 device=opts["device"], out=opts["out"],
                                 variant=getattr(args, "long_variant", None) or getattr(args, "domain", None))
    return finish_cli(result, args)


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
    p.add_argument("--timeout", type=float, default=DEFAULT_TIMEOUT)
    p.add_argument("--malloc-mmap-threshold", type=int, default=None)
    p.add_argument("--mode", default=None, help="fwd, fwdbwd or both (default)")
    p.add_argument("--repeats", type=int, default=1)
    p.add_argument("--device", default="cpu")
    p.add_argument("--out", default=None)
    a = p.parse_args(argv)
    if a.worker:
        print(json.dumps(_run_worker(json.loads(a.worker))), flush=True)
        return
    if a.model is None or a.low is None or a.high is None:
        p.error("--model, --low and --high are required")
    long_sequence_bench(a.model, (a.low, a.high), [s for s in a.pes.split(",") if s], a.tokens, a.batch, a.depth,
                        a.warmup_tokens, a.chunk_size, a.timeout, malloc_mmap_threshold=a.malloc_mmap_threshold,
                        modes=parse_modes(a.mode), repeats=a.repeats, device=a.device, out=a.out)


if __name__ == "__main__":
    main()
