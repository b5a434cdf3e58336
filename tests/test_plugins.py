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
from zoo.bench import _BENCHES, run_bench
from zoo.cli import build_parser
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
        PLUGIN = {"name": "fakedomain", "models": [".nets"], "tasks": {"fake_task": ".tasks"}, "benches": [".benches"]}
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
    (pkg / "benches.py").write_text(textwrap.dedent("""
        from zoo.bench import register_bench

        RAN = []
        register_bench("fakesuite", lambda args: RAN.append(("fakesuite", args.fake_n)) or 0,
                       options=[(("--fake-n",), dict(type=int, default=3))])
        register_bench("extrapolation", lambda args: RAN.append(("extrapolation", args.steps)) or 0,
                       variant="fakedomain", defaults={"steps": 7})
    """))
    monkeypatch.syspath_prepend(str(tmp_path))
    yield metadata.EntryPoint(name="fakedomain", value="zoo_fake_plugin:PLUGIN", group=zp.ENTRY_POINT_GROUP)
    _REGISTRY.pop("fake_plugin_net", None)
    _TASKS.pop("fake_task", None)
    _BENCHES.pop("fakesuite", None)
    _BENCHES.get("extrapolation", {}).pop("fakedomain", None)
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


def test_plugin_benches_bring_their_suites_options_and_variants(rediscover, fake_plugin):
    rediscover.setattr(zp, "_entry_points", lambda: OWN_ENTRY_POINTS + [fake_plugin])
    args = build_parser().parse_args(["bench", "fakesuite", "--fake-n", "5"])
    assert run_bench(args.suite, args) == 0
    args = build_parser().parse_args(["bench", "extrapolation", "--domain", "fakedomain"])
    assert args.steps is None                   # unset on the command line: the variant's default applies
    assert run_bench(args.suite, args) == 0
    import zoo_fake_plugin.benches as fake_benches
    assert fake_benches.RAN == [("fakesuite", 5), ("extrapolation", 7)]
    # the own suites stay, with the options their plugins register
    own = build_parser().parse_args(["bench", "extrapolation", "--domain", "genomics", "--runs", "a,b"])
    assert (own.domain, own.runs) == ("genomics", "a,b")
    with pytest.raises(SystemExit):
        build_parser().parse_args(["bench", "nosuchsuite"])
    with pytest.raises(ConfigError, match=r"--domain nowhere: not implemented; known: code, fakedomain, genomics"):
        run_bench("extrapolation", build_parser().parse_args(["bench", "extrapolation", "--domain", "nowhere"]))


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

# ---- the core names no domain ----------------------------------------------------------------------------------

def _zoo_modules():
    return sorted(p for p in (ROOT / "zoo").rglob("*.py"))


def _docstring_nodes(tree):
    out = set()
    for node in ast.walk(tree):
        if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)) and node.body:
            first = node.body[0]
            if isinstance(first, ast.Expr) and isinstance(first.value, ast.Constant):
                out.add(id(first.value))
    return out


def _imports(tree):
    """Every module named by an import statement or an ``import_module("...")`` call with a constant argument."""
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            yield from (a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            yield node.module
        elif isinstance(node, ast.Call) and node.args and isinstance(node.args[0], ast.Constant) \
                and isinstance(node.args[0].value, str):
            fn = node.func
            name = fn.attr if isinstance(fn, ast.Attribute) else getattr(fn, "id", "")
            if name in ("import_module", "__import__"):
                yield node.args[0].value


def test_no_zoo_module_imports_a_domain():
    assert len(_zoo_modules()) > 20
    offenders = []
    for path in _zoo_modules():
        for mod in _imports(ast.parse(path.read_text())):
            if mod == "domains" or mod.startswith("domains."):
                offenders.append(f"{path.relative_to(ROOT)}: {mod}")
    assert offenders == []


def test_no_zoo_module_spells_a_domain_name():
    names = set(zp.plugins()) | OWN
    assert OWN <= names
    offenders = []
    for path in _zoo_modules():
        tree = ast.parse(path.read_text())
        docs = _docstring_nodes(tree)
        for node in ast.walk(tree):
            if isinstance(node, ast.Constant) and isinstance(node.value, str) and id(node) not in docs:
                if node.value in names or node.value == zp.SOURCE_PACKAGE and path.name != "plugins.py" \
                        or node.value.startswith(zp.SOURCE_PACKAGE + "."):
                    offenders.append(f"{path.relative_to(ROOT)}:{node.lineno}: {node.value!r}")
    assert offenders == []


def test_the_ast_checks_catch_what_they_look_for():
    # the two checks above, applied to a snippet that breaks both rules, report it
    tree = ast.parse('import domains.code.models\nimportlib.import_module("domains.vision.task")\nx = "genomics"\n')
    mods = list(_imports(tree))
    assert "domains.code.models" in mods and "domains.vision.task" in mods
    consts = [n.value for n in ast.walk(tree) if isinstance(n, ast.Constant) and id(n) not in _docstring_nodes(tree)]
    assert "genomics" in consts
