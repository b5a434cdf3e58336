"""Length-extrapolation results shared by the domains' ``zoo bench extrapolation``: the perplexity table and plot.

A result is a dict with ``models`` (names, in order), ``lengths`` (evaluation lengths), ``train_len`` and ``rows``
(one dict per model and length with ``model``, ``length`` and ``ppl``). matplotlib is imported only when a plot is
drawn (Agg backend), never when this module is imported.

`score_lengths` / `score_methods` score one model per cell (length, and training-free extension of `zoo.extend`)
with a domain's metric function, recording tokens/s and the peak memory each cell added.

`finished_run` lets a benchmark reuse a model it trained before with the same config (e.g. after adding a model to
``--models``, or when models were trained by two processes into one ``--out``) instead of training it again.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple, Union

__all__ = ["format_ppl_table", "format_markdown", "plot_ppl_vs_length", "finished_run", "write_result", "OPTIONS",
           "score_lengths", "score_methods", "merge_results", "merge_files"]

#: the longest batch scored at once, in tokens (``batch = max(1, min(windows, SCORE_BATCH_TOKENS // length))``)
SCORE_BATCH_TOKENS = 16384

#: the options of ``zoo bench extrapolation`` every plugin's variant takes (`zoo.bench.register_bench`); unset ones
#: take the variant's defaults
OPTIONS = [
    (("--steps",), dict(type=int, default=None, help="training steps per model")),
    (("--retrain",), dict(action="store_true", help="train every model again, even one already trained in --out "
                                                    "with the same config (reused by default)")),
    (("--lengths",), dict(default=None, help="comma-separated evaluation lengths in tokens")),
    (("--train-len",), dict(type=int, default=None, help="training length in tokens")),
    (("--eval-tokens",), dict(type=int, default=None, help="test tokens scored at every length")),
    (("--out",), dict(default=None, help="output folder (JSON, PNG, runs); default "
                                         "runs/bench/extrapolation_<domain>")),
    (("--data-root",), dict(default=None, help="the data to train and score on instead of the default corpus")),
    (("--extend",), dict(default=None, help="training-free context extensions to score each model with (zoo.extend): "
                                            "'all' (every method that fits), or comma-separated names among none, "
                                            "pi, ntk, dynamic, yarn, llama3, longrope, self_extend, string, "
                                            "lm_infinite, ms_poe, log_scale, alibi_interp; default none")),
    (("--longrope-factors",), dict(default=None, help="a LongRoPE factors file (zoo bench longrope) for the "
                                                      "'longrope' method")),
    (("--merge",), dict(default=None, help="comma-separated extrapolation.json files of one bench (e.g. methods or "
                                           "runs scored by parallel processes): write them as one result to --out "
                                           "(JSON, Markdown, PNG); nothing is scored")),
]

#: the keys two results must agree on to be merged (the same bench on the same data)
MERGE_KEYS = ("benchmark", "domain", "dataset", "train_len", "lengths", "eval_tokens", "device", "amp")

#: config keys that do not change what a run trains
RUN_KEYS_IGNORED = frozenset({"train.progress", "output.dir", "output.overwrite"})


def finished_run(run_dir: Union[str, Path], cfg: Dict[str, Any],
                 same_files: Sequence[Tuple[str, Union[str, Path]]] = ()) -> Optional[Dict[str, Any]]:
    """The ``summary.json`` of a finished, uninterrupted fine-tune run in ``run_dir`` whose saved ``config.yaml``
    has every value of ``cfg`` (except `RUN_KEYS_IGNORED`) and whose files named in ``same_files`` (``(name in the
    run folder, path of the file it must equal byte for byte)``, e.g. the tokenizer) are unchanged; else None."""
    from omegaconf import OmegaConf

    from .finetune.engine import _flatten

    run_dir = Path(run_dir)
    paths = [run_dir / n for n in ("summary.json", "config.yaml", "model.safetensors")]
    if not all(p.is_file() for p in paths):
        return None
    try:
        summary = json.loads(paths[0].read_text())
        saved = _flatten(OmegaConf.to_container(OmegaConf.load(paths[1]), resolve=True))
    except Exception:                                                      # unreadable: train again
        return None
    if not isinstance(summary, dict) or summary.get("interrupted") or "final" not in summary:
        return None
    missing = object()
    for key, value in _flatten(json.loads(json.dumps(cfg))).items():     # tuples -> lists, as in the YAML
        if key not in RUN_KEYS_IGNORED and saved.get(key, missing) != value:
            return None
    for name, path in same_files:
        mine, theirs = run_dir / name, Path(path)
        if not mine.is_file() or not theirs.is_file() or mine.read_bytes() != theirs.read_bytes():
            return None
    return summary


def format_ppl_table(result: Dict[str, Any], title: str, name_width: int, col_width: int, decimals: int) -> str:
    """``title``, then the perplexity table: one row per model, one column per length (``*`` marks the training
    length); model names padded to ``name_width``, values right-aligned in ``col_width`` with ``decimals``."""
    lengths = result["lengths"]
    ppl = {(r["model"], r["length"]): r["ppl"] for r in result["rows"]}
    head = [f"{L}{'*' if L == result['train_len'] else ''}" for L in lengths]
    lines = [title, f"{'model':{name_width}s}" + "".join(f"{h:>{col_width}s}" for h in head)]
    for name in result["models"]:
        lines.append(f"{name:{name_width}s}" + "".join(f"{ppl[(name, L)]:{col_width}.{decimals}f}" for L in lengths))
    return "\n".join(lines)


def format_markdown(result: Dict[str, Any], decimals: int = 2) -> str:
    """The perplexity table as Markdown: one row per model (and extension), one column per length (the training
    length marked), then each row's perplexity at its longest length over its own at the training length."""
    lengths, train = result["lengths"], result["train_len"]
    ppl = {(r["model"], r["length"]): r["ppl"] for r in result["rows"]}
    head = [f"{L:,}" + (" (train)" if L == train else "") for L in lengths]
    lines = ["| model | " + " | ".join(head) + f" | {lengths[-1]:,} / {train:,} |",
             "|---|" + "---|" * (len(lengths) + 1)]
    for name in result["models"]:
        cells = [f"{ppl[(name, L)]:.{decimals}f}" for L in lengths]
        ratio = f"{ppl[(name, lengths[-1])] / ppl[(name, train)]:.2f}x" if (name, train) in ppl else "n/a"
        base, _, method = name.partition(" +")
        lines.append(f"| `{base}`" + (f" + {method}" if method else "") + " | " + " | ".join(cells) + f" | {ratio} |")
    return "\n".join(lines) + "\n"


