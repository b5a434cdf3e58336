"""Publishing fine-tuned weights: export a run folder, load a published folder back, push it to the Hugging Face Hub.

    zoo finetune configs/vision/vit_irpe_tiny_fmnist.yaml
    zoo export runs/vit_irpe_tiny_fmnist published/vit_irpe_tiny_fmnist
    zoo push published/vit_irpe_tiny_fmnist zoo-models/vit_irpe_tiny_fmnist

    model = zoo.create("local-dir:published/vit_irpe_tiny_fmnist")      # or "hf-hub:zoo-models/vit_irpe_tiny_fmnist"
    model = timm.create_model("local-dir:published/vit_irpe_tiny_fmnist", pretrained=True)   # vision, after import zoo

A published folder (the layout timm reads from ``local-dir:`` and ``hf-hub:``, plus zoo's own files)::

    config.json         timm's hub config -- architecture, num_classes, num_features, global_pool, model_args (the
                        builder kwargs the weights were trained with, the encoding spec among them), pretrained_cfg --
                        and a "zoo" section: format, task, domain, recipe, commit, metrics, data, files, repo_id
    model.safetensors   the run's weights, byte for byte
    recipe.yaml         the run's resolved fine-tune config (its config.yaml)
    <artifacts>         what the weights need besides themselves (tokenizer.json, vocabulary, labels)
    README.md           the model card: Hugging Face metadata (library_name: zoo, license, datasets, tags, metrics,
                        model-index) and a usage snippet that starts with ``import zoo``

The recipes' own weights are registered ahead of their upload (`recipe_cfgs`): every row of a plugin's
``results.json`` gives its model a ``name.tag`` whose source is ``hf-hub:zoo-models/<recipe>`` with
``published=False`` until the row says ``"published": true``.
"""
from __future__ import annotations

import functools
import json
import math
import os
import re
import shutil
import uuid
import warnings
from pathlib import Path
from typing import Any, Dict, List, Optional, Tuple, Union

from torch import nn

from .errors import CheckpointError, ConfigError, UnknownModelError, WeightsError, ZooError
from .registry import FOLDER_PREFIXES, PretrainedCfg, _cfg_dict, _entry, _feature_net
from .registry import _FEATURE_KWARGS, create, load_checkpoint

__all__ = ["HUB_ORG", "CONFIG_FILE", "WEIGHTS_FILE", "CARD_FILE", "RECIPE_FILE", "FORMAT", "recipe_tag",
           "recipe_repo_id", "recipe_cfgs", "unpublished_message", "read_finished_run", "export", "read_config",
           "load", "load_tag", "read_card_metadata", "usage_snippet", "validate", "push"]

#: the Hugging Face organisation the zoo's own weights are published under (``zoo-models/<recipe>``)
HUB_ORG = "zoo-models"
CONFIG_FILE, WEIGHTS_FILE, CARD_FILE, RECIPE_FILE = "config.json", "model.safetensors", "README.md", "recipe.yaml"
#: the value of ``config.json["zoo"]["format"]``
FORMAT = "zoo.publish/1"
#: the license of weights the zoo trains itself (the project's license); ``zoo export --license`` sets another
DEFAULT_LICENSE = "apache-2.0"
#: Hugging Face task types (model-index ``task.type``) of the fine-tune tasks that have one; another task keeps its
#: own name with dashes
HF_TASK_TYPES = {"image_classification": "image-classification", "causal_lm": "text-generation",
                 "sequence_classification": "text-classification", "masked_lm": "fill-mask",
                 "word_labelling": "token-classification"}
PathLike = Union[str, "os.PathLike[str]"]


# ---- the recipes' tags ----------------------------------------------------------------------------------------------

def recipe_tag(recipe: str, model: str) -> str:
    """The pretrained tag of ``recipe``'s weights on ``model``: the recipe's file name without the model name
    (``configs/vision/vit_irpe_tiny_fmnist.yaml`` on ``vit_irpe_tiny`` -> ``fmnist``)."""
    stem = Path(recipe).stem
    tag = stem[len(model) + 1:] if stem.startswith(model + "_") else stem
    return tag.replace(".", "_")


