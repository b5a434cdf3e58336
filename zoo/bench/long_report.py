"""The report of `zoo bench long`: ratios against the baseline of the same run, machine facts, the markdown table,
the JSON and the PNG.

A row is one (model, mode) measurement (`zoo.bench.long`): ``label`` (the encoding or model compared), ``mode``
(``fwd`` or ``fwdbwd``), ``seconds`` (median of the timed steps), ``peak_mib`` / ``step_mib`` (the memory compared:
peak and growth during the timed steps, MiB; RSS on the CPU, ``torch.cuda.max_memory_allocated`` on CUDA) or
``error``.  `add_ratios` divides each by the baseline's row of the same mode; `write_outputs` writes
``long.json``, ``long.md`` and ``long.png`` atomically, after all three are rendered (nothing half-written).
"""
from __future__ import annotations

import io
import json
import math
import os
import subprocess
from pathlib import Path
from typing import Any, Dict, Optional, Sequence, Union

__all__ = ["MODES", "MODE_NAMES", "machine_facts", "git_commit", "cpu_model", "add_ratios", "format_table",
           "format_note", "ratio_figure", "plot_ratios", "write_outputs"]

#: measurement modes, in the order they run and are shown
MODES = ("fwd", "fwdbwd")
MODE_NAMES = {"fwd": "forward (inference)", "fwdbwd": "forward+backward (train)"}
ROOT = Path(__file__).resolve().parents[2]


def cpu_model() -> str:
    """The ``model name`` of the first CPU in ``/proc/cpuinfo`` (``"unknown"`` where it cannot be read)."""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.lower().startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    import platform
    return platform.processor() or "unknown"


def git_commit(root: Union[str, Path] = ROOT) -> Optional[str]:
    """``git rev-parse --short=12 HEAD`` of ``root`` with ``-dirty`` when tracked files differ from it; None
    outside a git checkout."""
    def git(*args: str) -> Optional[str]:
        try:
            res = subprocess.run(["git", "-C", str(root), *args], capture_output=True, text=True, timeout=30)
        except (OSError, subprocess.TimeoutExpired):
            return None
        return res.stdout.strip() if res.returncode == 0 else None

    head = git("rev-parse", "--short=12", "HEAD")
    if not head:
        return None
    return head + ("-dirty" if git("status", "--porcelain", "--untracked-files=no") else "")


def machine_facts() -> Dict[str, Any]:
    """What a reader needs to judge the numbers: CPU model and count, load average (1, 5, 15 min), commit."""
    return dict(cpu=cpu_model(), cpus=os.cpu_count(), load_avg=[round(v, 2) for v in os.getloadavg()],
                commit=git_commit())


def add_ratios(rows: Sequence[Dict[str, Any]], baseline: str) -> None:
    """In place: ``time_ratio`` = seconds / baseline seconds, ``peak_ratio`` = peak_mib / baseline peak_mib and
    ``step_ratio`` (None when the baseline grew by 0 MiB), each against the row of label ``baseline`` in the same
    mode, rounded to 4 decimals.  Rows in error, and every row of a mode whose baseline failed, get none."""
    base = {r["mode"]: r for r in rows if r.get("label") == baseline and "error" not in r}
    for r in rows:
        b = base.get(r.get("mode"))
        if b is None or "error" in r:
            continue
        r["time_ratio"] = round(r["seconds"] / b["seconds"], 4)
        r["peak_ratio"] = round(r["peak_mib"] / b["peak_mib"], 4)
        r["step_ratio"] = round(r["step_mib"] / b["step_mib"], 4) if b["step_mib"] > 0 else None


def _cell(v: Any, decimals: int = 2) -> str:
    if v is None:
        return "-"
    if isinstance(v, float):
        return f"{v:,.{decimals}f}"
    return str(v)


def format_table(rows: Sequence[Dict[str, Any]], label: str = "model") -> str:
    """Markdown: one line per row, ratios as ``1.23x``; a failed row shows its error in the last column."""
    with_path = any("path" in r for r in rows)
    cols = [label, "mode", "input", "depth"] + (["attention"] if with_path else []) + [
        "seconds", "time / base", "peak MiB", "peak / base", "step MiB", "step / base"]
    lines = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    for r in rows:
        head = [f"`{r.get('label')}`", r.get("mode", "-"), _cell(r.get("input")), _cell(r.get("depth"))]
        if with_path:
            head.append(_cell(r.get("path")))
        if "error" in r:
            lines.append("| " + " | ".join(head + ["-"] * 5 + [f"error: {r['error']}"]) + " |")
            continue
        ratio = lambda k: "-" if r.get(k) is None else f"{r[k]:.2f}x"          # noqa: E731
        lines.append("| " + " | ".join(head + [
            f"{r['seconds']:.3f}", ratio("time_ratio"), _cell(r["peak_mib"], 1), ratio("peak_ratio"),
            _cell(r["step_mib"], 1), ratio("step_ratio")]) + " |")
    return "\n".join(lines) + "\n"


