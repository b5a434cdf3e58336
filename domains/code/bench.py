"""Code-LM benchmarks: length extrapolation (quality) and training / generation speed (ratios).

    zoo bench extrapolation --domain code [--steps 300] [--lengths 512,1024,2048,4096,8192] [--models a,b] [--out D]
    zoo bench extrapolation --domain code --runs runs/code_lm_nope_tiny_pystdlib,runs/code_lm_rope_tiny_pystdlib,...
    zoo bench code [--models a,b] [--seq-len 512] [--batch-size 8]

**Extrapolation.** One byte-level BPE is trained on the training split and shared by every model. Each
``code_lm_*_tiny`` model is trained with the ``causal_lm`` fine-tune engine for ``--steps`` steps at
``--train-len`` tokens (same data order, seed and schedule for all), then its perplexity is measured on the test
split at every length of ``--lengths`` with ``allow_longer=True`` (the models' switch to run past
``max_seq_len``). At every length the same first ``--eval-tokens`` test tokens are scored (``eval_tokens // L``
non-overlapping windows of ``L`` tokens), so a column compares models on the same text and a row shows what a longer
context does to one model. Written to ``--out``: ``extrapolation.json`` (every number), ``extrapolation.png``
(perplexity vs length, log-log), ``tokenizer.json`` and one training run folder per model under ``runs/``.
With ``--runs``, nothing is trained: the finished ``causal_lm`` runs given (e.g. the ``configs/code`` recipes, all
at one training length) are scored, each with the tokenizer saved in its run folder.

**Speed.** Each model runs in its own subprocess, interleaved with the baseline ``code_lm_nope_small`` over
``--rounds`` rounds (``zoo.bench.interleaved``): forward+backward tokens/s on random tokens at ``--seq-len``, and
``generate()`` tokens/s (greedy, batch 1) with the KV cache and without it. Reported as ratios to the baseline and
cache/no-cache speed-ups; absolute numbers are for this machine only.
"""
from __future__ import annotations

import json
import statistics
import sys
import time
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Tuple

__all__ = ["extrapolation", "speed", "EXTRAPOLATION_MODELS", "SPEED_BASELINE", "SPEED_MODELS",
           "DEFAULT_LENGTHS", "run_extrapolation", "run_speed"]

PE_ORDER = ("nope", "rope", "alibi", "hirope", "bipe")
EXTRAPOLATION_MODELS = tuple(f"code_lm_{pe}_tiny" for pe in PE_ORDER)
SPEED_BASELINE = "code_lm_nope_small"
SPEED_MODELS = tuple(f"code_lm_{pe}_small" for pe in PE_ORDER if pe != "nope")
DEFAULT_LENGTHS = (512, 1024, 2048, 4096, 8192)


def _check_models(models: Sequence[str]) -> List[str]:
    import zoo
    from zoo.errors import ConfigError

    import domains.code.models  # noqa: F401  (registers the code models)
    known = set(zoo.list_models("code_lm_*"))
    bad = [m for m in models if m not in known]
    if bad:
        raise ConfigError(f"unknown code model(s) {', '.join(bad)}; known: {', '.join(sorted(known))}")
    if not models:
        raise ConfigError("--models is empty")
    return list(models)


# ---- extrapolation -----------------------------------------------------------------------------------------------