def recipe_repo_id(recipe: str) -> str:
    """The Hugging Face repository of ``recipe``'s weights: ``zoo-models/<recipe file name>``."""
    return f"{HUB_ORG}/{Path(recipe).stem}"


@functools.lru_cache(maxsize=1)
def recipe_cfgs() -> Dict[str, Dict[str, PretrainedCfg]]:
    """``{model: {tag: PretrainedCfg}}`` for every row of the plugins' ``results.json``: the weights of the recipe's
    run, at ``hf-hub:<row's hf_hub_id, default zoo-models/<recipe>>``, with the recorded metric; unpublished unless
    the row says ``"published": true`` (a row re-recorded by ``zoo results`` drops that key: new weights must be
    exported and pushed again). A results file that cannot be read gives no tags (with a warning)."""
    from .results import load_results

    try:
        rows = load_results()
    except (ZooError, OSError, ValueError) as e:
        warnings.warn(f"no recipe tags registered: {e}", RuntimeWarning, stacklevel=2)
        return {}
    out: Dict[str, Dict[str, PretrainedCfg]] = {}
    for row in rows:
        recipe, model = row.get("recipe"), row.get("model")
        if not isinstance(recipe, str) or not isinstance(model, str):
            continue
        commit = row.get("commit") or row.get("recorded_in")
        value = row.get("value")
        metrics = {row["metric"]: round(float(value), 4)} if isinstance(value, (int, float)) and "metric" in row else {}
        out.setdefault(model, {})[recipe_tag(recipe, model)] = PretrainedCfg(
            hf_hub_id=row.get("hf_hub_id") or recipe_repo_id(recipe), license=row.get("license", "Apache-2.0"),
            source=f"zoo recipe {recipe}", recipe=recipe, metrics=metrics, published=bool(row.get("published")),
            notes=f"trained by `zoo finetune {recipe}` on {row.get('dataset', '?')}"
                  + (f" at commit {commit[:7]}" if commit else ""))
    return out


def unpublished_message(name: str, cfg: PretrainedCfg) -> str:
    """What ``create(name, pretrained=True)`` says for a tag registered ahead of its upload."""
    recipe = cfg.recipe or "<recipe>"
    run = f"runs/{Path(recipe).stem}" if cfg.recipe else "RUN_DIR"
    return (f"{name}: the weights are not published yet (they will be at hf-hub:{cfg.hf_hub_id}); produce them "
            f"with `zoo finetune {recipe}` then `zoo export {run} OUT_DIR`, and load them with "
            f"zoo.create(\"local-dir:OUT_DIR\")")


# ---- reading a run ----------------------------------------------------------------------------------------------------

def read_finished_run(run_dir: PathLike) -> Dict[str, Any]:
    """The ``summary.json`` of a finished run folder. CheckpointError naming the file when the folder is not one:
    no summary, an unreadable one, an interrupted run, no weights, no ``config.yaml`` or a missing artifact."""
    run = Path(run_dir)
    if not run.is_dir():
        raise ConfigError(f"RUN_DIR {run} is not a folder" + (" (it does not exist)" if not run.exists() else ""))
    from .finetune.runstate import read_summary

    path = run / "summary.json"
    summary = read_summary(run)
    missing = [k for k in ("task", "final", "main_metric") if k not in summary]
    if missing:
        raise CheckpointError(f"{path}: not a run summary of zoo finetune (no {', '.join(missing)})")
    if not isinstance(summary["final"], dict):
        raise CheckpointError(f"{path}: final must be a mapping")
    if summary.get("interrupted"):
        raise CheckpointError(f"{run} is not a finished run: {path} says it was interrupted at step "
                              f"{summary.get('steps')}/{summary.get('total_steps')}; finish it with "
                              f"{summary.get('resume_command') or 'zoo finetune <config> --resume'}")
    for name, what in ((WEIGHTS_FILE, "the weights"), ("config.yaml", "the run's config"),
                       *((a, "an artifact the summary lists") for a in summary.get("artifacts") or [])):
        if not (run / name).is_file():
            raise CheckpointError(f"{run} is not a finished run: {run / name} ({what}) is missing")
    return summary