def _title(result: Dict[str, Any]) -> str:
    return "zoo bench long" + (f" --domain {result['variant']}" if result.get("variant") else "")


def format_note(result: Dict[str, Any]) -> str:
    """One paragraph: what was measured, on which machine, under which load, at which commit."""
    m, rows = result["machine"], [r for r in result["rows"] if "error" not in r]
    threads = sorted({r.get("torch_threads") for r in rows if r.get("torch_threads") is not None})
    gpus = sorted({r["gpu"] for r in rows if r.get("gpu")})
    load = " ".join(f"{v:.2f}" for v in m["load_avg"])
    after = " ".join(f"{v:.2f}" for v in result.get("load_avg_after", []))
    memory = "torch.cuda.max_memory_allocated" if result["device"].startswith("cuda") else "peak RSS"
    return (f"{_title(result)}: {', '.join(MODE_NAMES[m_] for m_ in result['modes'])}; "
            f"baseline {result['baseline']}; median of {result['repeats']} timed step(s) after a warm-up, one "
            f"process per (model, mode), float32 on {result['device']}"
            + (f" ({', '.join(gpus)})" if gpus else "") + f"; memory: {memory}.\n"
            f"machine: {m['cpu']}, {m['cpus']} CPUs, torch threads {', '.join(map(str, threads)) or '?'}; "
            f"load average (1/5/15 min) {load} before" + (f", {after} after" if after else "")
            + f"; commit {m['commit'] or 'unknown'}.")


def ratio_figure(result: Dict[str, Any]):
    """A matplotlib Figure with two panels, time / baseline and peak memory / baseline: grouped bars, one group per
    label, one bar per mode (in the order of `MODES`; a failed row has no bar), a dotted line at 1.0 (the
    baseline).  matplotlib is imported here only, with the Agg backend."""
    import matplotlib
    matplotlib.use("Agg")
    from matplotlib.figure import Figure

    rows = result["rows"]
    labels = list(dict.fromkeys(r["label"] for r in rows))
    modes = [m for m in MODES if any(r["mode"] == m for r in rows)]
    by = {(r["label"], r["mode"]): r for r in rows}
    width = 0.8 / max(len(modes), 1)
    fig = Figure(figsize=(max(8.0, 2.0 + 1.3 * len(labels)), 4.6), dpi=110)
    axes = fig.subplots(1, 2)
    for ax, key, ylabel in zip(axes, ("time_ratio", "peak_ratio"), ("time / baseline", "peak memory / baseline")):
        for i, mode in enumerate(modes):
            vals = [by.get((lab, mode), {}).get(key) for lab in labels]
            vals = [math.nan if v is None else v for v in vals]
            xs = [j + (i - (len(modes) - 1) / 2) * width for j in range(len(labels))]
            bars = ax.bar(xs, vals, width, label=MODE_NAMES[mode])
            ax.bar_label(bars, labels=["" if math.isnan(v) else f"{v:.2f}" for v in vals], fontsize=7)
        ax.axhline(1.0, color="grey", linestyle=":", linewidth=1)
        ax.set_xticks(range(len(labels)), labels, rotation=30, ha="right", fontsize=8)
        ax.set_ylabel(ylabel)
        ax.set_ylim(0, ax.get_ylim()[1] * 1.08)                                    # room for the bar labels
        ax.grid(True, axis="y", alpha=0.3)
    handles, names = axes[0].get_legend_handles_labels()
    fig.legend(handles, names, loc="upper center", ncol=len(modes), fontsize=8, frameon=False,
               bbox_to_anchor=(0.5, 0.94))
    fig.suptitle(f"{_title(result)}: {result['input']}, vs {result['baseline']} "
                 f"({result['device']})", fontsize=10)
    fig.tight_layout(rect=(0, 0, 1, 0.9))
    return fig


def plot_ratios(result: Dict[str, Any]) -> bytes:
    """`ratio_figure` rendered as PNG bytes."""
    fig = ratio_figure(result)
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    return buf.getvalue()


def write_outputs(result: Dict[str, Any], out_dir: Union[str, Path], label: str = "model") -> Dict[str, str]:
    """Render ``long.json`` (``result``: settings, machine and every row), ``long.md`` (note + table) and
    ``long.png`` (`plot_ratios`) in memory, then write each atomically into ``out_dir``; returns their paths."""
    from ..io import atomic_write_bytes, atomic_write_text

    text = json.dumps(result, indent=2) + "\n"
    md = format_note(result) + "\n\n" + format_table(result["rows"], label)
    png = plot_ratios(result)
    out = Path(out_dir)
    files = {"json": atomic_write_text(out / "long.json", text), "markdown": atomic_write_text(out / "long.md", md),
             "png": atomic_write_bytes(out / "long.png", png)}
    return {k: str(v) for k, v in files.items()}
