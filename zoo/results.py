"""Recipe results: what a recipe measured, at which commit, and whether the code it measured has changed since.

Where results live. Each plugin keeps the results of its own models in ``results.json`` next to its ``PLUGIN``
mapping (``<plugin package>/results.json``, found by convention, no key to declare), shipped as package data so that
an installed zoo still finds them (``[tool.setuptools.package-data]`` in ``pyproject.toml``). One file per plugin
rather than one in ``zoo/``: a third-party plugin brings its measured results the way it brings its models, and the
core never holds a row about a model it does not define. A row goes to the plugin whose package defines its model.
Recipes stay in ``configs/``: a row names its recipe by its path relative to the source tree.

A row (``json`` object)::

    recipe       "configs/vision/vit_irpe_tiny_fmnist.yaml"
    model, dataset, metric, value, wall_time_s, params, epochs, amp, machine, date
    commit       `git rev-parse HEAD` when the run was recorded: the code it measured is that commit's tree, plus
                 uncommitted changes when ``dirty`` is true (recording refuses a dirty tree unless told otherwise)
    recorded_in  (rows recorded before commits were kept) the commit that wrote the row's current content into the
                 results file, recovered from git history. The run measured the code of that commit or of one of
                 its ancestors (the measurement ran before its result was committed; some such commits also carry
                 code): a bound, not the exact tree.

Stale results. A row is stale when the code its number depends on differs between its commit and the working tree:
the module that defines its model and the module that registers its recipe's task, each with the modules they
import inside the source tree (read statically with ``ast``, transitively), and the fine-tune engine with its own
imports (which brings in ``zoo/nn``, ``zoo/pe`` and ``zoo/finetune``). The working tree, not ``HEAD``: the test that
keeps MODELS.md current runs on the working tree, so a change to model code regenerates MODELS.md in its own
commit. Outside a git checkout (an installed zoo) staleness is unknown and not shown.

``zoo results check RECIPE`` re-runs a recipe through the fine-tune entry point and compares its final main metric
with the recorded value; ``--record`` stores the new value and commit.
"""
from __future__ import annotations

import ast
import datetime
import functools
import importlib.util
import json
import math
import subprocess
import tempfile
from pathlib import Path
from typing import Any, Dict, Iterable, List, Optional, Sequence, Tuple

from .errors import ConfigError

__all__ = ["RESULTS_FILE", "results_files", "load_results", "find_result", "save_result", "recipe_key",
           "source_root", "code_paths", "changed_paths", "stale_results", "lower_is_better", "compare",
           "row_from_summary", "check_recipe", "results_markdown", "add_results_arguments", "run_results_command"]

RESULTS_FILE = "results.json"
#: metrics where a lower value is better (every other metric: higher is better)
LOWER_IS_BETTER = ("loss", "perplexity", "ppl", "error", "bpc", "bits_per")


# ---- files ------------------------------------------------------------------------------------------------------

def results_files() -> Dict[str, Path]:
    """``plugin name -> <plugin package>/results.json`` for every discovered plugin (the file may not exist yet)."""
    from .plugins import plugins

    out = {}
    for name, p in sorted(plugins().items()):
        spec = importlib.util.find_spec(p.package)
        if spec is not None and spec.submodule_search_locations:
            out[name] = Path(list(spec.submodule_search_locations)[0]) / RESULTS_FILE
    return out


def _read(path: Path) -> List[Dict[str, Any]]:
    try:
        rows = json.loads(Path(path).read_text())
    except FileNotFoundError:
        return []
    except (OSError, ValueError) as e:
        raise ConfigError(f"cannot read the results file {path}: {e}") from e
    if not isinstance(rows, list) or not all(isinstance(r, dict) and "recipe" in r for r in rows):
        raise ConfigError(f"results file {path}: expected a list of rows with a 'recipe' each")
    return rows