# ---- export -----------------------------------------------------------------------------------------------------------

def _recipe_tag_of(summary: Dict[str, Any]) -> Optional[Tuple[str, PretrainedCfg]]:
    """``(tag, cfg)`` of the registered recipe tag of the run's recipe and model, if any."""
    recipe, (base, _) = summary.get("recipe"), summary["model"].partition(".")[::2]
    if not recipe:
        return None
    for tag, cfg in _entry(base).cfgs.items():
        if cfg.recipe == recipe:
            return tag, cfg
    return None


def _json_safe(value: Any, where: str) -> Any:
    try:
        return json.loads(json.dumps(value, allow_nan=False))
    except (TypeError, ValueError) as e:
        raise ConfigError(f"{where} cannot be written to config.json: {e}") from None


def _encodings(model: nn.Module) -> List[str]:
    """The positional-encoding modules of ``model`` as ``Class(settings)``, each once."""
    from .pe.base import PositionalEncoding

    seen: List[str] = []
    for m in model.modules():
        if isinstance(m, PositionalEncoding):
            text = f"{type(m).__name__}({m.extra_repr()})"
            if text not in seen:
                seen.append(text)
    return seen


def _input_size(model_args: Dict[str, Any], data: Dict[str, Any]) -> Optional[Tuple[int, ...]]:
    """``(channels, h, w)`` from timm's reconstruction args ``in_chans`` / ``img_size``, else the data's input."""
    chans, size = model_args.get("in_chans"), model_args.get("img_size")
    if isinstance(chans, int) and size is not None:
        h, w = (size, size) if isinstance(size, int) else tuple(size)
        return (chans, int(h), int(w))
    shape = data.get("input") if isinstance(data, dict) else None
    if isinstance(shape, list) and len(shape) == 3 and all(isinstance(v, int) for v in shape):
        return tuple(shape)
    return None


def _hub_config(summary: Dict[str, Any], model: nn.Module, repo_id: Optional[str], license: str,
                artifacts: List[str]) -> Dict[str, Any]:
    """The ``config.json`` of an export (see the module docstring)."""
    from .finetune.engine import code_provenance

    base = summary["model"].partition(".")[0]
    entry = _entry(base)
    model_args = _json_safe(summary["model_kwargs"], "the run's model_kwargs")
    data = summary.get("data") if isinstance(summary.get("data"), dict) else {}
    found = _recipe_tag_of(summary)
    tag = found[0] if found else None
    # the family's shared timm fields, not the fields of another tag's weights (their classes, size, statistics)
    pcfg: Dict[str, Any] = {k: v for k, v in entry.timm_cfg.items()
                            if k not in ("input_size", "num_classes", "mean", "std", "test_input_size")}
    pcfg.update(architecture=base, tag=tag, license=license)
    num_classes = getattr(model, "num_classes", None)
    if isinstance(num_classes, int):
        pcfg["num_classes"] = num_classes
    size = _input_size(model_args, data)
    if size is not None:
        pcfg["input_size"] = list(size)
    for k in ("mean", "std"):
        if isinstance(data.get(k), (list, tuple)):
            pcfg[k] = list(data[k])
    paper = _cfg_dict(entry, None).get("paper_ids")
    if paper:
        pcfg["paper_ids"] = paper
    if summary.get("recipe"):
        pcfg["description"] = f"fine-tuned with `zoo finetune {summary['recipe']}`"
    pcfg = {k: (list(v) if isinstance(v, tuple) else v) for k, v in pcfg.items() if v is not None}

    if summary.get("commit"):
        commit = {"commit": summary["commit"], "dirty": summary.get("dirty"), "from": "run"}
    else:                                    # a run that did not record it: the checkout exporting it, said so
        now = code_provenance()
        commit = {"commit": now["commit"], "dirty": now["dirty"], "from": "export" if now["commit"] else None}
    config: Dict[str, Any] = {"architecture": base}
    if isinstance(num_classes, int):
        config["num_classes"] = num_classes
    for k in ("num_features", "global_pool"):
        v = getattr(model, k, None)
        if isinstance(v, (int, str)) and not isinstance(v, bool):
            config[k] = v
    config["model_args"] = model_args
    config["pretrained_cfg"] = pcfg
    config["zoo"] = {
        "format": FORMAT, "domain": entry.domain, "task": summary["task"], "repo_id": repo_id,
        "recipe": {"path": summary.get("recipe"), "file": RECIPE_FILE},
        "commit": commit["commit"], "dirty": commit["dirty"], "commit_from": commit["from"],
        "encodings": {"pe": model_args.get("pe"), "modules": _encodings(model)},
        "metrics": {"main": summary["main_metric"], "final": summary["final"], "final_step": summary.get("final_step"),
                    "best": summary.get("best") or {}},
        "data": _json_safe(data, "the run's data description"),
        "training": {k: summary.get(k) for k in ("steps", "epochs", "wall_time_s", "device", "amp", "params")},
        "weights": WEIGHTS_FILE, "artifacts": artifacts,
    }
    return _json_safe(config, "config.json")