def plot_ppl_vs_length(result: Dict[str, Any], path: Union[str, Path], xlabel: str, ylabel: str,
                       title: str) -> Path:
    """Perplexity vs evaluation length (log-log), one line per model, the training length dotted; written
    atomically as PNG to ``path``."""
    import matplotlib
    matplotlib.use("Agg")
    from matplotlib.figure import Figure
    from matplotlib.ticker import NullLocator, ScalarFormatter

    from .io import atomic_write

    fig = Figure(figsize=(7, 4.5), dpi=110)
    ax = fig.add_subplot(1, 1, 1)
    for name in result["models"]:
        pts = sorted((r["length"], r["ppl"]) for r in result["rows"] if r["model"] == name)
        ax.plot([p[0] for p in pts], [p[1] for p in pts], marker="o", label=name)
    ax.axvline(result["train_len"], color="grey", linestyle=":", linewidth=1)
    ax.set_xscale("log", base=2)
    ax.set_yscale("log")
    ax.set_xticks(result["lengths"], [str(v) for v in result["lengths"]])
    ax.xaxis.set_minor_locator(NullLocator())
    ax.yaxis.set_major_formatter(ScalarFormatter())
    ax.yaxis.set_minor_formatter(ScalarFormatter())
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    return atomic_write(path, lambda tmp: fig.savefig(tmp, format="png"))


def write_result(result: Dict[str, Any], out_dir: Union[str, Path], table: Callable[[Dict[str, Any]], str],
                 plot: Callable[[Dict[str, Any], Path], Path]) -> Dict[str, Any]:
    """Write ``extrapolation.json``, ``extrapolation.md`` (`format_markdown`, the table docs/benchmarks.md
    shows) and ``plot(result, out_dir / "extrapolation.png")`` atomically, print
    ``table(result)`` and the paths; returns ``result`` with ``files`` (json, png) added."""
    from .io import atomic_write_text

    out_dir = Path(out_dir)
    json_path = atomic_write_text(out_dir / "extrapolation.json", json.dumps(result, indent=2) + "\n")
    md_path = atomic_write_text(out_dir / "extrapolation.md", format_markdown(result))
    png_path = plot(result, out_dir / "extrapolation.png")
    print(table(result))
    print(f"wrote {json_path}, {png_path}")
    result["files"] = {"json": str(json_path), "png": str(png_path), "markdown": str(md_path)}
    return result


#: ``metrics(model, length, windows, batch_size)`` -> a dict with ``loss``, ``perplexity``, ``token_accuracy`` and
#: ``tokens`` (the domain's scorer on its held-out stream)
Metrics = Callable[[Any, int, int, int], Dict[str, Any]]


