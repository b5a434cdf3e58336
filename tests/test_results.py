"""Recorded recipe results: where they live, the commit each names, staleness, and `zoo results check`.

References: git itself (history of the results file, `git rev-parse HEAD`, `git log` of a model file), the package
metadata in pyproject.toml, and a run of the same recipe through `zoo finetune`. The real results files are only
read here; every write goes to a temporary file."""
import fnmatch
import inspect
import json
import subprocess
import tomllib
from pathlib import Path

import pytest

from zoo.cli import main
from zoo.plugins import task_module
from zoo.plugins import plugin_of_module, plugins
from zoo.registry import _entry
from zoo.results import code_paths, changed_paths, compare, load_results, results_files

ROOT = Path(__file__).resolve().parent.parent


def git(*args):
    return subprocess.run(["git", "-C", str(ROOT), *args], capture_output=True, text=True, check=True).stdout.strip()


# ---- the recorded rows ------------------------------------------------------------------------------------------

def test_every_plugin_results_file_is_package_data():
    meta = tomllib.loads((ROOT / "pyproject.toml").read_text())
    patterns = [(pkg, pat) for pkg, pats in meta["tool"]["setuptools"]["package-data"].items() for pat in pats]
    files = results_files()
    assert set(files) == set(plugins())
    for name, path in files.items():
        package = plugins()[name].package
        assert any(pkg in ("*", package) and fnmatch.fnmatch(path.name, pat) for pkg, pat in patterns), path
    assert not (ROOT / "configs" / "results.json").exists()


def test_rows_name_a_commit_whose_results_file_held_them():
    rows = load_results()
    assert len(rows) >= 22
    for row in rows:
        commit = row.get("commit") or row["recorded_in"]
        subprocess.run(["git", "-C", str(ROOT), "merge-base", "--is-ancestor", commit, "HEAD"], check=True)
        assert (ROOT / row["recipe"]).is_file(), row["recipe"]
        # each row sits in the results file of the plugin that defines its model
        plugin = plugin_of_module(_entry(row["model"]).fn.__module__)
        assert row in json.loads(results_files()[plugin.name].read_text())
        if "recorded_in" in row and "commit" not in row:
            # the commit wrote exactly this value for this recipe (then kept in configs/results.json)
            then = json.loads(git("show", f"{commit}:configs/results.json"))
            assert [r["value"] for r in then if r["recipe"] == row["recipe"]] == [row["value"]]
            parent_rows = json.loads(git("show", f"{commit}^:configs/results.json") or "[]") \
                if git("ls-tree", f"{commit}^", "configs/results.json") else []
            assert [r for r in parent_rows if r["recipe"] == row["recipe"]] != \
                [r for r in then if r["recipe"] == row["recipe"]], "not the commit that recorded the row"


def test_code_paths_cover_model_task_and_engine_code():
    row = {"recipe": "configs/vision/vit_irpe_tiny_fmnist.yaml", "model": "vit_irpe_tiny"}
    paths = set(code_paths(row))
    model_file = Path(inspect.getsourcefile(_entry("vit_irpe_tiny").fn)).relative_to(ROOT).as_posix()
    task_file = task_module("image_classification").replace(".", "/") + ".py"
    assert {model_file, task_file, "zoo/finetune/engine.py", "zoo/nn/attention.py", "zoo/pe/irpe.py"} <= paths
    assert not any(p.startswith(("domains/code/", "domains/genomics/", "tests/")) for p in paths)


def test_a_row_is_stale_exactly_when_git_sees_its_model_file_change():
    model_file = Path(inspect.getsourcefile(_entry("vit_irpe_tiny").fn)).relative_to(ROOT).as_posix()
    changes = git("log", "--format=%H", "--", model_file).split()
    assert len(changes) >= 2
    before = changes[1]                      # a commit before the model file's last change
    row = {"recipe": "configs/vision/vit_irpe_tiny_fmnist.yaml", "model": "vit_irpe_tiny", "commit": before}
    assert model_file in changed_paths(row)
    assert changed_paths(dict(row, commit="0" * 40)) is None            # a commit this clone does not have