def _yaml(data: Any) -> str:
    import yaml

    return yaml.safe_dump(data, sort_keys=False, allow_unicode=True, default_flow_style=False)


def _card_metadata(config: Dict[str, Any]) -> Dict[str, Any]:
    """The model card's YAML front matter (Hugging Face model-card metadata)."""
    z = config["zoo"]
    dataset = z["data"].get("dataset")
    task_type = HF_TASK_TYPES.get(z["task"], z["task"].replace("_", "-"))
    finite = {k: v for k, v in z["metrics"]["final"].items()
              if isinstance(v, (int, float)) and math.isfinite(v)}
    meta: Dict[str, Any] = {"library_name": "zoo", "license": config["pretrained_cfg"].get("license", DEFAULT_LICENSE),
                            "tags": ["zoo", "positional-encoding", z["domain"], z["task"], config["architecture"]]}
    if task_type in HF_TASK_TYPES.values():
        meta["pipeline_tag"] = task_type
    if dataset:
        meta["datasets"] = [dataset]
    meta["metrics"] = sorted(finite)
    result: Dict[str, Any] = {"task": {"type": task_type, "name": z["task"]}}
    if dataset:
        result["dataset"] = {"name": dataset, "type": dataset}
        split = z["data"].get("eval_split")
        if split:
            result["dataset"]["split"] = split
    result["metrics"] = [{"type": k, "value": v, "name": k} for k, v in finite.items()]
    name = (z["repo_id"] or config["architecture"]).split("/")[-1]
    meta["model-index"] = [{"name": name, "results": [result]}]
    return meta


def usage_snippet(source: str, config: Dict[str, Any]) -> str:
    """The card's Python usage: ``import zoo``, the model from ``source``, its artifacts' paths and, for a model
    with a fixed input size, one forward pass."""
    arts = config["zoo"].get("artifacts") or []
    lines = ["import zoo"] + (["from zoo.hub import resolve"] if arts else [])
    lines += ["", f'model = zoo.create("{source}").eval()']
    for a in arts:
        var = re.sub(r"\W", "_", Path(a).stem) + "_file"
        lines.append(f'{var} = resolve("{source}", filename="{a}")   # {a}, needed with the weights')
    size = config["pretrained_cfg"].get("input_size")
    if size:
        lines += ["", "import torch", "", "with torch.no_grad():",
                  f"    logits = model(torch.randn(1, {', '.join(map(str, size))}))"
                  f"   # inputs prepared as the recipe's data pipeline does",
                  "print(logits.shape)"]
    return "\n".join(lines) + "\n"