def load_results(path: Optional[Path] = None) -> List[Dict[str, Any]]:
    """The rows of ``path``, or of every plugin's results file; sorted by recipe."""
    paths = [Path(path)] if path is not None else list(results_files().values())
    return sorted((r for p in paths for r in _read(p)), key=lambda r: r["recipe"])


def find_result(recipe: str, path: Optional[Path] = None) -> Optional[Dict[str, Any]]:
    """The row of ``recipe`` (a key from :func:`recipe_key`), or None."""
    return next((r for r in load_results(path) if r["recipe"] == recipe), None)


def _file_for_model(model: str) -> Path:
    from .plugins import plugin_of_module
    from .registry import _entry

    plugin = plugin_of_module(_entry(model).fn.__module__)
    if plugin is None:
        raise ConfigError(f"model {model!r} is not defined by a plugin: pass a results file (--results FILE)")
    return results_files()[plugin.name]


def save_result(row: Dict[str, Any], path: Optional[Path] = None) -> Path:
    """Add ``row`` (replacing the row of the same recipe) to ``path`` or to its model's plugin's results file."""
    from .io import atomic_write_text

    path = Path(path) if path is not None else _file_for_model(row["model"])
    rows = [r for r in _read(path) if r["recipe"] != row["recipe"]] + [row]
    atomic_write_text(path, json.dumps(sorted(rows, key=lambda r: r["recipe"]), indent=2) + "\n")
    return path


# ---- git --------------------------------------------------------------------------------------------------------

def source_root() -> Optional[Path]:
    """The git work tree holding this package, or None (an installed zoo, or no git)."""
    here = Path(__file__).resolve().parent
    try:
        out = subprocess.run(["git", "-C", str(here), "rev-parse", "--show-toplevel"], capture_output=True,
                             text=True, check=False)
    except OSError:
        return None
    return Path(out.stdout.strip()) if out.returncode == 0 and out.stdout.strip() else None


