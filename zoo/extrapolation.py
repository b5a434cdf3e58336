"""Length-extrapolation results shared by the domains' ``zoo bench extrapolation``: the perplexity table and plot.

A result is a dict with ``models`` (names, in order), ``lengths`` (evaluation lengths), ``train_len`` and ``rows``
(one dict per model and length with ``model``, ``length`` and ``ppl``). matplotlib is imported only when a plot is
drawn (Agg backend), never when this module is imported.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Dict, Union

__all__ = ["format_ppl_table", "plot_ppl_vs_length"]


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