def model_card(config: Dict[str, Any], source: str) -> str:
    """The README.md of an export: metadata front matter, what the weights are, usage, results, provenance."""
    z = config["zoo"]
    arch = config["architecture"]
    final = z["metrics"]["final"]
    rows = "\n".join(f"| {k} | {v:.4f} |" if isinstance(v, float) else f"| {k} | {v} |" for k, v in final.items())
    recipe = z["recipe"]["path"]
    commit = z["commit"]
    commit_text = {"run": f"`{commit}` (recorded by the run)",
                   "export": f"`{commit}` (the checkout that exported it; the run recorded none)"}.get(
        z["commit_from"], "unknown (the run recorded none and the export ran outside a git checkout)")
    if z.get("dirty"):
        commit_text += ", with uncommitted changes"
    parts = [
        "---", _yaml(_card_metadata(config)).rstrip(), "---", "",
        f"# {source.split(':', 1)[1].split('/')[-1] if source.startswith('hf-hub:') else arch}", "",
        f"`{arch}` ({z['domain']}, task `{z['task']}`) fine-tuned with zoo, the positional-encoding model zoo, "
        f"on {z['data'].get('dataset', 'its data')}. Loading it needs zoo installed (`import zoo` registers its "
        f"models).", "",
        "## Usage", "",
        "```python", usage_snippet(source, config).rstrip(), "```", "",
    ]
    if _timm_registered(arch):
        parts += ["With timm (after `import zoo`, which registers the zoo's vision models):", "",
                  "```python", "import timm", "import zoo", "",
                  f'model = timm.create_model("{source}", pretrained=True)', "```", ""]
    parts += [
        "## Results", "",
        f"Final evaluation (step {z['metrics'].get('final_step')}; main metric `{z['metrics']['main']}`):", "",
        "| metric | value |", "|---|---|", rows, "",
        "## Provenance", "",
        f"- recipe: `{recipe}` (its resolved config: `{RECIPE_FILE}`)" if recipe else
        f"- recipe: not recorded by the run; its resolved config: `{RECIPE_FILE}`",
        f"- code: zoo at commit {commit_text}",
        f"- model arguments: `{json.dumps(config['model_args'], sort_keys=True)}`",
        f"- positional encodings: {', '.join(f'`{e}`' for e in z['encodings']['modules']) or 'none'}",
        f"- data: `{json.dumps(z['data'], sort_keys=True)}`",
        f"- training: {z['training'].get('steps')} steps ({z['training'].get('epochs')} epochs) on "
        f"{z['training'].get('device')}, {z['training'].get('wall_time_s')} s",
        "",
    ]
    return "\n".join(parts)


def _timm_registered(arch: str) -> bool:
    try:
        from timm.models import is_model
    except ImportError:
        return False
    return bool(is_model(arch))


def _check_out_dir(out: Path, run: Path, overwrite: bool) -> None:
    if out.exists() and not out.is_dir():
        raise ConfigError(f"OUT_DIR {out} is an existing file, not a folder")
    r, o = run.resolve(), out.resolve()
    if o == r or r in o.parents or o in r.parents:
        raise ConfigError(f"OUT_DIR {out} and RUN_DIR {run} overlap: export into a folder outside the run")
    if out.is_dir() and any(out.iterdir()) and not overwrite:
        raise ConfigError(f"OUT_DIR {out} exists and is not empty: choose another folder, or pass --overwrite "
                          f"(overwrite=True) to replace it")
    parent = out.parent if str(out.parent) else Path(".")
    if not parent.is_dir():
        raise ConfigError(f"OUT_DIR {out} cannot be created: {parent} is not a folder")
    if not os.access(parent, os.W_OK | os.X_OK):
        raise ConfigError(f"OUT_DIR {out} cannot be created: {parent} is not writable")


def _replace_dir(tmp: Path, out: Path) -> None:
    """Move the finished ``tmp`` to ``out``; an existing ``out`` is replaced only once ``tmp`` is complete, and is
    restored if the move fails."""
    if not out.exists():
        os.replace(tmp, out)
        return
    old = out.with_name(f".{out.name}.old-{uuid.uuid4().hex[:8]}")
    os.replace(out, old)
    try:
        os.replace(tmp, out)
    except BaseException:
        os.replace(old, out)
        raise
    shutil.rmtree(old, ignore_errors=True)