def _git(root: Path, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run(["git", "-C", str(root), *args], capture_output=True, text=True, check=False)


def recipe_key(recipe: str, root: Optional[Path] = None) -> str:
    """How a row names ``recipe``: its path relative to the source tree (posix), else the path as given."""
    root = root or source_root()
    p = Path(recipe).resolve()
    if root is not None:
        try:
            return p.relative_to(root).as_posix()
        except ValueError:
            pass
    return str(recipe)


def _commit(row: Dict[str, Any]) -> Tuple[Optional[str], str]:
    """``(hash, "measured at" | "recorded in")`` of a row."""
    if row.get("commit"):
        return row["commit"], "measured at"
    return row.get("recorded_in"), "recorded in"


# ---- the code a result depends on -------------------------------------------------------------------------------

def _imports(module: str, path: Path) -> Iterable[str]:
    """Absolute names of the modules (or ``package.name`` candidates) one file imports, anywhere in it."""
    is_pkg = path.name == "__init__.py"
    package = module if is_pkg else module.rpartition(".")[0]
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            yield from (a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                base = importlib.util.resolve_name("." * node.level + base, package) if package else base
            yield base
            yield from (f"{base}.{a.name}" for a in node.names if a.name != "*")


def _origin(module: str) -> Optional[Path]:
    try:
        spec = importlib.util.find_spec(module)
    except (ImportError, ValueError):
        return None
    return Path(spec.origin).resolve() if spec is not None and spec.origin and spec.origin.endswith(".py") else None


@functools.lru_cache(maxsize=None)
def _closure(modules: Tuple[str, ...], root: Path) -> List[Path]:
    """Files of ``modules`` and of every module they import that lives under ``root``, transitively (only the
    packages of this core and of the plugins are looked up: finding a module imports its parent packages)."""
    from .plugins import plugins

    own = {__name__.split(".")[0]} | {p.package.split(".")[0] for p in plugins().values()}
    seen: Dict[str, Optional[Path]] = {}
    todo = list(modules)
    while todo:
        mod = todo.pop()
        if mod in seen or not mod or mod.split(".")[0] not in own:
            continue
        seen[mod] = path = _origin(mod)
        if path is None or root not in path.parents:
            continue
        todo.extend(m for m in _imports(mod, path) if m not in seen)
    return sorted({p for p in seen.values() if p is not None and root in p.parents})


def _task_of(recipe: str, root: Path) -> Optional[str]:
    from omegaconf import OmegaConf

    path = root / recipe if not Path(recipe).is_absolute() else Path(recipe)
    try:
        task = OmegaConf.load(path).get("task")
    except (OSError, ValueError, TypeError):
        return None
    return str(task) if task else None


def code_paths(row: Dict[str, Any], root: Optional[Path] = None) -> List[str]:
    """Paths (relative to the source tree) of the code ``row``'s value depends on: its model's module, its task's
    module and the fine-tune engine, each with what they import from the source tree."""
    from .finetune import engine
    from .plugins import task_module
    from .registry import _entry

    root = (root or source_root() or Path(__file__).resolve().parent.parent).resolve()
    modules = [_entry(row["model"]).fn.__module__, engine.__name__]
    task = row.get("task") or _task_of(row["recipe"], root)
    if task and task_module(task):
        modules.append(task_module(task))
    return [p.relative_to(root).as_posix() for p in _closure(tuple(sorted(set(modules))), root)]


def changed_paths(row: Dict[str, Any], root: Optional[Path] = None) -> Optional[List[str]]:
    """The paths of :func:`code_paths` that differ between the row's commit and the working tree; None when that
    cannot be told (no git checkout, or a row without a commit, or a commit this clone does not have)."""
    root = root or source_root()
    commit, _ = _commit(row)
    if root is None or not commit or _git(root, "cat-file", "-e", f"{commit}^{{commit}}").returncode != 0:
        return None
    paths = code_paths(row, root)
    out = _git(root, "diff", "--name-only", commit, "--", *paths)
    if out.returncode != 0:
        return None
    return sorted(set(out.stdout.split()))


def stale_results(path: Optional[Path] = None) -> List[Tuple[Dict[str, Any], List[str]]]:
    """``(row, changed paths)`` for every row whose code changed since its commit."""
    root = source_root()
    out = []
    for row in load_results(path):
        changed = changed_paths(row, root)
        if changed:
            out.append((row, changed))
    return out


# ---- comparing and recording ------------------------------------------------------------------------------------

def lower_is_better(metric: str) -> bool:
    """Whether a lower ``metric`` is better (loss, perplexity, error rates); accuracy, F1 and the rest: higher."""
    return any(word in metric.lower() for word in LOWER_IS_BETTER)


def compare(metric: str, recorded: float, now: float, tolerance: float = 0.005,
            rtol: float = 0.0) -> Tuple[bool, str]:
    """``(within, message)``: whether ``now`` is within ``max(tolerance, rtol * |recorded|)`` of ``recorded``, and a
    line naming both values, their difference and which way it goes (better / worse for ``metric``)."""
    if tolerance < 0 or rtol < 0:
        raise ConfigError(f"tolerance and rtol must be >= 0, got tolerance={tolerance}, rtol={rtol}")
    diff = now - recorded
    allowed = max(tolerance, rtol * abs(recorded))
    within = math.isfinite(now) and abs(diff) <= allowed
    better = diff < 0 if lower_is_better(metric) else diff > 0
    way = "same" if diff == 0 else ("better" if better else "worse")
    verdict = "within" if within else "OUTSIDE"
    return within, (f"{metric}: recorded {recorded:.4f}, now {now:.4f}, difference {diff:+.4f} ({way}; "
                    f"{'lower' if lower_is_better(metric) else 'higher'} is better), {verdict} the tolerance "
                    f"{allowed:.4g}")


def _dirty(root: Optional[Path], paths: Sequence[str]) -> Optional[bool]:
    if root is None:
        return None
    out = _git(root, "status", "--porcelain", "--", *paths)
    return bool(out.stdout.strip()) if out.returncode == 0 else None


def row_from_summary(recipe: str, summary: Dict[str, Any], machine: str, metric: Optional[str] = None,
                     allow_dirty: bool = False, root: Optional[Path] = None) -> Dict[str, Any]:
    """A results row for a finished run's ``summary`` (``summary.json``), with ``git rev-parse HEAD`` as its commit.
    Refuses (ConfigError) when the code the row depends on has uncommitted changes, unless ``allow_dirty``: then
    the row says ``dirty: true``."""
    if summary.get("interrupted"):
        raise ConfigError(f"the run of {recipe} was interrupted; finish it with --resume first")
    metric = metric or summary["main_metric"]
    if metric not in summary["final"]:
        raise ConfigError(f"metric {metric!r}: the run has no final {metric!r}; it has {', '.join(summary['final'])}")
    root = root or source_root()
    key = recipe_key(recipe, root)
    data = summary.get("data")
    row = {"recipe": key, "model": summary["model"], "task": summary.get("task"),
           "dataset": data.get("dataset", "?") if isinstance(data, dict) else str(data),
           "metric": metric, "value": summary["final"][metric], "wall_time_s": summary["wall_time_s"],
           "params": summary["params"], "epochs": summary["epochs"], "amp": summary["amp"], "machine": machine,
           "date": datetime.date.today().isoformat()}
    head = _git(root, "rev-parse", "HEAD") if root is not None else None
    if head is None or head.returncode != 0:
        raise ConfigError("recording a result needs a git checkout: the row must name the commit it measured")
    row["commit"] = head.stdout.strip()
    dirty = _dirty(root, code_paths(row, root))
    if dirty:
        if not allow_dirty:
            raise ConfigError(f"the code {key} depends on has uncommitted changes (git status -- <model, task and "
                              f"engine code>): commit them first, or pass --allow-dirty to record it as dirty")
        row["dirty"] = True
    return row


def check_recipe(recipe: str, tolerance: float = 0.005, rtol: float = 0.0, out: Optional[str] = None,
                 record: bool = False, results: Optional[Path] = None, machine: Optional[str] = None,
                 allow_dirty: bool = False, say=print) -> int:
    """Re-run ``recipe`` (as ``zoo finetune`` does) into ``out`` (a new temporary folder by default) and compare its
    final metric with the recorded one. Returns 0 when within tolerance (or after ``record``), 1 outside it."""
    from .finetune import run_from_cli

    root = source_root()
    key = recipe_key(recipe, root)
    row = find_result(key, results)
    if row is None and not record:
        where = results or "any plugin's results file"
        raise ConfigError(f"no recorded result for recipe {key} in {where}: run with --record to record one")
    out = out or tempfile.mkdtemp(prefix="zoo-check-")
    say(f"re-running {key} into {out}")
    summary = run_from_cli(recipe, [f"output.dir={out}"])
    if summary.get("interrupted"):
        say("interrupted: nothing compared")
        return 130
    metric = row["metric"] if row else summary["main_metric"]
    if metric not in summary["final"]:
        raise ConfigError(f"the recorded metric {metric!r} is not among the run's final metrics "
                          f"({', '.join(summary['final'])})")
    code = 0
    if row is not None:
        commit, how = _commit(row)
        within, message = compare(metric, row["value"], summary["final"][metric], tolerance, rtol)
        say(f"{key} ({how} {(commit or '?')[:7]}): {message}")
        code = 0 if within else 1
    if record:
        new = row_from_summary(recipe, summary, machine or (row or {}).get("machine", "unknown"), metric,
                               allow_dirty=allow_dirty, root=root)
        path = save_result(new, results if results is not None else None)
        say(f"recorded {metric} {new['value']:.4f} at {new['commit'][:7]} in {path}")
        code = 0
    return code


# ---- MODELS.md and the command line -----------------------------------------------------------------------------

def results_markdown() -> str:
    """The "Fine-tuning results" section of MODELS.md: every plugin's rows, each with its commit (short hash) and,
    in a source checkout, whether its code changed since."""
    rows = load_results()
    if not rows:
        return ""
    root = source_root()
    out = ["## Fine-tuning results", "",
           "Measured with the recipe's exact command on a 2-core CPU machine (no GPU); each row names the commit it",
           "was measured at (`recorded in`: the commit that recorded it, measured at that code or earlier).",
           "`zoo results --stale` lists the rows whose model, task or engine code changed since; "
           "`zoo results check RECIPE` re-runs one and compares.", "",
           "| recipe | model | dataset | metric | value | wall time | params | machine | commit |",
           "|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        commit, how = _commit(r)
        note = f"{how} `{commit[:7]}`" if commit else "commit unknown"
        if r.get("dirty"):
            note += " with uncommitted changes"
        changed = changed_paths(r, root) if commit else None
        if changed:
            note += "; model code changed since"
        out.append(f"| `{r['recipe']}` | `{r['model']}` | {r['dataset']} | {r['metric']} | {r['value']:.4f} | "
                   f"{r['wall_time_s'] / 60:.1f} min | {r['params'] / 1e6:.2f}M | {r['machine']} | {note} |")
    return "\n".join(out)


def add_results_arguments(p) -> None:
    """``zoo results [--stale] [check RECIPE ... | record RECIPE RUN_DIR ...]``."""
    p.add_argument("--stale", action="store_true", help="only the results whose code changed since their commit")
    p.add_argument("--results", default=None, help="a results file instead of the plugins' own (results.json)")
    sub = p.add_subparsers(dest="action")
    pc = sub.add_parser("check", help="re-run a recipe and compare its final metric with the recorded value")
    pc.add_argument("recipe", help="e.g. configs/vision/vit_irpe_tiny_fmnist.yaml")
    pc.add_argument("--tolerance", type=float, default=0.005, help="absolute tolerance (default 0.005)")
    pc.add_argument("--rtol", type=float, default=0.0, help="relative tolerance (of the recorded value)")
    pc.add_argument("--out", default=None, help="run folder (default: a new temporary folder)")
    pc.add_argument("--record", action="store_true", help="store the new value and commit in the results file")
    pc.add_argument("--machine", default=None, help="with --record: the machine (default: the recorded one)")
    pc.add_argument("--allow-dirty", action="store_true", help="with --record: record uncommitted code as dirty")
    pr = sub.add_parser("record", help="record a finished run of a recipe")
    pr.add_argument("recipe")
    pr.add_argument("run_dir", help="the run's output folder (holds summary.json)")
    pr.add_argument("--machine", default="2-core CPU, no GPU")
    pr.add_argument("--metric", default=None, help="final metric to record (default: the task's main metric)")
    pr.add_argument("--allow-dirty", action="store_true", help="record uncommitted code, marked dirty")


def run_results_command(args, say=print) -> int:
    """What ``zoo results`` does with its parsed ``args``."""
    results = Path(args.results) if args.results else None
    if args.action == "check":
        return check_recipe(args.recipe, args.tolerance, args.rtol, args.out, args.record, results, args.machine,
                            args.allow_dirty, say=say)
    if args.action == "record":
        summary_path = Path(args.run_dir) / "summary.json"
        try:
            summary = json.loads(summary_path.read_text())
        except FileNotFoundError:
            raise ConfigError(f"{summary_path} not found: is the run finished?") from None
        row = row_from_summary(args.recipe, summary, args.machine, args.metric, allow_dirty=args.allow_dirty)
        path = save_result(row, results)
        say(f"recorded in {path}:\n{json.dumps(row, indent=2)}")
        return 0
    root = source_root()
    for row in load_results(results):
        commit, how = _commit(row)
        changed = changed_paths(row, root)
        if args.stale and not changed:
            continue
        state = ("unknown" if changed is None else "stale" if changed else "current")
        say(f"{row['recipe']:58s} {row['metric']:>15s} {row['value']:.4f}  {how} {(commit or '?')[:7]}  {state}"
            + (f": {', '.join(changed)}" if changed and args.stale else ""))
    return 0