# ---- comparing --------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("metric,recorded,now,within,way", [
    ("accuracy", 0.8834, 0.8749, False, "worse"),
    ("accuracy", 0.8834, 0.8870, True, "better"),
    ("macro_f1", 0.70, 0.75, False, "better"),
    ("perplexity", 28.22, 27.0, False, "better"),        # lower perplexity is better
    ("perplexity", 28.22, 28.224, True, "worse"),
    ("loss", 1.0, 1.2, False, "worse"),
])
def test_compare_is_direction_aware(metric, recorded, now, within, way):
    ok, message = compare(metric, recorded, now, tolerance=0.005)
    assert ok is within
    assert f"recorded {recorded:.4f}" in message and f"now {now:.4f}" in message and f"({way};" in message


def test_compare_relative_tolerance():
    assert compare("perplexity", 28.0, 28.2, tolerance=0.005, rtol=0.01)[0]        # 0.2 <= 1% of 28
    assert not compare("perplexity", 28.0, 28.4, tolerance=0.005, rtol=0.01)[0]


# ---- zoo results check ------------------------------------------------------------------------------------------

RECIPE = """\
task: image_classification
model:
  name: vit_irpe_tiny
  kwargs: {patch_size: 4, depth: 1, embed_dim: 32, num_heads: 2}
data: {name: digits, augment: false}
optim: {lr: 2.0e-3, warmup_steps: 0}
train: {steps: 2, batch_size: 32, eval_every: 2, log_every: 1, progress: false, num_threads: 1, seed: 5}
"""


@pytest.fixture(scope="module")
def tiny_recipe(tmp_path_factory):
    """A 2-step digits recipe and its final accuracy from a run through `zoo finetune`."""
    d = tmp_path_factory.mktemp("recipe")
    recipe = d / "tiny_digits.yaml"
    recipe.write_text(RECIPE)
    assert main(["finetune", str(recipe), f"output.dir={d / 'ref'}"]) == 0
    summary = json.loads((d / "ref" / "summary.json").read_text())
    return recipe, summary["final"]["accuracy"]


def _row(recipe, value):
    return {"recipe": str(recipe), "model": "vit_irpe_tiny", "dataset": "digits", "metric": "accuracy",
            "value": value, "wall_time_s": 1.0, "params": 1, "epochs": 0.1, "amp": "off", "machine": "test",
            "date": "2026-01-01", "recorded_in": git("rev-parse", "HEAD")}


def test_check_within_tolerance_exits_0(tiny_recipe, tmp_path, capsys):
    recipe, value = tiny_recipe
    results = tmp_path / "results.json"
    results.write_text(json.dumps([_row(recipe, value + 0.002)]))
    assert main(["results", "--results", str(results), "check", str(recipe), "--tolerance", "0.005",
                 "--out", str(tmp_path / "run")]) == 0
    out = capsys.readouterr().out
    assert f"recorded {value + 0.002:.4f}, now {value:.4f}" in out and "within the tolerance" in out
    assert json.loads(results.read_text())[0]["value"] == value + 0.002          # not recorded without --record


def test_check_outside_tolerance_fails_naming_both_values(tiny_recipe, tmp_path, capsys):
    recipe, value = tiny_recipe
    results = tmp_path / "results.json"
    results.write_text(json.dumps([_row(recipe, value - 0.1)]))
    assert main(["results", "--results", str(results), "check", str(recipe), "--out", str(tmp_path / "run")]) == 1
    out = capsys.readouterr().out
    assert f"recorded {value - 0.1:.4f}, now {value:.4f}" in out and "(better;" in out and "OUTSIDE" in out


def test_check_record_stores_the_new_value_and_head(tiny_recipe, tmp_path):
    recipe, value = tiny_recipe
    results = tmp_path / "results.json"
    results.write_text(json.dumps([_row(recipe, value - 0.1)]))
    assert main(["results", "--results", str(results), "check", str(recipe), "--out", str(tmp_path / "run"),
                 "--record", "--allow-dirty"]) == 0
    [row] = json.loads(results.read_text())
    assert row["value"] == value and row["commit"] == git("rev-parse", "HEAD") and row["recipe"] == str(recipe)


def test_check_without_a_recorded_row_names_the_recipe(tiny_recipe, tmp_path, capsys):
    recipe, _ = tiny_recipe
    results = tmp_path / "results.json"
    results.write_text("[]")
    assert main(["results", "--results", str(results), "check", str(recipe)]) == 2
    assert f"no recorded result for recipe {recipe}" in capsys.readouterr().err
