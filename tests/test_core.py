"""Package-level promises: import hygiene, registry behaviour, CLI, MODELS.md freshness."""
import json
import re
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


# ---- bad arguments to create / load_checkpoint -------------------------------------------------------------------

@pytest.mark.parametrize("name", [None, 3, b"vit_irpe_tiny", ["vit_irpe_tiny"]])
def test_create_refuses_a_name_that_is_not_a_string(name):
    import zoo
    from zoo.errors import ConfigError

    with pytest.raises(ConfigError, match=r"model name.*" + type(name).__name__):
        zoo.create(name)
    with pytest.raises(ConfigError, match=r"model name"):
        zoo.model_info(name)


@pytest.mark.parametrize("kw,pattern", [
    (dict(depth="4"), r"depth.*vit_irpe_tiny.*'4'"),
    (dict(depth=2.5), r"depth.*vit_irpe_tiny.*2\.5"),
    (dict(depth=True), r"depth.*vit_irpe_tiny.*True"),
    (dict(depth=0), r"depth.*vit_irpe_tiny.*0"),
    (dict(num_heads=-3), r"num_heads.*vit_irpe_tiny.*-3"),
    (dict(embed_dim=None), r"embed_dim.*vit_irpe_tiny.*None"),
    (dict(num_classes="10"), r"num_classes.*vit_irpe_tiny"),
    (dict(img_size=(32, "32")), r"img_size.*vit_irpe_tiny"),
    (dict(img_size=(32, 32, 32)), r"img_size.*vit_irpe_tiny"),
    (dict(patch_size=0), r"patch_size.*vit_irpe_tiny"),
    (dict(mlp_ratio="4"), r"mlp_ratio.*vit_irpe_tiny.*'4'"),
    (dict(drop_path_rate=1.5), r"drop_path_rate.*vit_irpe_tiny.*1\.5"),
    (dict(drop_rate="0.1"), r"drop_rate.*vit_irpe_tiny"),
])
def test_create_checks_integer_geometry_arguments(kw, pattern):
    import zoo
    from zoo.errors import ConfigError

    with pytest.raises(ConfigError, match=pattern):
        zoo.create("vit_irpe_tiny", **kw)


def test_create_accepts_integer_geometry_in_its_usual_forms():
    import numpy as np

    import zoo

    m = zoo.create("vit_irpe_tiny", depth=np.int64(1), img_size=(32, 48), patch_size=16, num_classes=0)
    assert len(m.blocks) == 1 and m.num_classes == 0


def test_create_names_an_unknown_keyword_and_the_accepted_ones():
    import zoo
    from zoo.errors import ConfigError

    with pytest.raises(ConfigError, match=r"dpeth.*vit_irpe_tiny.*depth") as e:
        zoo.create("vit_irpe_tiny", dpeth=2)
    assert "embed_dim" in str(e.value)                  # the accepted keywords are listed
    with pytest.raises(ConfigError, match=r"dimm.*code_lm_rope_tiny.*dim"):
        zoo.create("code_lm_rope_tiny", dimm=8)


def test_create_turns_a_deep_type_error_into_one_naming_the_model_and_arguments():
    import zoo
    from zoo.errors import ConfigError

    with pytest.raises(ConfigError, match=r"cannot build vit_irpe_tiny with irpe='product'"):
        zoo.create("vit_irpe_tiny", irpe="product")        # a dict of iRPE settings is expected


@pytest.mark.parametrize("value", ["yes", None, 2])
def test_create_refuses_a_pretrained_flag_that_is_not_a_bool(value):
    import zoo
    from zoo.errors import ConfigError

    with pytest.raises(ConfigError, match="pretrained"):
        zoo.create("vit_irpe_tiny", pretrained=value)


@pytest.mark.parametrize("sd,key", [({0: "t"}, "0"), ({"cls_token": "text"}, "'cls_token'"),
                                    ({"cls_token": None}, "'cls_token'")])
def test_load_checkpoint_names_a_bad_key_or_value(sd, key):
    import torch

    import zoo
    from zoo.errors import CheckpointError

    model = zoo.create("vit_irpe_tiny", depth=1, img_size=32)
    sd = {k: (torch.zeros(1) if v == "t" else v) for k, v in sd.items()}
    with pytest.raises(CheckpointError, match=re.escape(key) + ".*my.pth"):
        zoo.load_checkpoint(model, sd, source="my.pth")


@pytest.mark.parametrize("name", ["vit_irpe_tiny", "detr_irpe_tiny", "dna_rope_tiny"])
@pytest.mark.parametrize("bad,key", [("key", "7"), ("value", "'extra'")])
def test_pretrained_file_with_a_bad_entry_names_it_and_the_file(tmp_path, name, bad, key):
    import torch

    import zoo
    from zoo.errors import CheckpointError

    sd = {"x.weight": torch.zeros(2)}
    sd[7 if bad == "key" else "extra"] = torch.zeros(1) if bad == "key" else "not a tensor"
    for i, obj in enumerate((sd, {"model": sd, "epoch": 3})):
        path = tmp_path / f"ck{i}.pth"
        torch.save(obj, path)
        with pytest.raises(CheckpointError, match=re.escape(key) + ".*" + re.escape(str(path))):
            zoo.create(name, pretrained_file=str(path))
