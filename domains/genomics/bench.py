"""DNA length extrapolation: train each causal DNA LM at a short length, score it at longer ones.

    zoo bench extrapolation --domain genomics [--steps 300] [--lengths 256,512,1024,2048,4096] [--models a,b]
                                              [--train-len 256] [--eval-tokens 16384] [--out D] [--data-root FASTA]

**Training.** Every ``dna_lm_*`` model of ``--models`` (default: the tiny decoder of every encoding, NoPE, ALiBi,
RoPE, KERPLE, FIRE, T5, BiPE) is trained from scratch with the ``dna_lm`` fine-tune engine for ``--steps`` steps on
windows of ``--train-len`` bases (nucleotide tokenizer: one token per base) cut inside the 16S rRNA records of the
training split; same data order, seed and schedule for all.  The split is the tasks' one (``stratified_split`` of the
records by phylum, top 5 phyla, 80/10/10, seed 0), so the evaluation records are never trained on.

**Evaluation.** 16S records are ~1.5 kb, shorter than most evaluation lengths, so the held-out (test split) records
are concatenated, in file order, into one stream with a ``<sep>`` token between two records
(``separator=None``: plain concatenation).  At every length ``L`` of ``--lengths`` the first ``--eval-tokens``
tokens of that stream are scored as ``eval_tokens // L`` non-overlapping windows of ``L`` tokens with
``allow_longer=True``; a column therefore compares models on the same bases and a row shows what a longer context
does to one model.  Targets that are ``<sep>`` are not scored (no training window holds one, so no model can
predict it); the first base after it is.  Windows start at arbitrary points of a record and a long window spans
several records: the model must cope with record boundaries, as it would on a contig.  ``eval_tokens`` should be a
multiple of every length (powers of two), else a longer length scores a shorter prefix of the stream.

Written to ``--out`` (atomically): ``extrapolation.json`` (every number), ``extrapolation.png`` (perplexity vs
length, log-log) and one training run folder per model under ``runs/``.
"""
from __future__ import annotations

import json
import math
import sys
from contextlib import nullcontext
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence

import torch
import torch.nn.functional as F

__all__ = ["extrapolation", "evaluation_stream", "stream_metrics", "load_lm_run", "format_extrapolation",
           "plot_extrapolation", "EXTRAPOLATION_MODELS", "DEFAULT_LENGTHS", "DEFAULT_TRAIN_LEN",
           "DEFAULT_EVAL_TOKENS", "run_extrapolation", "run_long", "LONG_PES"]

PE_ORDER = ("nope", "alibi", "rope", "kerple", "fire", "t5", "bipe")
EXTRAPOLATION_MODELS = tuple(f"dna_lm_{pe}_tiny" for pe in PE_ORDER)
DEFAULT_LENGTHS = (256, 512, 1024, 2048, 4096)
DEFAULT_TRAIN_LEN = 256
DEFAULT_EVAL_TOKENS = 16384
DEFAULT_STEPS = 300
#: the encodings `zoo bench long` compares by default
LONG_PES = ("nope", "alibi", "rope", "kerple", "fire", "t5", "bipe")
IGNORE_INDEX = -100


def _check_models(models: Sequence[str]) -> List[str]:
    import zoo
    from zoo.errors import ConfigError

    import domains.genomics.models  # noqa: F401  (registers the DNA models)
    if not models:
        raise ConfigError("--models is empty")
    known = set(zoo.list_models("dna_lm_*"))
    bad = [m for m in models if m not in known]
    if bad:
        raise ConfigError(f"unknown DNA decoder(s) {', '.join(bad)} (the benchmark needs causal dna_lm_* models); "
                          f"known: {', '.join(sorted(known))}")
    if len(set(models)) != len(models):
        raise ConfigError(f"--models lists a model twice: {', '.join(models)}")
    return list(models)


# ---- evaluation data ----------------------------------------------------------------------------------------------

def evaluation_stream(tokenizer, root: Optional[str] = None, split: str = "test",
                      separator: Optional[str] = "<sep>") -> Dict[str, Any]:
    """The held-out 16S records of ``split`` (the tasks' split: phylum, top 5, 80/10/10, seed 0) tokenized and
    concatenated in file order, ``separator`` between two records.  Returns ``tokens`` long ``[T]``,
    ``records`` (how many), ``bases`` and ``separator_id`` (None without a separator)."""
    from domains.genomics.data import load_16s, stratified_split
    from domains.genomics.task import SPLIT_FRACTIONS

    data = load_16s(root, rank="phylum", top_n=5)
    idx = stratified_split(data.labels, SPLIT_FRACTIONS, seed=0)[split]
    sep = None
    if separator:
        sep = tokenizer.token_to_id.get(separator)
        if sep is None or sep >= tokenizer.num_special:
            raise ValueError(f"separator {separator!r} is not a special token of the tokenizer")
    parts, bases = [], 0
    for n, i in enumerate(idx):
        if n and sep is not None:
            parts.append(torch.tensor([sep], dtype=torch.long))
        ids = torch.from_numpy(tokenizer.encode(data.seqs[int(i)]).ids).long()
        parts.append(ids)
        bases += len(data.seqs[int(i)])
    tokens = torch.cat(parts) if parts else torch.zeros(0, dtype=torch.long)
    return {"tokens": tokens, "records": int(len(idx)), "bases": bases, "separator_id": sep}