def score_lengths(model, label: str, lengths: Sequence[int], train_len: int, eval_tokens: int, metrics: Metrics,
                  build: Optional[Callable[[int], Any]] = None, extra: Optional[Dict[str, Any]] = None,
                  progress: bool = False) -> List[Dict[str, Any]]:
    """One row per length: ``metrics`` on ``max(1, eval_tokens // length)`` windows, the seconds it took, tokens/s
    and the peak memory it added (`zoo.bench.memory.PeakMemory`).  ``build(length)``: the model to score at that
    length instead of ``model`` (a context extension set per length; dropped after its cell); ``extra``: keys added
    to every row."""
    import time

    from tqdm import tqdm

    from .bench.memory import PeakMemory

    rows = []
    for length in tqdm(lengths, desc=f"score {label}", unit="length", disable=not progress, dynamic_ncols=True):
        m_ = model if build is None else build(length)
        windows = max(1, eval_tokens // length)
        device = next(m_.parameters()).device
        with PeakMemory(device) as mem:
            t0 = time.perf_counter()
            m = metrics(m_, length, windows, max(1, min(windows, SCORE_BATCH_TOKENS // length)))
            dt = time.perf_counter() - t0
        tokens = int(m["tokens"])
        rows.append({"model": label, "length": length, "trained_at": train_len, "loss": m["loss"],
                     "ppl": m["perplexity"], "token_accuracy": m["token_accuracy"], "tokens": tokens,
                     "windows": windows, "eval_s": round(dt, 3), "tokens_per_s": round(tokens / max(dt, 1e-9), 1),
                     "peak_mib": round(mem.peak_mib, 1), "growth_mib": round(mem.growth_mib, 1), **(extra or {})})
        if m_ is not model:
            del m_
    return rows


def score_methods(model, name: str, methods, lengths: Sequence[int], train_len: int, eval_tokens: int,
                  metrics: Metrics, rebuild: Callable[[Dict[str, Any]], Any], progress: bool = False
                  ) -> Tuple[List[Dict[str, Any]], List[str], List[str]]:
    """Score ``model`` (named ``name``) under each training-free extension of ``methods`` (`zoo.extend`
    `ExtensionMethod` s): ``(rows, labels scored, names of the methods that do not fit it)``.  A cell whose method
    sets overrides at that length scores ``rebuild(overrides)`` (the run rebuilt with the method's ``pe=`` /
    ``attention=`` and its trained weights; computed once per length) and its row carries ``overrides``; rows carry
    ``base_model`` and ``method``; labels are ``name`` and ``"name +method"``."""
    rows, labels, skipped = [], [], []
    for method in methods:
        if not method.fits(model):
            skipped.append(method.name)
            continue
        label = name if method.name == "none" else f"{name} +{method.name}"
        over = {L: method.overrides(model, train_len, L) for L in lengths}

        def build(length, over=over):
            return rebuild(over[length]) if over[length] else model
        new = score_lengths(model, label, lengths, train_len, eval_tokens, metrics, build=build,
                            extra={"base_model": name, "method": method.name}, progress=progress)
        for r in new:
            if over[r["length"]]:
                r["overrides"] = over[r["length"]]
        rows += new
        labels.append(label)
    return rows, labels, skipped


def merge_results(results: Sequence[Dict[str, Any]], names: Optional[Sequence[str]] = None) -> Dict[str, Any]:
    """One result from several of one bench (`MERGE_KEYS` equal): ``models`` and ``rows`` concatenated in order,
    ``train`` and ``skipped`` united, ``extend`` joined; the first result's other keys.  ``names``: what to call
    each result in errors (its file).  Raises ConfigError when a key differs or a model label repeats."""
    from .errors import ConfigError

    names = list(names or [f"result {i + 1}" for i in range(len(results))])
    if not results:
        raise ConfigError("nothing to merge: pass two or more extrapolation results")
    first = results[0]
    merged = {k: v for k, v in first.items() if k != "files"}
    merged.update(models=[], rows=[], train={}, skipped={}, extend=[])
    for name, res in zip(names, results):
        for key in MERGE_KEYS:
            if res.get(key) != first.get(key):
                raise ConfigError(f"{name}: {key} is {res.get(key)!r}, {names[0]} has {first.get(key)!r}: only "
                                  f"results of one bench on the same data merge")
        for label in res["models"]:
            if label in merged["models"]:
                raise ConfigError(f"{name}: model {label!r} is already in an earlier result; merge each once")
        merged["models"] += list(res["models"])
        merged["rows"] += list(res["rows"])
        merged["train"].update(res.get("train") or {})
        for model, skip in (res.get("skipped") or {}).items():
            merged["skipped"].setdefault(model, []).extend(skip)
        if res.get("extend") not in (None, "none") and res["extend"] not in merged["extend"]:
            merged["extend"].append(res["extend"])
    merged["extend"] = ",".join(merged["extend"]) or "none"
    merged["merged_from"] = [str(n) for n in names]
    return merged


def merge_files(paths: Sequence[Union[str, Path]], domain: Optional[str] = None) -> Dict[str, Any]:
    """`merge_results` of ``extrapolation.json`` files (ConfigError naming a file that is missing, not a result, or
    of another ``domain`` than the one given)."""
    from .errors import ConfigError

    results = []
    for p in paths:
        try:
            res = json.loads(Path(p).expanduser().read_text())
        except OSError as e:
            raise ConfigError(f"--merge: cannot read {p}: {e.strerror or e}") from None
        except ValueError as e:
            raise ConfigError(f"--merge: {p} is not JSON: {e}") from None
        if not isinstance(res, dict) or res.get("benchmark") != "extrapolation" or not isinstance(
                res.get("rows"), list) or not isinstance(res.get("models"), list):
            raise ConfigError(f"--merge: {p} is not a zoo bench extrapolation result (extrapolation.json)")
        if domain is not None and res.get("domain") != domain:
            raise ConfigError(f"--merge: {p} holds a result of --domain {res.get('domain')}, not {domain}")
        results.append(res)
    return merge_results(results, [str(p) for p in paths])