def export(run_dir: PathLike, out_dir: PathLike, overwrite: bool = False, repo_id: Optional[str] = None,
           license: Optional[str] = None) -> Path:
    """Write the published folder of a finished run (see the module docstring) into ``out_dir``; returns it.

    The weights are loaded strictly into the model rebuilt from the summary's ``model_kwargs`` before anything is
    written. ``repo_id`` (``org/name``): the Hugging Face repository the card's usage loads from (default: the
    registered repository of the run's recipe, ``zoo-models/<recipe>``; none: the card loads ``local-dir:OUT_DIR``
    and ``zoo push`` asks for a re-export naming the repository). ``license``: the card's license (default
    apache-2.0, the zoo's). The folder is built next to ``out_dir`` and renamed into place: nothing half-written is
    left, and an existing non-empty ``out_dir`` is replaced only with ``overwrite``."""
    from . import hub

    run, out = Path(run_dir), Path(out_dir)
    summary = read_finished_run(run)
    if repo_id is not None:
        _check_repo_id(repo_id, "--repo-id")
    if license is not None and (not isinstance(license, str) or not re.fullmatch(r"[\w.+-]+", license)):
        raise ConfigError(f"--license must be a license identifier such as apache-2.0 or mit, got {license!r}")
    _check_out_dir(out, run, overwrite)
    base = summary["model"].partition(".")[0]
    try:
        model = create(base, **summary["model_kwargs"])
    except ZooError as e:
        raise ConfigError(f"{run / 'summary.json'}: cannot rebuild {base} from its model_kwargs: {e}") from None
    weights = run / WEIGHTS_FILE
    load_checkpoint(model, hub.load_state_dict(weights), source=str(weights))
    found = _recipe_tag_of(summary)
    if repo_id is None and found is not None:
        repo_id = found[1].hf_hub_id
    artifacts = [str(a) for a in summary.get("artifacts") or []]
    config = _hub_config(summary, model, repo_id, (license or DEFAULT_LICENSE).lower(), artifacts)
    source = f"hf-hub:{repo_id}" if repo_id else f"local-dir:{out.resolve()}"

    tmp = out.parent / f".{out.name}.export-{uuid.uuid4().hex[:8]}.tmp"
    tmp.mkdir()
    try:
        shutil.copyfile(weights, tmp / WEIGHTS_FILE)
        shutil.copyfile(run / "config.yaml", tmp / RECIPE_FILE)
        for a in artifacts:
            (tmp / a).parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(run / a, tmp / a)
        (tmp / CONFIG_FILE).write_text(json.dumps(config, indent=2) + "\n")
        (tmp / CARD_FILE).write_text(model_card(config, source))
        _replace_dir(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return out


# ---- loading a published folder --------------------------------------------------------------------------------------

def _check_repo_id(repo_id: Any, what: str) -> None:
    if not isinstance(repo_id, str) or not re.fullmatch(r"[\w.-]+/[\w.-]+(@[\w.-]+)?", repo_id):
        raise ConfigError(f"{what} must be a Hugging Face repository id org/name[@revision], got {repo_id!r}")


def _weights_source(source: str) -> str:
    if source.startswith("local-dir:"):
        return str(Path(source[len("local-dir:"):]).expanduser() / WEIGHTS_FILE)
    return f"{source}/{WEIGHTS_FILE}"


def read_config(source: str) -> Dict[str, Any]:
    """The parsed ``config.json`` of ``local-dir:DIR`` or ``hf-hub:org/name[@revision]``, checked: a mapping with
    a registered ``architecture`` (a str) and ``model_args`` (a mapping). ConfigError naming the file otherwise."""
    from . import hub

    if not isinstance(source, str) or not source.startswith(FOLDER_PREFIXES):
        raise ConfigError(f"a published folder is 'local-dir:DIR' or 'hf-hub:org/name[@revision]', got {source!r}")
    if source.startswith("hf-hub:"):
        _check_repo_id(source[len("hf-hub:"):], f"the repository of {source!r}")
        path = hub.resolve(source, filename=CONFIG_FILE)
        where = f"{CONFIG_FILE} of {source}"
    else:
        folder = Path(source[len("local-dir:"):]).expanduser()
        if not folder.is_dir():
            raise ConfigError(f"{source}: {folder} is not a folder" + ("" if folder.exists() else " (it does not exist)"))
        path = folder / CONFIG_FILE
        if not path.is_file():
            raise ConfigError(f"{source}: {path} is missing (a folder written by `zoo export` has one)")
        where = str(path)
    try:
        config = json.loads(Path(path).read_text())
    except (OSError, ValueError) as e:
        raise ConfigError(f"{where} does not parse as JSON: {e}") from None
    if not isinstance(config, dict):
        raise ConfigError(f"{where}: expected a JSON object, got {type(config).__name__}")
    arch = config.get("architecture")
    if not isinstance(arch, str):
        raise ConfigError(f"{where}: 'architecture' must be a model name, got {arch!r}")
    try:
        _entry(arch)
    except UnknownModelError as e:
        raise ConfigError(f"{where}: architecture {arch!r} is not a registered model ({e})") from None
    if not isinstance(config.get("model_args", {}), dict):
        raise ConfigError(f"{where}: 'model_args' must be a mapping of builder arguments")
    if not isinstance(config.get("pretrained_cfg", {}), dict):
        raise ConfigError(f"{where}: 'pretrained_cfg' must be a mapping")
    config["_where"] = where
    return config


def load(source: str, pretrained: bool = True, architecture: Optional[str] = None, **kwargs: Any) -> nn.Module:
    """The model of a published folder (``local-dir:DIR`` or ``hf-hub:org/name[@revision]``): ``architecture``
    built with ``config.json``'s ``model_args`` updated by ``kwargs`` (``device``, ``dtype``, ``drop_rate``, ...;
    an architecture-changing one such as ``num_classes`` goes through the family's checkpoint filter, which drops a
    mismatched head where the family does, else the load fails naming the keys), then ``model.safetensors`` loaded
    into it (``pretrained=False``: not loaded). ``architecture`` (timm's entrypoint passes it) must equal the
    config's. The model's ``pretrained_cfg`` is the config's, with the source."""
    if pretrained not in (True, False):
        raise ConfigError(f"pretrained must be True or False for {source}, got {pretrained!r}")
    config = read_config(source)
    arch = config["architecture"]
    if architecture is not None and architecture != arch:
        raise ConfigError(f"{config['_where']} is a {arch}, not a {architecture}")
    features_only = kwargs.pop("features_only", False)
    feature_kw = {k: kwargs.pop(k) for k in _FEATURE_KWARGS if k in kwargs}
    args = {**config.get("model_args", {}), **kwargs}
    weights = _weights_source(source) if pretrained else None
    model = create(arch, pretrained_file=weights, **args)
    entry = _entry(arch)
    pcfg = {**entry.timm_cfg, "architecture": arch, "tag": None, **config.get("pretrained_cfg", {})}
    for k in ("url", "file", "hf_hub_id", "hf_hub_filename"):     # where it came from is said below
        pcfg.pop(k, None)
    if kwargs:                                          # what the arguments given here changed
        if isinstance(getattr(model, "num_classes", None), int):
            pcfg["num_classes"] = model.num_classes
        size = _input_size(args, {})
        if size is not None:
            pcfg["input_size"] = size
    if source.startswith("hf-hub:"):
        pcfg.update(source="hf-hub", hf_hub_id=source[len("hf-hub:"):])
    else:
        pcfg.update(source="local-dir", file=str(Path(source[len("local-dir:"):]).expanduser()))
    for k in ("input_size", "mean", "std"):              # timm's cfgs hold tuples
        if isinstance(pcfg.get(k), list):
            pcfg[k] = tuple(pcfg[k])
    model.pretrained_cfg = model.default_cfg = pcfg
    return _feature_net(model, arch, **feature_kw) if features_only else model


def load_tag(name: str, tag: str, cfg: PretrainedCfg, **kwargs: Any) -> nn.Module:
    """``create("name.tag", pretrained=True)`` for a tag whose source is a published folder on the Hub: the model
    rebuilt from its ``config.json`` (which must be a ``name``), with the tag's cfg as ``pretrained_cfg``."""
    model = load(f"hf-hub:{cfg.hf_hub_id}", architecture=name, **kwargs)
    inner = model.model if kwargs.get("features_only") else model
    # the tag's fields (metrics, recipe, license) under the folder's (its classes, input size, statistics)
    inner.pretrained_cfg = inner.default_cfg = {**_cfg_dict(_entry(name), tag), **inner.pretrained_cfg, "tag": tag}
    return model


# ---- validation and push ----------------------------------------------------------------------------------------------

def read_card_metadata(text: str, where: str = CARD_FILE) -> Dict[str, Any]:
    """The YAML front matter of a model card (between the leading ``---`` lines); ConfigError naming ``where``."""
    import yaml

    m = re.match(r"---\n(.*?)\n---\n", text, flags=re.S)
    if not m:
        raise ConfigError(f"{where} has no metadata: it must start with a YAML block between '---' lines")
    try:
        meta = yaml.safe_load(m.group(1))
    except yaml.YAMLError as e:
        raise ConfigError(f"{where}: the metadata block is not valid YAML ({e})") from None
    if not isinstance(meta, dict):
        raise ConfigError(f"{where}: the metadata block must be a mapping")
    return meta


def validate(folder: PathLike) -> Dict[str, Any]:
    """Check a published folder; returns its config. Raises (naming what failed): ConfigError when config.json is
    missing or does not parse, its architecture is not registered, the card (README.md) or its metadata
    (library_name: zoo, license) is missing, or a listed artifact is missing; CheckpointError when
    model.safetensors is missing or does not load strictly into the model rebuilt from config.json."""
    from . import hub

    folder = Path(folder)
    config = read_config(f"local-dir:{folder}")
    weights = folder / WEIGHTS_FILE
    if not weights.is_file():
        raise CheckpointError(f"{weights} (the weights) is missing")
    model = create(config["architecture"], **config.get("model_args", {}))
    load_checkpoint(model, hub.load_state_dict(weights), source=str(weights))
    for a in (config.get("zoo") or {}).get("artifacts") or []:
        if not (folder / a).is_file():
            raise ConfigError(f"{folder / a} is missing: {CONFIG_FILE} lists it among the artifacts")
    card = folder / CARD_FILE
    if not card.is_file():
        raise ConfigError(f"{card} (the model card) is missing")
    meta = read_card_metadata(card.read_text(), str(card))
    if meta.get("library_name") != "zoo":
        raise ConfigError(f"{card}: the metadata must say library_name: zoo, got {meta.get('library_name')!r}")
    if not meta.get("license"):
        raise ConfigError(f"{card}: the metadata names no license")
    return config


def push(folder: PathLike, repo_id: str, private: bool = False, revision: Optional[str] = None,
         token: Optional[str] = None, commit_message: Optional[str] = None) -> str:
    """Upload a published folder to the Hugging Face Hub repository ``repo_id`` (created if needed) with
    ``huggingface_hub``; returns the commit's URL. The folder is validated first (`validate`), and its card must load
    from ``hf-hub:<repo_id>`` (export with ``--repo-id``): nothing is uploaded otherwise."""
    _check_repo_id(repo_id, "the repository id")
    if "@" in repo_id:
        raise ConfigError(f"the repository id {repo_id!r} takes no @revision: pass --revision")
    config = validate(folder)
    recorded = (config.get("zoo") or {}).get("repo_id")
    if recorded != repo_id:
        said = f"hf-hub:{recorded}" if recorded else "the local folder"
        raise ConfigError(f"{Path(folder) / CARD_FILE}: its usage loads {said}, not hf-hub:{repo_id}; export again "
                          f"with --repo-id {repo_id}")
    try:
        from huggingface_hub import HfApi
    except ImportError as e:  # pragma: no cover - a declared dependency
        raise WeightsError("huggingface_hub is needed to push: pip install huggingface_hub") from e
    api = HfApi(token=token)
    try:
        api.create_repo(repo_id, private=private, exist_ok=True, repo_type="model")
        if revision:
            api.create_branch(repo_id, branch=revision, exist_ok=True, repo_type="model")
        info = api.upload_folder(repo_id=repo_id, folder_path=str(folder), revision=revision, repo_type="model",
                                 commit_message=commit_message or f"zoo push {config['architecture']}")
    except ZooError:
        raise
    except Exception as e:  # huggingface_hub's HTTP and auth errors
        raise WeightsError(f"pushing {folder} to {repo_id} failed: {e}") from e
    return str(getattr(info, "commit_url", None) or info)