@torch.no_grad()
def stream_metrics(model: torch.nn.Module, tokens: torch.Tensor, length: int, num_windows: int, batch_size: int,
                   ignore_id: Optional[int] = None, autocast=None) -> Dict[str, float]:
    """Next-token loss, perplexity and accuracy of ``model`` over the first ``num_windows`` non-overlapping windows
    of ``length`` tokens of ``tokens`` ``[T]`` (window ``w`` predicts ``tokens[w*L+1 : (w+1)*L+1]``); targets equal
    to ``ignore_id`` are not scored."""
    available = (tokens.shape[0] - 1) // length
    if available < num_windows or num_windows < 1:
        raise ValueError(f"the stream has {tokens.shape[0]} tokens: {available} windows of {length} + 1, "
                         f"{num_windows} asked")
    model.eval()
    ctx = autocast or nullcontext
    total = torch.zeros((), dtype=torch.float64, device=tokens.device)
    correct = torch.zeros((), dtype=torch.long, device=tokens.device)
    count = 0
    offsets = torch.arange(length + 1, device=tokens.device)                        # [L + 1]
    for i in range(0, num_windows, batch_size):
        starts = torch.arange(i, min(i + batch_size, num_windows), device=tokens.device) * length   # [b]
        win = tokens[starts[:, None] + offsets]                                    # [b, L + 1]
        inputs, targets = win[:, :-1], win[:, 1:].clone()
        if ignore_id is not None:
            targets[targets == ignore_id] = IGNORE_INDEX
        with ctx():
            logits = model(inputs, model.positions(inputs))                        # [b, L, vocab]
        logits, flat = logits.float().flatten(0, 1), targets.flatten()
        keep = flat != IGNORE_INDEX
        total += F.cross_entropy(logits[keep], flat[keep], reduction="sum").double()
        correct += (logits[keep].argmax(-1) == flat[keep]).sum()
        count += int(keep.sum())
    loss = total.item() / max(count, 1)
    return {"loss": loss, "perplexity": math.exp(min(loss, 700.0)), "token_accuracy": correct.item() / max(count, 1),
            "tokens": count}


def load_lm_run(run_dir, device="cpu", allow_longer: bool = False, overrides: Optional[Dict[str, Any]] = None):
    """``(model, tokenizer)`` of a finished ``dna_lm`` run folder (``summary.json``, ``model.safetensors``,
    ``dna_tokenizer.json``), in eval mode; ``overrides``: builder keywords replacing the run's (a context
    extension's ``pe=`` / ``attention=``, `zoo.extend`)."""
    import zoo
    from zoo.finetune.engine import read_run

    from domains.genomics.tokenizers import TOKENIZER_FILE, DNATokenizer

    run_dir = Path(run_dir)
    tok = run_dir / TOKENIZER_FILE
    name, kwargs, weights = read_run(run_dir, "dna_lm", [(tok, "the tokenizer")])
    tokenizer = DNATokenizer.load(tok)
    from zoo.extend import merge_overrides
    model = zoo.create(name, pretrained_file=str(weights), **merge_overrides(kwargs, overrides))
    if allow_longer:
        model.allow_longer = True
    return model.to(device).eval(), tokenizer


# ---- the benchmark ------------------------------------------------------------------------------------------------

