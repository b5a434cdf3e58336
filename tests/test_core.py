"""Package-level promises: import hygiene, registry behaviour, CLI, MODELS.md freshness."""
import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
HEAVY = ("Bio", "tree_sitter", "pdfplumber", "transformers", "tokenizers")


def _run(code: str) -> str:
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT)
    assert res.returncode == 0, res.stderr
    return res.stdout


def test_import_zoo_pulls_no_domain_dependencies():
    out = _run("import sys, zoo; zoo.list_models(); print(sorted(m for m in sys.modules))")
    mods = eval(out)
    bad = [m for m in mods if m.split(".")[0] in HEAVY]
    assert bad == [], f"import zoo imported {bad}"


BLOCKER = """
import sys
class Block:
    def find_spec(self, name, path=None, target=None):
        if name.split('.')[0] in ('timm', 'torchvision', 'omegaconf', 'safetensors', 'huggingface_hub', 'domains'):
            raise ImportError('blocked ' + name)
sys.meta_path.insert(0, Block())
"""


def test_pe_and_nn_need_torch_alone():
    # with every other dependency unimportable, the primitives still import and run
    out = _run(BLOCKER + """
import torch, pkgutil, importlib, zoo.pe, zoo.nn
for m in pkgutil.iter_modules(zoo.pe.__path__):
    importlib.import_module('zoo.pe.' + m.name)
from zoo.nn import Block
print(Block(16, 2)(torch.randn(1, 3, 16)).shape)
""")
    assert "torch.Size([1, 3, 16])" in out


def test_unknown_model_lists_closest():
    import zoo
    from zoo.errors import UnknownModelError

    with pytest.raises(UnknownModelError) as e:
        zoo.create("vit_irpe_smal")
    assert "vit_irpe_small" in str(e.value)
    with pytest.raises(UnknownModelError, match="tag"):
        zoo.create("vit_irpe_small.nosuchtag")


def test_list_models_pattern_and_tags():
    import zoo

    names = zoo.list_models("vit_irpe_*")
    assert {"vit_irpe_tiny", "vit_irpe_small", "vit_irpe_base"} <= set(names)
    assert all(n.startswith("vit_irpe_") for n in names)
    tagged = zoo.list_models("vit_*irpe*", pretrained=True)
    assert "vit_irpe_small.in1k" in tagged and all("." in t for t in tagged)
    info = zoo.model_info("vit_irpe_tiny")
    assert info["domain"] == "vision" and info["params"] > 5e6
    assert info["pretrained"]["in1k"]["url"].endswith("deit_tiny_patch16_224_ctx_product_50_shared_k.pth")


def test_register_model_rejects_duplicates():
    import zoo
    from zoo.registry import _REGISTRY

    try:
        @zoo.register_model(name="_test_dup_model", timm=False)
        def a(**kw):
            return None
        with pytest.raises(ValueError, match="already registered"):
            @zoo.register_model(name="_test_dup_model", timm=False)
            def b(**kw):
                return None
    finally:
        _REGISTRY.pop("_test_dup_model", None)


def test_cli_list_and_info():
    out = subprocess.run([sys.executable, "-m", "zoo", "list", "vit_irpe*"], capture_output=True, text=True,
                         cwd=ROOT)
    assert out.returncode == 0 and "vit_irpe_small" in out.stdout.split()
    info = subprocess.run([sys.executable, "-m", "zoo", "info", "vit_irpe_small"], capture_output=True, text=True,
                          cwd=ROOT)
    assert json.loads(info.stdout)["name"] == "vit_irpe_small"
    bad = subprocess.run([sys.executable, "-m", "zoo", "info", "vit_irpe_smal"], capture_output=True, text=True,
                         cwd=ROOT)
    assert bad.returncode == 2 and "vit_irpe_small" in bad.stderr


def test_models_md_is_up_to_date():
    from zoo.cli import models_markdown

    import difflib

    have, want = (ROOT / "MODELS.md").read_text(), models_markdown()
    diff = "".join(list(difflib.unified_diff(have.splitlines(True), want.splitlines(True), "MODELS.md", "registry"))[:40])
    assert have == want, f"MODELS.md is out of date: run `zoo list --markdown > MODELS.md`\n{diff}"


def test_atomic_write_gives_the_permissions_of_a_plainly_created_file(tmp_path):
    import os

    from zoo.io import atomic_write_text

    old = os.umask(0o022)
    try:
        plain = tmp_path / "plain.txt"
        plain.write_text("x")
        atomic = atomic_write_text(tmp_path / "atomic.txt", "x")
        assert (atomic.stat().st_mode & 0o777) == (plain.stat().st_mode & 0o777) == 0o644
    finally:
        os.umask(old)
