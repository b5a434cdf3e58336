"""Domains are plugins: discovery through entry points and through the source-tree scan, a third-party plugin
registered the same way, and the core (every module of ``zoo/``) naming no domain."""
from __future__ import annotations

import ast
import subprocess
import sys
import textwrap
from importlib import metadata
from pathlib import Path

import pytest

import zoo
from zoo import plugins as zp
from zoo.errors import ConfigError
from zoo.finetune import get_task, list_tasks
from zoo.finetune.tasks import _TASKS
from zoo.registry import _REGISTRY

ROOT = Path(__file__).resolve().parents[1]
OWN = {"vision", "genomics", "documents", "code"}
OWN_ENTRY_POINTS = [metadata.EntryPoint(name=d, value=f"domains.{d}:PLUGIN", group=zp.ENTRY_POINT_GROUP)
                    for d in sorted(OWN)]


@pytest.fixture
def rediscover(monkeypatch):
    """Plugins discovered afresh inside the test (with whatever it monkeypatches) and again after it."""
    zp.reset()
    yield monkeypatch
    monkeypatch.undo()
    zp.reset()


@pytest.fixture
def fake_plugin(tmp_path, monkeypatch):
    """A third-party package ``zoo_fake_plugin`` on sys.path: one model module, one task module."""
    pkg = tmp_path / "zoo_fake_plugin"
    pkg.mkdir()
    (pkg / "__init__.py").write_text(textwrap.dedent("""
        PLUGIN = {"name": "fakedomain", "models": [".nets"], "tasks": {"fake_task": ".tasks"}, "benches": []}
    """))
    (pkg / "nets.py").write_text(textwrap.dedent('''
        from torch import nn
        from zoo import register_model

        @register_model
        def fake_plugin_net(**kw):
            """A linear layer from a third-party plugin."""
            return nn.Linear(3, 2)
    '''))
    (pkg / "tasks.py").write_text(textwrap.dedent("""
        from zoo.finetune.tasks import Task, register_task

        @register_task("fake_task")
        class FakeTask(Task):
            build_data = num_train_batches = num_train_samples = train_batches = loss = evaluate = None
    """))
    monkeypatch.syspath_prepend(str(tmp_path))
    yield metadata.EntryPoint(name="fakedomain", value="zoo_fake_plugin:PLUGIN", group=zp.ENTRY_POINT_GROUP)
    _REGISTRY.pop("fake_plugin_net", None)
    _TASKS.pop("fake_task", None)
    for mod in [m for m in sys.modules if m.startswith("zoo_fake_plugin")]:
        del sys.modules[mod]


def test_entry_points_find_own_domains_and_a_third_party_plugin(rediscover, fake_plugin):
    scanned = []
    rediscover.setattr(zp, "_entry_points", lambda: OWN_ENTRY_POINTS + [fake_plugin])
    rediscover.setattr(zp, "_scan_source_tree", lambda: scanned.append(1) or [])
    found = zp.plugins()
    assert set(found) == OWN | {"fakedomain"}
    assert scanned == []                        # the metadata declares the own domains: no scan
    fake = found["fakedomain"]
    assert fake.models == ("zoo_fake_plugin.nets",) and fake.tasks == {"fake_task": "zoo_fake_plugin.tasks"}
    # its models and tasks reach the core's registries like a domain's
    assert "fake_plugin_net" in zoo.list_models("fake_plugin_*")
    assert zoo.model_info("fake_plugin_net")["domain"] == "fakedomain"
    assert tuple(zoo.create("fake_plugin_net").weight.shape) == (2, 3)
    assert "fake_task" in list_tasks()
    assert get_task("fake_task").__module__ == "zoo_fake_plugin.tasks"


def test_source_tree_scan_without_metadata(rediscover):
    rediscover.setattr(zp, "_entry_points", lambda: [])
    found = zp.plugins()
    assert set(found) == OWN
    assert {p.package for p in found.values()} == {f"domains.{d}" for d in OWN}
    assert found["vision"].timm and not found["code"].timm
    # every task a recipe in configs/ names is declared by some plugin
    import yaml
    recipe_tasks = {yaml.safe_load(p.read_text())["task"] for p in (ROOT / "configs").glob("*/*.yaml")}
    assert recipe_tasks <= set(zp.task_names())


def test_metadata_of_this_checkout_declares_the_own_domains():
    # pyproject.toml's entry points are the ones the tests above stand in for
    text = (ROOT / "pyproject.toml").read_text()
    section = text.split('[project.entry-points."zoo.plugins"]', 1)[1].split("\n[", 1)[0]
    declared = {line.split("=")[0].strip(): line.split("=")[1].strip().strip('"')
                for line in section.strip().splitlines() if "=" in line and not line.startswith("#")}
    assert declared == {ep.name: ep.value for ep in OWN_ENTRY_POINTS}


def test_entry_point_with_no_own_domain_falls_back_to_the_scan(rediscover, fake_plugin):
    rediscover.setattr(zp, "_entry_points", lambda: [fake_plugin])
    assert set(zp.plugins()) == OWN | {"fakedomain"}


@pytest.mark.parametrize("decl, match", [
    ({"name": "x", "model": [".m"]}, r"unknown key 'model'.*did you mean 'models'"),
    ({"models": [".m"]}, r"needs a 'name'"),
    ({"name": "x", "models": ".m"}, r"'models' must be a list"),
    ({"name": "x", "tasks": [".t"]}, r"'tasks' must map"),
    ({"name": "x", "timm": "yes"}, r"'timm' must be True or False"),
    (["x"], r"must be a mapping"),
])
def test_bad_declaration_is_named(decl, match):
    with pytest.raises(ConfigError, match=match):
        zp.Plugin.from_mapping(decl, "somepkg")


def test_two_plugins_with_one_name_refused(rediscover, fake_plugin):
    rediscover.setattr(zp, "_entry_points", lambda: OWN_ENTRY_POINTS + [fake_plugin])
    import zoo_fake_plugin
    rediscover.setitem(zoo_fake_plugin.PLUGIN, "name", "vision")
    with pytest.raises(ConfigError, match=r"two plugins are named 'vision'"):
        zp.plugins()


def test_import_zoo_registers_timm_plugins_only():
    code = ("import sys, zoo, timm; mods = sorted(sys.modules); print(timm.is_model('vit_irpe_tiny')); "
            "print(type(timm.create_model('vit_irpe_tiny')).__module__); print(mods)")
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT)
    assert res.returncode == 0, res.stderr
    known, module, mods = res.stdout.splitlines()[:3]
    assert known == "True" and module.startswith("domains.vision")
    loaded = eval(mods)
    for heavy in ("Bio", "tree_sitter", "pdfplumber", "transformers", "domains.code.models",
                  "domains.genomics.models", "domains.documents.models"):
        assert heavy not in loaded, f"import zoo imported {heavy}"