def extrapolation(models: Optional[Sequence[str]] = None, steps: int = DEFAULT_STEPS,
                  lengths: Sequence[int] = DEFAULT_LENGTHS, train_len: int = DEFAULT_TRAIN_LEN, batch_size: int = 16,
                  out: str = "runs/bench/extrapolation_genomics", eval_tokens: int = DEFAULT_EVAL_TOKENS,
                  root: Optional[str] = None, separator: Optional[str] = "<sep>", lr: float = 2e-3,
                  model_kwargs: Optional[Dict[str, Any]] = None, amp: str = "auto", device: str = "auto",
                  seed: int = 0, train_limit: Optional[int] = None, val_windows: int = 64,
                  progress: bool = True, retrain: bool = False, extend: str = "none",
                  longrope_factors: Optional[str] = None) -> Dict[str, Any]:
    """Train every model of ``models`` at ``train_len`` bases and score it at every length of ``lengths``; writes
    and returns the results (module docstring).  ``amp="auto"``: bf16 autocast where the device has native bf16,
    else float32 (the engine's rule); ``train_limit`` keeps that many training windows; ``val_windows``
    validation windows are scored at the end of training (``train[model].val_loss_at_train_len``).  A model
    already trained in ``out`` with the same config is reused (scored again, not retrained) unless ``retrain``.
    ``extend``: training-free context extensions (`zoo.extend`) each model is also scored with (``"all"``: every
    method that fits its encoding; else comma-separated names, a name that does not fit a model is skipped for it).
    Rows carry ``method``; a method's model is rebuilt from the run at each length with its overrides."""
    from zoo.errors import ConfigError
    from zoo.extrapolation import finished_run, write_result
    from zoo.finetune import finetune
    from zoo.bench import autocast as _autocast, resolve_device as _resolve_device

    from domains.genomics.tokenizers import nucleotide_tokenizer

    models = _check_models(list(models or EXTRAPOLATION_MODELS))
    lengths = sorted({int(v) for v in lengths})
    if not lengths or lengths[0] < 2:
        raise ConfigError(f"--lengths must be base counts >= 2, got {lengths}")
    if steps < 1 or train_len < 2 or eval_tokens < lengths[-1]:
        raise ConfigError(f"--steps ({steps}) must be >= 1, --train-len ({train_len}) >= 2 and --eval-tokens "
                          f"({eval_tokens}) at least the longest length ({lengths[-1]})")
    if amp not in ("auto", "off", "bf16"):
        raise ConfigError(f"amp must be auto, off or bf16, got {amp!r}")
    dev = _resolve_device(device)
    autocast, amp_used = _autocast(amp, dev)
    tokenizer = nucleotide_tokenizer()
    try:
        stream = evaluation_stream(tokenizer, root, "test", separator)
    except ValueError as e:
        raise ConfigError(f"16S evaluation data: {e}") from None
    if stream["tokens"].shape[0] < eval_tokens + 1:
        raise ConfigError(f"the held-out 16S records hold {stream['tokens'].shape[0]} tokens, fewer than "
                          f"--eval-tokens {eval_tokens} + 1; lower --eval-tokens (and drop lengths above it)")
    tokens = stream["tokens"].to(dev)
    out_dir = Path(out).expanduser()

    from zoo.extend import resolve_methods
    from zoo.extrapolation import score_methods

    rows, train, labels, skipped = [], {}, [], {}
    for name in models:
        run_dir = out_dir / "runs" / name
        cfg = {"task": "dna_lm",
               "model": {"name": name, "kwargs": dict(model_kwargs or {})},
               "data": {"name": "16s_rrna", "root": root, "seq_len": train_len, "tokenizer_kind": "nucleotide",
                        "eval_split": "val", "train_limit": train_limit, "eval_limit": max(1, val_windows)},
               "optim": {"lr": lr, "weight_decay": 0.1, "warmup_ratio": 0.05, "min_lr_ratio": 0.1},
               "train": {"steps": steps, "batch_size": batch_size, "seed": seed, "amp": amp, "device": device,
                         "eval_batch_size": 64, "progress": progress, "log_every": max(1, min(20, steps))},
               "output": {"dir": str(run_dir), "overwrite": True}}
        summary = None if retrain else finished_run(run_dir, cfg)
        if summary is not None:
            print(f"{name}: reusing the finished run {run_dir} (same config; --retrain trains it again)",
                  file=sys.stderr)
        else:
            summary = finetune(cfg)
        if summary.get("interrupted"):
            raise KeyboardInterrupt(f"training of {name} was interrupted; nothing written to {out_dir}")
        train[name] = {"val_loss_at_train_len": summary["final"].get("loss"), "params": summary["params"],
                       "wall_time_s": summary["wall_time_s"], "run_dir": str(run_dir)}
        model, _ = load_lm_run(run_dir, device=dev, allow_longer=True)

        def metrics(m, length, windows, batch):
            return stream_metrics(m, tokens, length, windows, batch, stream["separator_id"], autocast)

        def rebuild(overrides, run_dir=run_dir):
            return load_lm_run(run_dir, device=dev, allow_longer=True, overrides=overrides)[0]
        new, scored, skip = score_methods(model, name, resolve_methods(extend, model, longrope_factors), lengths,
                                          train_len, eval_tokens, metrics, rebuild, progress)
        rows += new
        labels += scored
        if skip:
            skipped[name] = skip
        del model

    result = {"benchmark": "extrapolation", "domain": "genomics", "dataset": "16s_rrna",
              "eval_split": "test", "eval_records": stream["records"], "eval_stream_tokens": int(tokens.shape[0]),
              "separator": separator or None, "tokenizer": tokenizer.kind, "train_len": train_len, "steps": steps,
              "batch_size": batch_size, "lr": lr, "seed": seed, "lengths": lengths, "eval_tokens": eval_tokens,
              "device": str(dev), "amp": amp_used or "off", "models": labels, "train": train, "rows": rows,
              "extend": extend, "skipped": skipped}
    return write_result(result, out_dir, format_extrapolation, plot_extrapolation)