def extrapolation(models: Optional[Sequence[str]] = None, steps: int = 300,
                  lengths: Sequence[int] = DEFAULT_LENGTHS, train_len: int = 512, batch_size: int = 16,
                  out: str = "runs/bench/extrapolation_code", eval_tokens: int = 32768, dataset: str = "cpython_stdlib",
                  root: Optional[str] = None, vocab_size: int = 8192, tokenizer_files: Optional[int] = 400,
                  lr: float = 2e-3, model_kwargs: Optional[Dict[str, Any]] = None, amp: str = "auto",
                  device: str = "auto", seed: int = 0, progress: bool = True,
                  runs: Optional[Sequence[str]] = None, retrain: bool = False, extend: str = "none",
                  longrope_factors: Optional[str] = None) -> Dict[str, Any]:
    """Train every model of ``models`` at ``train_len`` tokens and score it at every length of ``lengths``; writes
    and returns the results (see the module docstring). ``amp="auto"`` is bf16 autocast where the device computes bf16 natively (`zoo.bench.bf16_native`).

    ``runs``: finished ``causal_lm`` run folders (e.g. the ``configs/code`` recipes' outputs) to score instead of
    training: each model is scored with its own tokenizer on the test split of ``dataset``; ``models``, ``steps``
    and ``train_len`` then come from the runs.  A model already trained in ``out`` with the same config and
    tokenizer is reused (scored again, not retrained) unless ``retrain``.

    ``extend``: training-free context extensions (`zoo.extend`) each model is also scored with: ``"none"``, ``"all"``
    (every method that fits a model's encoding; LongRoPE when ``longrope_factors`` names a search result) or
    comma-separated names; a method that does not fit a model is skipped for it (``skipped`` in the result)."""
    from types import SimpleNamespace

    from zoo.errors import ConfigError
    from zoo.extrapolation import finished_run
    from zoo.finetune import finetune
    from zoo.bench import autocast as _autocast, resolve_device as _resolve_device

    from domains.code.data import tokenize_files
    from domains.code.task import get_tokenizer, load_run, open_source_tree, stream_tensors
    from domains.code.tokenizer import TOKENIZER_FILE

    if not runs:
        models = _check_models(list(models or EXTRAPOLATION_MODELS))
    lengths = sorted({int(v) for v in lengths})
    if not lengths or lengths[0] < 2:
        raise ConfigError(f"--lengths must be token counts >= 2, got {lengths}")
    if eval_tokens < 1 or (not runs and (steps < 1 or train_len < 2)):
        raise ConfigError(f"--steps ({steps}), --train-len ({train_len}) and --eval-tokens ({eval_tokens}) must be "
                          f"positive")
    out_dir = Path(out).expanduser()
    dev = _resolve_device(device)
    autocast, used = _autocast(amp, dev)
    amp_mode = used or "off"
    tree = open_source_tree(dataset, root)
    if runs:
        return _extrapolation_of_runs(runs, lengths, out_dir, eval_tokens, tree, dev, amp_mode, autocast, progress,
                                      extend, longrope_factors)

    # one tokenizer and one test stream for every model
    d = SimpleNamespace(tokenizer=None, vocab_size=vocab_size, tokenizer_files=tokenizer_files)
    tokenizer = get_tokenizer(d, tree.split("train"), progress=progress)
    test = tokenize_files(tree.split("test"), tokenizer, progress=progress, cache_dir=True)
    if len(test) < lengths[-1] + 1:
        raise ConfigError(f"the test split of {tree.name} has {len(test)} tokens, fewer than the longest length "
                          f"{lengths[-1]} + 1; drop it from --lengths")
    stream = {k: v.to(dev) for k, v in stream_tensors(test).items()}
    tok_path = tokenizer.save(out_dir)

    from zoo.extend import resolve_methods

    rows, train, labels, skipped = [], {}, [], {}
    for name in models:
        run_dir = out_dir / "runs" / name
        cfg = {"task": "causal_lm",
               "model": {"name": name, "kwargs": dict(model_kwargs or {})},
               "data": {"name": dataset, "root": root, "seq_len": train_len, "tokenizer": str(tok_path),
                        "eval_limit": max(1, eval_tokens // train_len)},
               "optim": {"lr": lr, "weight_decay": 0.1, "warmup_ratio": 0.05, "min_lr_ratio": 0.1},
               "train": {"steps": steps, "batch_size": batch_size, "seed": seed, "amp": amp_mode,
                         "device": device, "eval_batch_size": batch_size, "progress": progress,
                         "log_every": max(1, min(20, steps))},
               "output": {"dir": str(run_dir), "overwrite": True}}
        summary = None if retrain else finished_run(run_dir, cfg, [(TOKENIZER_FILE, tok_path)])
        if summary is not None:
            print(f"{name}: reusing the finished run {run_dir} (same config and tokenizer; --retrain trains it "
                  f"again)", file=sys.stderr)
        else:
            summary = finetune(cfg)
        train[name] = {"eval_loss_at_train_len": summary["final"].get("loss"), "params": summary["params"],
                       "wall_time_s": summary["wall_time_s"], "run_dir": str(run_dir)}
        model, _ = load_run(run_dir, device=dev, allow_longer=True)
        new, scored, skip = _score_methods(run_dir, model, name, resolve_methods(extend, model, longrope_factors),
                                           stream, lengths, eval_tokens, train_len, tokenizer.pad_id, autocast, dev,
                                           progress)
        rows += new
        labels += scored
        if skip:
            skipped[name] = skip
        del model

    result = {"benchmark": "extrapolation", "domain": "code", "dataset": tree.name, "fingerprint": tree.fingerprint,
              "train_len": train_len, "steps": steps, "batch_size": batch_size, "lr": lr, "seed": seed,
              "lengths": lengths, "eval_tokens": eval_tokens, "vocab_size": tokenizer.vocab_size,
              "device": str(dev), "amp": amp_mode, "models": labels, "train": train, "rows": rows,
              "extend": extend, "skipped": skipped}
    result = _write_result(result, out_dir)
    result["files"]["tokenizer"] = str(tok_path)
    return result


def _score_methods(run_dir: Path, model, name: str, methods, stream, lengths: Sequence[int], eval_tokens: int,
                   train_len: int, pad_id: int, autocast, dev, progress: bool) -> Tuple[List[Dict[str, Any]],
                                                                                       List[str], List[str]]:
    """`zoo.extrapolation.score_methods` for the run in ``run_dir`` on the token ``stream`` (`lm_metrics`): each
    extension's cell rebuilds the model from the run with the method's overrides and the trained weights."""
    from zoo.extrapolation import score_methods

    from domains.code.task import lm_metrics, load_run

    def metrics(m, length, windows, batch):
        return lm_metrics(m, stream, length, windows, batch, pad_id, autocast)

    def rebuild(overrides):
        return load_run(run_dir, device=dev, allow_longer=True, overrides=overrides)[0]
    return score_methods(model, name, methods, lengths, train_len, eval_tokens, metrics, rebuild, progress)


def _write_result(result: Dict[str, Any], out_dir: Path) -> Dict[str, Any]:
    from zoo.extrapolation import write_result

    return write_result(result, out_dir, format_extrapolation, plot_extrapolation)


def _run_labels(runs: Sequence[str]) -> Dict[str, str]:
    """The row label of each run folder: its model's name, or ``"name (folder)"`` where two runs hold the same model
    (a run and its fine-tune).  A folder passed twice is refused (ConfigError)."""
    from zoo.errors import ConfigError

    seen: Dict[Path, str] = {}
    names: Dict[str, Optional[str]] = {}
    for run in runs:
        path = Path(run).expanduser().resolve()
        if path in seen:
            raise ConfigError(f"--runs: {run} is passed twice ({seen[path]} is the same folder)")
        seen[path] = run
        try:                                                     # unreadable: load_run names the problem later
            names[run] = json.loads((path / "summary.json").read_text())["model"]
        except (OSError, ValueError, KeyError, TypeError):
            names[run] = None
    counts: Dict[Optional[str], int] = {}
    for name in names.values():
        counts[name] = counts.get(name, 0) + 1
    labels = {run: name if counts[name] == 1 else f"{name} ({Path(run).expanduser().resolve().name})"
              for run, name in names.items()}
    if len(set(labels.values())) < len(labels):
        raise ConfigError(f"--runs: runs of one model in folders of one name ({', '.join(runs)}): rename a folder")
    return labels


def _extrapolation_of_runs(runs: Sequence[str], lengths: List[int], out_dir: Path, eval_tokens: int, tree, dev,
                           amp_mode: str, autocast, progress: bool, extend: str = "none",
                           longrope_factors: Optional[str] = None) -> Dict[str, Any]:
    """`extrapolation` on finished run folders (arguments already checked): no training, each model with the
    tokenizer saved in its run, on the test split of ``tree``."""
    import hashlib

    from zoo.errors import ConfigError

    from domains.code.data import tokenize_files
    from domains.code.task import load_run, stream_tensors
    from domains.code.tokenizer import TOKENIZER_FILE

    test_files = tree.split("test")
    streams: Dict[str, Any] = {}                                  # tokenizer digest -> test stream
    from zoo.extend import resolve_methods

    rows, train, models, train_lens, steps, skipped = [], {}, [], set(), set(), {}
    run_label = _run_labels(runs)
    for run in runs:
        run_dir = Path(run).expanduser()
        summary_path = run_dir / "summary.json"
        model, tokenizer = load_run(run_dir, device=dev, allow_longer=True)   # checks the run's files
        summary = json.loads(summary_path.read_text())
        name = run_label[run]
        train_len = int((summary.get("data") or {}).get("seq_len") or 0)
        if train_len < 2:
            raise ConfigError(f"{summary_path}: no training length (data.seq_len) in the run summary")
        digest = hashlib.sha256((run_dir / TOKENIZER_FILE).read_bytes()).hexdigest()[:16]
        if digest not in streams:
            test = tokenize_files(test_files, tokenizer, progress=progress, cache_dir=True)
            if len(test) < lengths[-1] + 1:
                raise ConfigError(f"the test split of {tree.name} has {len(test)} tokens with the tokenizer of "
                                  f"{run_dir}, fewer than the longest length {lengths[-1]} + 1; drop it from "
                                  f"--lengths")
            streams[digest] = {k: v.to(dev) for k, v in stream_tensors(test).items()}
        if train_lens and train_len not in train_lens:
            raise ConfigError(f"--runs: {run_dir} was trained at {train_len} tokens, the others at "
                              f"{train_lens.pop()}: compare runs of one training length")
        train_lens.add(train_len)
        steps.add(int(summary.get("steps") or 0))
        train[name] = {"eval_loss_at_train_len": summary["final"].get("loss"), "params": summary["params"],
                       "wall_time_s": summary["wall_time_s"], "run_dir": str(run_dir), "steps": summary.get("steps"),
                       "train_len": train_len, "tokenizer_sha256": digest}
        methods = resolve_methods(extend, model, longrope_factors)
        new, labels, skip = _score_methods(run_dir, model, name, methods, streams[digest], lengths, eval_tokens,
                                           train_len, tokenizer.pad_id, autocast, dev, progress)
        rows += new
        models += labels
        if skip:
            skipped[name] = skip
            print(f"{name}: {', '.join(skip)} do(es) not fit its encoding; skipped", file=sys.stderr)
        del model
    if len(streams) > 1:
        print(f"note: the runs use {len(streams)} different tokenizers: perplexities per token are not comparable "
              f"between them", file=sys.stderr)
    result = {"benchmark": "extrapolation", "domain": "code", "dataset": tree.name, "fingerprint": tree.fingerprint,
              "train_len": train_lens.pop(),
              "steps": steps.pop() if len(steps) == 1 else sorted(steps), "batch_size": None, "lr": None,
              "seed": None, "lengths": lengths, "eval_tokens": eval_tokens, "vocab_size": None,
              "device": str(dev), "amp": amp_mode, "models": models, "train": train, "rows": rows,
              "from_runs": [str(r) for r in runs], "tokenizers": len(streams), "extend": extend,
              "skipped": skipped}
    return _write_result(result, out_dir)


def format_extrapolation(result: Dict[str, Any]) -> str:
    """The perplexity table: one row per model, one column per length (``*`` marks the training length)."""
    from zoo.extrapolation import format_ppl_table

    if result.get("from_runs"):
        trained = (f"models of {len(result['from_runs'])} finished runs ({result['steps']} steps at "
                   f"{result['train_len']} tokens, {result['tokenizers']} tokenizer(s))")
    else:
        trained = (f"trained {result['steps']} steps x {result['batch_size']} windows at {result['train_len']} "
                   f"tokens")
    title = (f"zoo bench extrapolation --domain code: test perplexity on {result['dataset']}, {trained} "
             f"({result['device']}, {result['amp']}); {result['eval_tokens']} test tokens per length")
    return format_ppl_table(result, title, name_width=24, col_width=10, decimals=2)


def plot_extrapolation(result: Dict[str, Any], path: Path) -> Path:
    """Perplexity vs evaluation length (log-log), one line per model; written atomically as PNG."""
    from zoo.extrapolation import plot_ppl_vs_length

    return plot_ppl_vs_length(
        result, path, xlabel="evaluation length (tokens); dotted: training length", ylabel="test perplexity",
        title=f"Length extrapolation on {result['dataset']} ({result['steps']} steps at {result['train_len']})")


# ---- speed -------------------------------------------------------------------------------------------------------

def _speed_worker(spec: str, batch: int, seq_len: int, iters: int, warmup: int, device: str, prompt: int,
                  new_tokens: int, gen_iters: int) -> Dict[str, Any]:
    import torch

    import zoo
    from domains.code.models import code_positions
    from zoo.bench import autocast

    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    torch.manual_seed(0)
    vocab = 8192
    model = zoo.create(spec, vocab_size=vocab, max_seq_len=max(seq_len, prompt + new_tokens)).to(device)
    newlines = list(range(10, 20))                     # pretend ids: some lines, so BiPE has segments to read

    def positions(x):
        return code_positions(x, newlines, vocab_size=vocab, flat_levels=True)

    x = torch.randint(4, vocab, (batch, seq_len + 1), device=device)
    inp, labels = x[:, :-1], x[:, 1:]
    pos = positions(inp)
    amp, amp_used = autocast("auto", torch.device(device))       # bf16 only where the device has it natively

    def step():
        with amp():
            logits = model(inp, pos)
        torch.nn.functional.cross_entropy(logits.float().flatten(0, 1), labels.flatten()).backward()
        model.zero_grad(set_to_none=True)

    def sync():
        if device == "cuda":
            torch.cuda.synchronize()

    model.train()
    for _ in range(warmup):
        step()
    sync()
    times = []
    for _ in range(iters):
        t = time.perf_counter()
        step()
        sync()
        times.append(time.perf_counter() - t)

    model.eval()
    p = torch.randint(4, vocab, (1, prompt), device=device)
    gen = {}
    for use_cache in (True, False):
        ts = []
        for i in range(gen_iters + 1):                  # the first call warms up
            sync()
            t = time.perf_counter()
            with amp():
                model.generate(p, new_tokens, temperature=0.0, use_cache=use_cache, pos=positions(p))
            sync()
            if i:
                ts.append(time.perf_counter() - t)
        gen[use_cache] = statistics.median(ts)
    # the cache must not change what is generated: greedy decoding in float32 (bf16 could flip near-ties)
    same = bool(torch.equal(model.generate(p, new_tokens, temperature=0.0, use_cache=True, pos=positions(p)),
                            model.generate(p, new_tokens, temperature=0.0, use_cache=False, pos=positions(p))))
    return {"model": spec, "device": device, "amp": amp_used or "off",
            "params": sum(q.numel() for q in model.parameters()),
            "train_times": times, "train_tokens": batch * seq_len,
            "gen_cache_s": gen[True], "gen_nocache_s": gen[False], "new_tokens": new_tokens,
            "greedy_same": same}


def _speed_run_one(spec: str, opts: Dict[str, Any]) -> Dict[str, Any]:
    from zoo.bench import run_worker

    return run_worker("domains.code.bench", spec, json.dumps(opts))


def speed(models: Optional[Sequence[str]] = None, baseline: str = SPEED_BASELINE, batch: int = 8,
          seq_len: int = 512, iters: int = 5, warmup: int = 2, device: str = "auto", prompt: int = 128,
          new_tokens: int = 64, gen_iters: int = 2, rounds: int = 2, progress: bool = True,
          json_path: Optional[str] = None) -> List[Dict[str, Any]]:
    """Training and generation speed of ``models`` as ratios to ``baseline`` measured in the same run."""
    from zoo.bench import interleaved

    candidates = [m for m in _check_models(list(models or SPEED_MODELS)) if m != baseline]
    specs = _check_models([baseline]) + candidates
    opts = dict(batch=batch, seq_len=seq_len, iters=iters, warmup=warmup, device=device, prompt=prompt,
                new_tokens=new_tokens, gen_iters=gen_iters)
    results = interleaved(specs, lambda s: _speed_run_one(s, opts), rounds, "bench code", progress)

    def summarise(spec):
        rs = results[spec]
        t = statistics.median([x for r in rs for x in r["train_times"]])
        gc = statistics.median([r["gen_cache_s"] for r in rs])
        gn = statistics.median([r["gen_nocache_s"] for r in rs])
        n = rs[0]["new_tokens"]
        return {"model": spec, "train_tokens_per_s": rs[0]["train_tokens"] / t,
                "gen_cache_tokens_per_s": n / gc, "gen_nocache_tokens_per_s": n / gn, "cache_speedup": gn / gc,
                "greedy_same_with_and_without_cache": all(r["greedy_same"] for r in rs),
                "params": rs[0]["params"], "device": rs[0]["device"], "amp": rs[0]["amp"]}

    rows = [summarise(s) for s in specs]
    base = rows[0]
    for r in rows:
        r["train_speed_vs_baseline"] = r["train_tokens_per_s"] / base["train_tokens_per_s"]
        r["gen_speed_vs_baseline"] = r["gen_cache_tokens_per_s"] / base["gen_cache_tokens_per_s"]
    print(f"\nzoo bench code: forward+backward at batch {batch} x {seq_len} tokens, greedy generate() of "
          f"{new_tokens} tokens after a {prompt}-token prompt (batch 1), {rows[0]['device']}, amp {rows[0]['amp']}, "
          f"median of {rounds} rounds; baseline {baseline}")
    print(f"{'model':22s} {'train tok/s':>12s} {'train x':>8s} {'gen tok/s':>10s} {'gen x':>6s} "
          f"{'no-cache tok/s':>15s} {'cache x':>8s} {'params':>8s}")
    for r in rows:
        print(f"{r['model']:22s} {r['train_tokens_per_s']:12.0f} {r['train_speed_vs_baseline']:8.3f} "
              f"{r['gen_cache_tokens_per_s']:10.1f} {r['gen_speed_vs_baseline']:6.2f} "
              f"{r['gen_nocache_tokens_per_s']:15.1f} {r['cache_speedup']:8.2f} {r['params'] / 1e6:7.2f}M")
    if json_path:
        from zoo.io import atomic_write_text
        atomic_write_text(json_path, json.dumps(rows, indent=2) + "\n")
    return rows


# ---- command line ------------------------------------------------------------------------------------------------

_RUNS_OPTION = [(("--runs",), dict(default=None, help="comma-separated finished causal_lm run folders to score "
                                                      "instead of training (e.g. the configs/code recipes' outputs)"))]
SPEED_OPTIONS = [
    (("--seq-len",), dict(type=int, default=512, help="tokens per training sequence")),
    (("--prompt",), dict(type=int, default=128, help="prompt tokens for generate()")),
    (("--new-tokens",), dict(type=int, default=64, help="tokens generate() appends")),
    (("--rounds",), dict(type=int, default=2, help="interleaved rounds over the models")),
]


def run_extrapolation(args) -> int:
    """``zoo bench extrapolation --domain code`` (arguments from ``zoo bench``, defaults applied)."""
    from zoo.bench import parse_list

    if getattr(args, "merge", None):
        from zoo.extrapolation import merge_files
        result = merge_files(parse_list(args.merge), domain="code")
        result = _write_result(result, Path(args.out or "runs/bench/extrapolation_code").expanduser())
    else:
        lengths = parse_list(getattr(args, "lengths", None), int) or list(DEFAULT_LENGTHS)
        result = extrapolation(models=parse_list(getattr(args, "models", None)), steps=args.steps, lengths=lengths,
                               train_len=args.train_len, runs=parse_list(getattr(args, "runs", None)),
                               retrain=bool(getattr(args, "retrain", False)),
                               batch_size=args.batch_size or 16, eval_tokens=args.eval_tokens,
                               out=args.out or "runs/bench/extrapolation_code", root=args.data_root,
                               dataset="source_tree" if args.data_root else "cpython_stdlib",
                               device=args.device, progress=not args.quiet,
                               extend=getattr(args, "extend", None) or "none",
                               longrope_factors=getattr(args, "longrope_factors", None))
    if getattr(args, "json", None):
        from zoo.io import atomic_write_text
        atomic_write_text(args.json, json.dumps(result, indent=2) + "\n")
    return 0


def run_speed(args) -> int:
    """``zoo bench code`` (arguments from ``zoo bench``)."""
    from zoo.bench import parse_list

    speed(models=parse_list(getattr(args, "models", None)), batch=args.batch_size or 8, seq_len=args.seq_len,
          iters=args.iters, warmup=args.warmup, device=args.device, prompt=args.prompt, new_tokens=args.new_tokens,
          rounds=args.rounds, baseline=SPEED_BASELINE, progress=not args.quiet, json_path=getattr(args, "json", None))
    return 0


def longrope_search(run: str, target_len: int, out: str, eval_tokens: int = 8192, population: int = 16,
                    generations: int = 6, parents: int = 8, mutations: int = 4, crossovers: int = 4,
                    dataset: str = "cpython_stdlib", root: Optional[str] = None, split: str = "val",
                    device: str = "auto", seed: int = 0, progress: bool = True) -> Dict[str, Any]:
    """LongRoPE's factor search (`zoo.longrope_search.evolution_search`, the paper's seeds and operators, a small
    budget) for the finished ``causal_lm`` run ``run`` (a plain-RoPE model): the objective is the perplexity at
    ``target_len`` tokens on the first ``eval_tokens`` tokens of the held-out ``split`` (val: the extrapolation bench
    scores test), the model rebuilt with ``pe=rope_longrope`` and the trained weights.  Writes the factors to
    ``out`` (`SearchResult.save`; ``--extend longrope --longrope-factors out`` reads them) and returns a summary."""
    from zoo.errors import ConfigError
    from zoo.extend import encoding_of, _plain_rope, _rope_kwargs
    from zoo.longrope_search import evolution_search
    from zoo.bench import autocast as _autocast, resolve_device as _resolve_device

    from domains.code.data import tokenize_files
    from domains.code.task import lm_metrics, load_run, open_source_tree, stream_tensors

    run_dir = Path(run).expanduser()
    dev = _resolve_device(device)
    autocast, _ = _autocast("auto", dev)
    model, tokenizer = load_run(run_dir, device=dev, allow_longer=True)
    rope = encoding_of(model)
    if not _plain_rope(rope):
        raise ConfigError(f"{run_dir}: LongRoPE searches the factors of a plain RoPE; this model's encoding is "
                          f"{type(rope).__name__}")
    summary = json.loads((run_dir / "summary.json").read_text())
    train_len = int((summary.get("data") or {}).get("seq_len") or 0)
    if not train_len or target_len <= train_len:
        raise ConfigError(f"--target-len ({target_len}) must exceed the run's training length ({train_len})")
    tree = open_source_tree(dataset, root)
    held = tokenize_files(tree.split(split), tokenizer, progress=progress, cache_dir=True)
    if len(held) < target_len + 1:
        raise ConfigError(f"the {split} split of {tree.name} has {len(held)} tokens, fewer than --target-len + 1")
    stream = {k: v.to(dev) for k, v in stream_tensors(held).items()}
    windows = max(1, eval_tokens // target_len)
    scale = target_len / train_len
    half = rope.rot_dim // 2

    def objective(factors):
        spec = {"name": "rope_longrope", "long_factor": list(factors), "short_factor": [1.0] * half,
                "original_max_position_embeddings": train_len, "factor": scale, **_rope_kwargs(rope)}
        m, _ = load_run(run_dir, device=dev, allow_longer=True, overrides={"pe": spec})
        return lm_metrics(m, stream, target_len, windows, 1, tokenizer.pad_id, autocast)["perplexity"]

    t0 = time.perf_counter()
    result = evolution_search(objective, rope.rot_dim, scale, original_max_position_embeddings=train_len,
                              population=population, generations=generations, parents=parents, mutations=mutations,
                              crossovers=crossovers, base=rope.base, seed=seed, progress=progress)
    path = result.save(out)
    info = {"run": str(run_dir), "target_len": target_len, "train_len": train_len, "split": split,
            "eval_tokens": windows * target_len, "perplexity": result.value, "evaluations": result.evaluations,
            "seconds": round(time.perf_counter() - t0, 1), "factors_file": str(path),
            "history": result.history}
    print(f"LongRoPE search on {run_dir.name}: perplexity {result.value:.3f} at {target_len} tokens ({split} "
          f"split, {info['eval_tokens']} tokens) after {result.evaluations} evaluations; factors in {path}")
    return info


def run_longrope(args) -> int:
    """``zoo bench longrope --domain code --runs RUN --target-len L --longrope-factors OUT``."""
    from zoo.bench import parse_list
    from zoo.errors import ConfigError

    runs = parse_list(getattr(args, "runs", None)) or []
    if len(runs) != 1 or not args.longrope_factors or not args.target_len:
        raise ConfigError("zoo bench longrope needs --runs with one finished run, --target-len and "
                          "--longrope-factors (the output file)")
    info = longrope_search(runs[0], args.target_len, args.longrope_factors, eval_tokens=args.eval_tokens or 8192,
                           population=args.population, generations=args.generations,
                           parents=max(1, args.population // 2), mutations=max(1, args.population // 4),
                           crossovers=max(1, args.population // 4),
                           root=args.data_root, dataset="source_tree" if args.data_root else "cpython_stdlib",
                           device=args.device, progress=not args.quiet)
    if getattr(args, "json", None):
        from zoo.io import atomic_write_text
        atomic_write_text(args.json, json.dumps(info, indent=2) + "\n")
    return 0


PACKING_MODES = ("packed", "padded")


def _packing_worker(mode: str, tokenizer: str, model: str, steps: int, warmup: int, batch: int, seq_len: int,
                    device: str, root: Optional[str], seed: int = 0) -> Dict[str, Any]:
    """Time ``steps`` training steps (forward, backward, AdamW) of ``model`` on the ``causal_lm`` batches of one
    ``data.packing`` mode; returns labelled tokens per second and the share of positions that carry no label."""
    import torch

    import zoo
    from zoo.finetune.config import build_config
    from zoo.finetune.engine import _epoch_generator

    from domains.code.task import IGNORE_INDEX, CausalLMTask

    torch.manual_seed(seed)
    cfg = build_config({"task": "causal_lm", "model": {"name": model},
                        "data": {"name": "source_tree" if root else "cpython_stdlib", "root": root,
                                 "seq_len": seq_len, "tokenizer": tokenizer, "packing": mode},
                        "train": {"steps": steps, "batch_size": batch, "progress": False, "device": device},
                        "output": {"dir": "unused"}})
    task = CausalLMTask()
    task.build_data(cfg)
    dev = torch.device(device)
    task.to(dev)
    m = zoo.create(model, **task.model_kwargs(cfg)).to(dev).train()
    opt = torch.optim.AdamW(m.parameters(), lr=1e-4)
    labelled = positions = 0
    t0 = None
    it = task.train_batches(0, _epoch_generator(seed, 0))
    for i in range(warmup + steps):
        b = next(it)
        if i == warmup:
            if dev.type == "cuda":
                torch.cuda.synchronize()
            t0 = time.perf_counter()
        loss, _ = task.loss(m, b)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        if i >= warmup:
            keep = b["labels"] != IGNORE_INDEX
            if task.tokenizer.pad_id is not None:
                keep &= b["labels"] != task.tokenizer.pad_id
            labelled += int(keep.sum())
            positions += b["labels"].numel()
    if dev.type == "cuda":
        torch.cuda.synchronize()
    dt = time.perf_counter() - t0
    return {"mode": mode, "steps": steps, "batch": batch, "seq_len": seq_len, "seconds": round(dt, 3),
            "labelled_tokens_per_s": round(labelled / dt, 1), "steps_per_s": round(steps / dt, 4),
            "unlabelled_share": round(1 - labelled / max(positions, 1), 4),
            "train_rows": task.num_train_samples()}


def packing(run: str, model: Optional[str] = None, steps: int = 20, warmup: int = 2, batch: int = 16,
            seq_len: int = 512, rounds: int = 2, device: str = "cpu", root: Optional[str] = None,
            out: Optional[str] = None, progress: bool = True) -> Dict[str, Any]:
    """Training throughput of ``data.packing=packed`` (windows of the stream, masked per file) against ``padded``
    (one piece of one file per row): each mode in its own subprocess, interleaved over ``rounds``; the tokenizer
    (and, by default, the model name) of the finished run ``run``.  Reports labelled tokens per second (the
    tokens a step learns from) and writes ``packing.json`` and ``packing.png`` to ``out``."""
    from zoo.bench.speed import interleaved
    from zoo.io import atomic_write, atomic_write_text

    run_dir = Path(run).expanduser()
    summary = json.loads((run_dir / "summary.json").read_text())
    model = model or summary["model"]
    opts = {"tokenizer": str(run_dir), "model": model, "steps": steps, "warmup": warmup, "batch": batch,
            "seq_len": seq_len, "device": device, "root": root}

    def one(mode):
        import subprocess
        proc = subprocess.run([sys.executable, "-m", "domains.code.bench", "_packing", mode, json.dumps(opts)],
                              capture_output=True, text=True)
        if proc.returncode != 0:
            raise RuntimeError(f"packing worker {mode} failed:\n{proc.stderr[-3000:]}")
        return json.loads(proc.stdout.strip().splitlines()[-1])

    results = interleaved(list(PACKING_MODES), one, rounds, "zoo bench packing", progress)
    rows = []
    for mode in PACKING_MODES:
        best = max(results[mode], key=lambda r: r["labelled_tokens_per_s"])
        rows.append({**best, "rounds": [r["labelled_tokens_per_s"] for r in results[mode]]})
    ratio = rows[0]["labelled_tokens_per_s"] / rows[1]["labelled_tokens_per_s"]
    result = {"benchmark": "packing", "model": model, "run": str(run_dir), "device": device, "rows": rows,
              "packed_vs_padded": round(ratio, 3)}
    print(f"zoo bench packing: {model}, {batch} x {seq_len} tokens per step, {steps} timed steps, {device}")
    print(f"{'mode':8s} {'labelled tok/s':>15s} {'steps/s':>8s} {'unlabelled':>11s} {'rows':>7s}")
    for r in rows:
        print(f"{r['mode']:8s} {r['labelled_tokens_per_s']:15.1f} {r['steps_per_s']:8.3f} "
              f"{r['unlabelled_share']:11.1%} {r['train_rows']:7d}")
    print(f"packed / padded: x{ratio:.2f} labelled tokens per second")
    if out:
        out_dir = Path(out).expanduser()
        atomic_write_text(out_dir / "packing.json", json.dumps(result, indent=2) + "\n")

        def draw(tmp):
            import matplotlib
            matplotlib.use("Agg")
            from matplotlib.figure import Figure
            fig = Figure(figsize=(5, 3.2), dpi=110)
            ax = fig.add_subplot(1, 1, 1)
            ax.bar([r["mode"] for r in rows], [r["labelled_tokens_per_s"] for r in rows], color=["C0", "C1"])
            for i, r in enumerate(rows):
                ax.text(i, r["labelled_tokens_per_s"], f"{r['unlabelled_share']:.0%} unlabelled", ha="center",
                        va="bottom", fontsize=8)
            ax.set_ylabel("labelled tokens / s (training)")
            ax.set_title(f"{model}: packed vs padded ({batch} x {seq_len})", fontsize=9)
            fig.tight_layout()
            fig.savefig(tmp, format="png")
        result["files"] = {"json": str(out_dir / "packing.json"),
                           "png": str(atomic_write(out_dir / "packing.png", draw))}
    return result


def run_packing(args) -> int:
    """``zoo bench packing --domain code --runs RUN``."""
    from zoo.bench import parse_list
    from zoo.errors import ConfigError

    runs = parse_list(getattr(args, "runs", None)) or []
    if len(runs) != 1:
        raise ConfigError("zoo bench packing needs --runs with one finished causal_lm run (its tokenizer is used)")
    models = parse_list(getattr(args, "models", None)) or [None]
    result = packing(runs[0], model=models[0], steps=args.iters * 5, warmup=args.warmup,
                     batch=args.batch_size or 16, seq_len=args.seq_len or 512, rounds=args.rounds,
                     device="cpu" if args.device == "auto" else args.device, root=args.data_root,
                     out=args.out or "runs/bench/packing_code", progress=not args.quiet)
    if getattr(args, "json", None):
        from zoo.io import atomic_write_text
        atomic_write_text(args.json, json.dumps(result, indent=2) + "\n")
    return 0


def run_streaming(args) -> int:
    """``zoo bench streaming --domain code``: `zoo.bench.streaming` over code LMs (default ``code_lm_rope_tiny``)."""
    from zoo.bench import parse_list, resolve_device
    from zoo.bench.streaming import streaming_bench

    models = _check_models(parse_list(getattr(args, "models", None)) or ["code_lm_rope_tiny"])
    streaming_bench(models, tokens=parse_list(args.stream_tokens, int) or (2000, 20000), window=args.window or 1024,
                    sinks=4 if args.sinks is None else args.sinks, full_cache=bool(args.full_cache),
                    device=str(resolve_device(args.device)), progress=not args.quiet,
                    json_path=getattr(args, "json", None))
    return 0


def _register() -> None:
    from zoo.bench import register_bench
    from zoo.extrapolation import OPTIONS as EXTRAPOLATION_OPTIONS

    register_bench("extrapolation", run_extrapolation, variant="code", default=True,
                   options=EXTRAPOLATION_OPTIONS + _RUNS_OPTION,
                   defaults={"steps": 300, "lengths": ",".join(map(str, DEFAULT_LENGTHS)), "train_len": 512,
                             "eval_tokens": 32768},
                   help="code LMs trained at --train-len, perplexity at every length")
    from zoo.bench.streaming import OPTIONS as STREAMING_OPTIONS
    register_bench("streaming", run_streaming, variant="code", default=True, options=STREAMING_OPTIONS,
                   help="generate() over many tokens with a bounded (streaming) and the full KV cache")
    register_bench("longrope", run_longrope, variant="code", default=True, options=_RUNS_OPTION + [
        (("--target-len",), dict(type=int, default=None, help="the length the factors are searched for")),
        (("--eval-tokens",), dict(type=int, default=None, help="held-out tokens scored per candidate")),
        (("--data-root",), dict(default=None, help="a source tree instead of the CPython stdlib")),
        (("--population",), dict(type=int, default=16, help="LongRoPE population P (official 64)")),
        (("--generations",), dict(type=int, default=6, help="LongRoPE generations T (official 40)"))],
        help="LongRoPE's factor search for a finished RoPE run, written to --longrope-factors")
    register_bench("packing", run_packing, variant="code", default=True, options=_RUNS_OPTION + SPEED_OPTIONS + [
        (("--out",), dict(default=None, help="output folder (packing.json, packing.png)")),
        (("--data-root",), dict(default=None, help="a source tree instead of the CPython stdlib"))],
        help="training throughput of causal_lm with data.packing=packed vs padded (labelled tokens per second)")
    register_bench("code", run_speed, options=SPEED_OPTIONS,
                   help="code LMs: training throughput vs NoPE, generate() with and without the KV cache")


_register()


if __name__ == "__main__" and len(sys.argv) > 1 and sys.argv[1] == "_packing":
    print(json.dumps(_packing_worker(sys.argv[2], **json.loads(sys.argv[3]))))

if __name__ == "__main__" and len(sys.argv) > 1 and sys.argv[1] == "_worker":
    _o = json.loads(sys.argv[3])
    print(json.dumps(_speed_worker(sys.argv[2], **_o)))