def format_extrapolation(result: Dict[str, Any]) -> str:
    """The perplexity table: one row per model, one column per length (``*`` marks the training length)."""
    from zoo.extrapolation import format_ppl_table

    sep = f"'{result['separator']}'-joined" if result["separator"] else "concatenated"
    title = (f"zoo bench extrapolation --domain genomics: perplexity per base on {result['eval_records']} held-out "
             f"16S records ({sep}), trained {result['steps']} steps x {result['batch_size']} windows at "
             f"{result['train_len']} bases ({result['device']}, amp {result['amp']}); first {result['eval_tokens']} "
             f"tokens at every length")
    return format_ppl_table(result, title, name_width=20, col_width=9, decimals=3)


def plot_extrapolation(result: Dict[str, Any], path: Path) -> Path:
    """Perplexity vs evaluation length (log-log), one line per model; written atomically as PNG."""
    from zoo.extrapolation import plot_ppl_vs_length

    return plot_ppl_vs_length(
        result, path, xlabel="evaluation length (bases); dotted: training length",
        ylabel="held-out perplexity per base",
        title=f"DNA length extrapolation, 16S rRNA ({result['steps']} steps at {result['train_len']})")


# ---- command line ------------------------------------------------------------------------------------------------

def run_extrapolation(args) -> int:
    """``zoo bench extrapolation --domain genomics`` (arguments from ``zoo bench``; unset ones take this domain's
    defaults)."""
    from zoo.bench import parse_list

    if getattr(args, "merge", None):
        from zoo.extrapolation import merge_files, write_result
        result = merge_files(parse_list(args.merge), domain="genomics")
        result = write_result(result, Path(args.out or "runs/bench/extrapolation_genomics").expanduser(),
                              format_extrapolation, plot_extrapolation)
    else:
        lengths = parse_list(getattr(args, "lengths", None), int) or list(DEFAULT_LENGTHS)
        result = extrapolation(models=parse_list(getattr(args, "models", None)),
                               steps=args.steps or DEFAULT_STEPS, lengths=lengths,
                               train_len=args.train_len or DEFAULT_TRAIN_LEN, batch_size=args.batch_size or 16,
                               eval_tokens=args.eval_tokens or DEFAULT_EVAL_TOKENS,
                               out=args.out or "runs/bench/extrapolation_genomics", root=args.data_root,
                               device=args.device, progress=not args.quiet,
                               retrain=bool(getattr(args, "retrain", False)),
                               extend=getattr(args, "extend", None) or "none",
                               longrope_factors=getattr(args, "longrope_factors", None))
    if getattr(args, "json", None):
        from zoo.io import atomic_write_text
        atomic_write_text(args.json, json.dumps(result, indent=2) + "\n")
    return 0


def run_long(args) -> int:
    """``zoo bench long`` (``--domain genomics``, the default variant): the generic long-sequence suite
    (`zoo.bench.long`) over the DNA encoder's encodings, NoPE the baseline."""
    from zoo.bench.long import run_from_cli

    from .models import NUM_SPECIAL
    if getattr(args, "long_token_range", None) is None:
        args.long_token_range = (NUM_SPECIAL, NUM_SPECIAL + 4)                 # A C G T
    return run_from_cli(args)


def _register() -> None:
    from zoo.bench import register_bench
    from zoo.bench.long import OPTIONS as LONG_OPTIONS
    from zoo.extrapolation import OPTIONS as EXTRAPOLATION_OPTIONS

    register_bench("extrapolation", run_extrapolation, variant="genomics", options=EXTRAPOLATION_OPTIONS,
                   defaults={"steps": DEFAULT_STEPS, "lengths": ",".join(map(str, DEFAULT_LENGTHS)),
                             "train_len": DEFAULT_TRAIN_LEN, "eval_tokens": DEFAULT_EVAL_TOKENS},
                   help="DNA LMs trained at --train-len bases, perplexity per base at every length")
    register_bench("long", run_long, variant="genomics", default=True, options=LONG_OPTIONS,
                   defaults={"long_model": "dna_{pe}_tiny", "long_pes": LONG_PES, "long_variant": "genomics"},
                   help="forward and forward+backward of dna_<pe>_tiny at --tokens per encoding vs NoPE")


_register()
