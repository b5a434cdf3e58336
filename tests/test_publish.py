"""Publishing: ``zoo export`` of a real tiny run per domain, loaded back with ``zoo.create("local-dir:")`` /
``("hf-hub:")`` (a populated Hugging Face cache, offline) and ``timm.create_model``, giving the run's logits exactly;
the card's usage snippet run in a fresh process; ``zoo push`` refusing what fails validation; the recipes' tags
registered ahead of their upload.

Each run is two or three steps of a one-block model on a small slice of the real data the domain tests use."""
from __future__ import annotations

import dataclasses
import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import zoo
from zoo import publish, registry
from zoo.errors import CheckpointError, ConfigError, WeightsError
from zoo.finetune import finetune
from support.modules import load_test_module

ROOT = Path(__file__).resolve().parent.parent
HERE = Path(__file__).parent
R_INTRO = Path("/usr/share/doc/r-doc-pdf/manual/R-intro.pdf")
VISION_RECIPE = "configs/vision/vit_irpe_tiny_fmnist.yaml"
TRAIN = {"steps": 2, "progress": False, "log_every": 1, "num_threads": 1, "seed": 0}


def _helper(rel: str):
    """A helper module of another test folder (the real-data fixtures written there)."""
    return load_test_module(HERE / rel, "_publish")


# ---- one tiny real run per domain, and its export ---------------------------------------------------------------------

def _vision(tmp: Path):
    return {"task": "image_classification",
            "model": {"name": "vit_irpe_tiny", "kwargs": {"patch_size": 7, "depth": 1, "embed_dim": 32, "num_heads": 2}},
            "data": {"name": "fashion_mnist", "train_limit": 128, "eval_limit": 64, "augment": False},
            "optim": {"lr": 2e-3}, "train": {**TRAIN, "batch_size": 64, "eval_batch_size": 64}}, VISION_RECIPE


def _code(tmp: Path):
    src = _helper("code/code_test_helpers.py").copy_small_tree(tmp / "src", train=4, val=1, test=1)
    cfg = _helper("code/code_test_helpers.py").lm_cfg(src, "unused", steps=2, eval_batch_size=16)
    cfg["data"]["eval_limit"] = 16
    return cfg, None


def _genomics(tmp: Path):
    return {"task": "sequence_classification",
            "model": {"name": "dna_rope_tiny", "kwargs": {"dim": 32, "depth": 1, "num_heads": 2}},
            "data": {"name": "splice_junctions", "train_limit": 64, "eval_limit": 32},
            "optim": {"lr": 2e-3}, "train": {**TRAIN, "batch_size": 32, "eval_batch_size": 32}}, None


def _documents(tmp: Path):
    import pypdfium2 as pdfium

    assert R_INTRO.is_file(), f"{R_INTRO} is missing: run scripts/setup.sh (apt-get install r-doc-pdf)"
    src, out = pdfium.PdfDocument(str(R_INTRO)), pdfium.PdfDocument.new()
    out.import_pages(src, [10, 11, 13])                     # 13 falls in the test split (content hash)
    (tmp / "manuals").mkdir()
    out.save(str(tmp / "manuals" / "R-intro.pdf"))
    out.close()
    src.close()
    return {"task": "word_labelling",
            "model": {"name": "doc_layoutlm_tiny",
                      "kwargs": {"dim": 32, "depth": 1, "num_heads": 2, "mlp_hidden": 64}},
            "data": {"name": "r_manuals", "root": str(tmp / "manuals"), "seq_len": 64, "min_freq": 1},
            "optim": {"lr": 3e-3}, "train": {**TRAIN, "batch_size": 4, "eval_batch_size": 8}}, None


DOMAINS = {"vision": _vision, "code": _code, "genomics": _genomics, "documents": _documents}
MARKS = {"vision": "dataset-fashion-mnist", "genomics": "r-cran-mlbench", "documents": "r-doc-pdf"}


@dataclasses.dataclass
class Exported:
    run: Path
    out: Path
    summary: dict
    config: dict


_RUNS: dict = {}


def exported(domain: str, tmp_path_factory) -> Exported:
    """The domain's run (trained once per session) and its export (vision: with the recipe's registered repository
    id, the others: none, so that their card loads the local folder)."""
    if domain not in _RUNS:
        tmp = tmp_path_factory.mktemp(domain)
        cfg, recipe = DOMAINS[domain](tmp)
        cfg["output"] = {"dir": str(tmp / "run")}
        summary = finetune(cfg, recipe=recipe)
        out = publish.export(tmp / "run", tmp / "published")
        _RUNS[domain] = Exported(tmp / "run", out, summary, json.loads((out / "config.json").read_text()))
    return _RUNS[domain]


def _run_model(e: Exported):
    """The model of the run folder itself (what the engine trained), for reference."""
    return zoo.create(e.summary["model"], pretrained_file=str(e.run / "model.safetensors"),
                      **e.summary["model_kwargs"]).eval()


def _inputs(task: str, kwargs: dict, g: torch.Generator):
    """A model input of ``task`` (positional args, keyword args)."""
    if task == "image_classification":
        return (torch.randn(3, kwargs["in_chans"], kwargs["img_size"], kwargs["img_size"], generator=g),), {}
    if task == "causal_lm":
        from domains.code.models import code_positions
        x = torch.randint(0, kwargs["vocab_size"], (2, 24), generator=g)
        return (x, code_positions(x, newline_ids=[10], flat_levels=True)), {}
    if task == "sequence_classification":
        return (torch.randint(7, 11, (2, 40), generator=g),), {}
    if task == "word_labelling":
        x = torch.randint(2, kwargs["vocab_size"], (2, 16), generator=g)
        xy = torch.randint(0, 900, (2, 16, 2), generator=g)
        boxes = torch.cat([xy, xy + torch.randint(1, 100, (2, 16, 2), generator=g)], dim=-1)
        return (x,), {"pos": zoo.Positions(ids=torch.arange(16).expand(2, 16), boxes=boxes)}
    raise AssertionError(f"no input for task {task}")


def _outputs(model, e: Exported):
    args, kw = _inputs(e.summary["task"], e.summary["model_kwargs"], torch.Generator().manual_seed(5))
    with torch.no_grad():
        return model.eval()(*args, **kw)


def _domain_param(domain: str):
    marks = [pytest.mark.debian_data(MARKS[domain])] if domain in MARKS else []
    return pytest.param(domain, marks=marks, id=domain)


@pytest.fixture
def one_thread_env(monkeypatch):
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


# ---- (a) export -> load round trip, one model per domain ---------------------------------------------------------------

@pytest.mark.parametrize("domain", [_domain_param(d) for d in DOMAINS])
def test_export_then_local_dir_gives_the_runs_logits_exactly(domain, tmp_path_factory, one_thread_env):
    e = exported(domain, tmp_path_factory)
    ref = _run_model(e)
    got = zoo.create(f"local-dir:{e.out}")
    sd_ref, sd_got = ref.state_dict(), got.state_dict()
    assert list(sd_got) == list(sd_ref)
    assert all(torch.equal(sd_got[k], sd_ref[k]) for k in sd_ref)
    a, b = _outputs(ref, e), _outputs(got, e)
    assert a.abs().max() > 0 and torch.equal(a, b), f"max difference {(a - b).abs().max()}"
    # what the folder holds: the run's weights, config and artifacts byte for byte; config.json rebuilds the run's model
    assert (e.out / "model.safetensors").read_bytes() == (e.run / "model.safetensors").read_bytes()
    assert (e.out / "recipe.yaml").read_bytes() == (e.run / "config.yaml").read_bytes()
    assert e.config["zoo"]["artifacts"] == e.summary["artifacts"] and bool(e.summary["artifacts"]) == (domain != "vision")
    for a_name in e.summary["artifacts"]:
        assert (e.out / a_name).read_bytes() == (e.run / a_name).read_bytes()
    assert e.config["architecture"] == e.summary["model"] and e.config["model_args"] == e.summary["model_kwargs"]
    assert e.config["zoo"]["task"] == e.summary["task"] and e.config["zoo"]["domain"] == domain
    assert e.config["zoo"]["metrics"]["final"] == e.summary["final"]
    # the commit the weights were trained at, as the run recorded it
    assert e.config["zoo"]["commit"] == e.summary["commit"] and e.config["zoo"]["commit_from"] == "run"
    assert re.fullmatch(r"[0-9a-f]{40}", e.summary["commit"])
    # extra keyword arguments on top of model_args: device / dtype, and a builder argument
    wide = zoo.create(f"local-dir:{e.out}", dtype=torch.float64)
    assert all(v.dtype == torch.float64 for v in wide.state_dict().values() if v.is_floating_point())
    arch = zoo.create(f"local-dir:{e.out}", pretrained=False)
    assert not all(torch.equal(arch.state_dict()[k], sd_ref[k]) for k in sd_ref)


@pytest.mark.debian_data("dataset-fashion-mnist")
def test_vision_export_loads_with_timm_and_describes_its_input(tmp_path_factory, one_thread_env):
    import timm
    from timm.data import resolve_data_config

    e = exported("vision", tmp_path_factory)
    ref = _outputs(_run_model(e), e)
    model = timm.create_model(f"local-dir:{e.out}", pretrained=True)
    assert torch.equal(_outputs(model, e), ref)
    untrained = timm.create_model(f"local-dir:{e.out}")                   # timm's default: no weights
    assert not torch.equal(_outputs(untrained, e), ref)
    data = resolve_data_config(model=model)
    assert data["input_size"] == (1, 28, 28)
    assert tuple(data["mean"]) == pytest.approx((0.2860,), abs=1e-4)
    assert tuple(data["std"]) == pytest.approx((0.3530,), abs=1e-4)
    assert model.pretrained_cfg["num_classes"] == 10 and model.pretrained_cfg["source"] == "local-dir"
    # the recipe's tag and repository, and timm's keys in config.json
    assert e.config["pretrained_cfg"]["tag"] == "fmnist"
    assert e.config["zoo"]["repo_id"] == "zoo-models/vit_irpe_tiny_fmnist"
    assert e.config["zoo"]["recipe"]["path"] == VISION_RECIPE
    assert e.config["num_classes"] == 10 and e.config["num_features"] == 32 and e.config["global_pool"] == "token"
    # an architecture-changing argument goes through the family's filter: a new head, the rest of the weights kept
    five = zoo.create(f"local-dir:{e.out}", num_classes=5)
    assert five.head.out_features == 5 and five.pretrained_cfg["num_classes"] == 5
    kept = {k: v for k, v in _run_model(e).state_dict().items() if not k.startswith("head.")}
    assert all(torch.equal(five.state_dict()[k], v) for k, v in kept.items())


def test_an_override_the_family_cannot_take_names_the_keys(tmp_path_factory):
    e = exported("code", tmp_path_factory)
    with pytest.raises(CheckpointError, match=r"model.safetensors into .*shape mismatch"):
        zoo.create(f"local-dir:{e.out}", dim=48)
    with pytest.raises(ConfigError, match="a published folder brings its own weights"):
        zoo.create(f"local-dir:{e.out}", pretrained_file=str(e.run / "model.safetensors"))
    with pytest.raises(ConfigError, match=r"local-dir:.*nowhere.* is not a folder"):
        zoo.create(f"local-dir:{e.out.parent / 'nowhere'}")


def _hf_cache(root: Path, repo_id: str, folder: Path) -> str:
    """A Hugging Face cache holding ``folder`` as the snapshot of ``repo_id``'s main; returns the revision."""
    rev = "0123456789abcdef0123456789abcdef01234567"
    repo = root / ("models--" + repo_id.replace("/", "--"))
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text(rev)
    shutil.copytree(folder, repo / "snapshots" / rev)
    return rev


@pytest.fixture
def offline_hf(tmp_path, monkeypatch):
    from huggingface_hub import constants

    cache = tmp_path / "hf" / "hub"
    cache.mkdir(parents=True)
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    monkeypatch.setenv("HF_HUB_CACHE", str(cache))
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(cache))    # read once at import by huggingface_hub
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    return cache


@pytest.mark.debian_data("dataset-fashion-mnist")
def test_hf_hub_forms_and_the_registered_tag_load_from_the_hf_cache(tmp_path_factory, offline_hf, monkeypatch,
                                                                      one_thread_env):
    import timm

    e = exported("vision", tmp_path_factory)
    repo = "zoo-models/vit_irpe_tiny_fmnist"
    rev = _hf_cache(offline_hf, repo, e.out)
    ref = _outputs(_run_model(e), e)
    for name in (f"hf-hub:{repo}", f"hf-hub:{repo}@{rev}"):
        model = zoo.create(name)
        assert torch.equal(_outputs(model, e), ref), name
        assert model.pretrained_cfg["hf_hub_id"] == name[len("hf-hub:"):]
    assert torch.equal(_outputs(timm.create_model(f"hf-hub:{repo}", pretrained=True), e), ref)

    # the recipe's tag: unpublished it refuses and says how to produce the weights; published it loads them
    entry = registry._entry("vit_irpe_tiny")
    cfg = entry.cfgs["fmnist"]
    assert (cfg.hf_hub_id, cfg.published, cfg.recipe) == (repo, False, VISION_RECIPE)
    with pytest.raises(WeightsError, match=r"not published yet.*zoo finetune configs/vision/vit_irpe_tiny_fmnist"
                                           r"\.yaml.*zoo export runs/vit_irpe_tiny_fmnist"):
        zoo.create("vit_irpe_tiny.fmnist", pretrained=True)
    with pytest.raises(WeightsError, match="not published yet"):
        timm.create_model("vit_irpe_tiny.fmnist", pretrained=True)
    monkeypatch.setitem(entry.cfgs, "fmnist", dataclasses.replace(cfg, published=True))
    model = zoo.create("vit_irpe_tiny.fmnist", pretrained=True)
    assert torch.equal(_outputs(model, e), ref)
    assert model.pretrained_cfg["tag"] == "fmnist" and model.pretrained_cfg["num_classes"] == 10
    assert "vit_irpe_tiny.fmnist" in zoo.list_models("vit_irpe_tiny*", pretrained=True)


def _snippet(card: str) -> str:
    blocks = re.findall(r"```python\n(.*?)```", card, flags=re.S)
    assert blocks, "the card has no python usage block"
    return blocks[0]


def _run_snippet(code: str, env_extra: dict, tmp_path: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1", **env_extra}
    script = tmp_path / "snippet.py"
    script.write_text(code)
    return subprocess.run([sys.executable, str(script)], cwd=tmp_path, env=env, capture_output=True, text=True,
                          timeout=240)


@pytest.mark.debian_data("dataset-fashion-mnist")
def test_card_usage_snippet_runs_in_a_fresh_process_from_the_hf_cache(tmp_path_factory, tmp_path, offline_hf):
    e = exported("vision", tmp_path_factory)
    _hf_cache(offline_hf, "zoo-models/vit_irpe_tiny_fmnist", e.out)
    code = _snippet((e.out / "README.md").read_text())
    assert code.startswith("import zoo\n") and '"hf-hub:zoo-models/vit_irpe_tiny_fmnist"' in code
    probe = tmp_path / "weights.safetensors"
    check = f"\nfrom safetensors.torch import save_file\nsave_file(model.state_dict(), {str(probe)!r})\n"
    out = _run_snippet(code + check, {"HF_HUB_CACHE": str(offline_hf), "HF_HUB_OFFLINE": "1",
                                      "ZOO_HOME": str(tmp_path / "zoo")}, tmp_path)
    assert out.returncode == 0, out.stderr[-3000:]
    assert out.stdout.strip().splitlines()[-1] == "torch.Size([1, 10])"
    from safetensors.torch import load_file
    got, want = load_file(str(probe)), load_file(str(e.run / "model.safetensors"))
    assert list(got) == list(want) and all(torch.equal(got[k], want[k]) for k in want)


def test_card_usage_snippet_of_a_local_export_finds_its_artifacts(tmp_path_factory, tmp_path):
    e = exported("code", tmp_path_factory)
    code = _snippet((e.out / "README.md").read_text())
    assert code.startswith("import zoo\n") and f'"local-dir:{e.out.resolve()}"' in code
    assert "from zoo.hub import resolve" in code
    check = ("\nimport json\nprint(json.dumps({'tokenizer': str(tokenizer_file), "
             "'params': sum(p.numel() for p in model.parameters()), 'training': model.training}))\n")
    out = _run_snippet(code + check, {"ZOO_HOME": str(tmp_path / "zoo")}, tmp_path)
    assert out.returncode == 0, out.stderr[-3000:]
    said = json.loads(out.stdout.strip().splitlines()[-1])
    assert Path(said["tokenizer"]).read_bytes() == (e.run / "tokenizer.json").read_bytes()
    assert said["params"] == e.summary["params"] and said["training"] is False


# ---- (b) the card --------------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("domain", [_domain_param(d) for d in ("vision", "code")])
def test_card_metadata_is_hub_metadata_with_the_runs_metrics(domain, tmp_path_factory):
    e = exported(domain, tmp_path_factory)
    meta = publish.read_card_metadata((e.out / "README.md").read_text())
    assert meta["library_name"] == "zoo" and meta["license"] == "apache-2.0"
    assert meta["datasets"] == [e.summary["data"]["dataset"]]
    assert {"zoo", domain, e.summary["task"], e.summary["model"]} <= set(meta["tags"])
    (result,) = meta["model-index"][0]["results"]
    assert {m["type"]: m["value"] for m in result["metrics"]} == e.summary["final"]
    assert result["dataset"]["name"] == e.summary["data"]["dataset"] and result["task"]["name"] == e.summary["task"]
    assert set(meta["metrics"]) == set(e.summary["final"])
    card = (e.out / "README.md").read_text()
    assert e.summary["commit"] in card
    # huggingface_hub's own parser reads the metadata and the evaluation results
    from huggingface_hub import ModelCard
    data = ModelCard(card, ignore_metadata_errors=False).data
    assert (data.library_name, data.license, data.datasets) == ("zoo", "apache-2.0", [e.summary["data"]["dataset"]])
    assert {r.metric_type: r.metric_value for r in data.eval_results} == e.summary["final"]
    assert {r.dataset_split for r in data.eval_results} == {e.summary["data"].get("eval_split")}


def test_a_run_without_a_recorded_commit_gets_the_exporting_checkout_and_says_so(tmp_path_factory, tmp_path):
    e = exported("code", tmp_path_factory)
    run = tmp_path / "old_run"
    shutil.copytree(e.run, run)
    summary = json.loads((run / "summary.json").read_text())
    for k in ("commit", "dirty", "recipe"):
        summary.pop(k)
    (run / "summary.json").write_text(json.dumps(summary))
    out = publish.export(run, tmp_path / "pub", license="MIT")
    config = json.loads((out / "config.json").read_text())
    head = subprocess.run(["git", "-C", str(ROOT), "rev-parse", "HEAD"], capture_output=True, text=True).stdout.strip()
    assert config["zoo"]["commit"] == head and config["zoo"]["commit_from"] == "export"
    assert config["zoo"]["recipe"]["path"] is None and config["pretrained_cfg"]["license"] == "mit"
    assert "the checkout that exported it" in (out / "README.md").read_text()


# ---- (c) bad input: clear errors, nothing replaced unasked, nothing half-written -----------------------------------------

def _listing(d: Path):
    return sorted((p.relative_to(d).as_posix(), p.read_bytes()) for p in d.rglob("*") if p.is_file())


def test_export_refuses_unfinished_runs_naming_the_file(tmp_path_factory, tmp_path):
    e = exported("code", tmp_path_factory)
    with pytest.raises(ConfigError, match="RUN_DIR .*nowhere.* is not a folder"):
        publish.export(tmp_path / "nowhere", tmp_path / "o")
    cases = {"summary.json": "summary.json \\(the run summary\\) is missing",
             "model.safetensors": "model.safetensors \\(the weights\\) is missing",
             "tokenizer.json": "tokenizer.json \\(an artifact the summary lists\\) is missing"}
    for name, message in cases.items():
        run = tmp_path / f"run_{name}"
        shutil.copytree(e.run, run)
        (run / name).unlink()
        with pytest.raises(CheckpointError, match=message):
            publish.export(run, tmp_path / f"o_{name}")
        assert not (tmp_path / f"o_{name}").exists()
    run = tmp_path / "interrupted"
    shutil.copytree(e.run, run)
    summary = json.loads((run / "summary.json").read_text())
    (run / "summary.json").write_text(json.dumps({**summary, "interrupted": True, "resume_command": "zoo finetune x"}))
    with pytest.raises(CheckpointError, match="interrupted at step .*zoo finetune x"):
        publish.export(run, tmp_path / "o")
    (run / "summary.json").write_text("{not json")
    with pytest.raises(CheckpointError, match="summary.json: unreadable run summary"):
        publish.export(run, tmp_path / "o")
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []


def test_export_never_replaces_a_folder_unasked_and_is_atomic(tmp_path_factory, tmp_path, monkeypatch):
    e = exported("code", tmp_path_factory)
    out = tmp_path / "mine"
    out.mkdir()
    (out / "notes.txt").write_text("my notes")
    with pytest.raises(ConfigError, match="OUT_DIR .*mine exists and is not empty.*--overwrite"):
        publish.export(e.run, out)
    assert _listing(out) == [("notes.txt", b"my notes")]
    with pytest.raises(ConfigError, match="overlap"):
        publish.export(e.run, e.run / "published", overwrite=True)
    # a failure while writing leaves the old folder as it was and no temporary folder
    monkeypatch.setattr(publish, "model_card", lambda *a, **k: (_ for _ in ()).throw(OSError("disk full")))
    with pytest.raises(OSError, match="disk full"):
        publish.export(e.run, out, overwrite=True)
    assert _listing(out) == [("notes.txt", b"my notes")]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["mine"]
    monkeypatch.undo()
    publish.export(e.run, out, overwrite=True)
    def same(d):
        return [f for f in _listing(d) if f[0] != "README.md"]            # the card names its own folder
    assert same(out) == same(e.out) and sorted(p.name for p in tmp_path.iterdir()) == ["mine"]


def test_cli_export_errors_are_one_line_and_exit_non_zero(tmp_path_factory, tmp_path, capsys):
    from zoo.cli import main

    e = exported("code", tmp_path_factory)
    assert main(["export", str(tmp_path / "missing"), str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("zoo: error: RUN_DIR") and "missing" in err[0]
    assert main(["export", str(e.run), str(tmp_path / "o"), "--repo-id", "not a repo"]) == 2
    assert "--repo-id" in capsys.readouterr().err
    assert main(["export", str(e.run), str(tmp_path / "o"), "--repo-id", "me/my-model"]) == 0
    config = json.loads((tmp_path / "o" / "config.json").read_text())
    assert config["zoo"]["repo_id"] == "me/my-model"
    assert 'zoo.create("hf-hub:me/my-model")' in (tmp_path / "o" / "README.md").read_text()


# ---- (d) push: validated first, refused with the reason -----------------------------------------------------------------

class _FakeApi:
    calls: list = []

    def __init__(self, token=None):
        pass

    def create_repo(self, repo_id, **kw):
        _FakeApi.calls.append(("create_repo", repo_id, kw))

    def create_branch(self, repo_id, **kw):
        _FakeApi.calls.append(("create_branch", repo_id, kw))

    def upload_folder(self, **kw):
        _FakeApi.calls.append(("upload_folder", kw["repo_id"], kw))
        files = sorted(p.name for p in Path(kw["folder_path"]).iterdir())
        _FakeApi.calls.append(("files", files))
        return type("Info", (), {"commit_url": f"https://huggingface.co/{kw['repo_id']}/commit/abc"})()


@pytest.fixture
def fake_hub(monkeypatch):
    import huggingface_hub

    _FakeApi.calls = []
    monkeypatch.setattr(huggingface_hub, "HfApi", _FakeApi)
    return _FakeApi


def test_push_uploads_a_valid_folder(tmp_path_factory, tmp_path, fake_hub, capsys):
    from zoo.cli import main

    e = exported("code", tmp_path_factory)
    out = publish.export(e.run, tmp_path / "pub", repo_id="me/code-lm")
    assert main(["push", str(out), "me/code-lm", "--private", "--revision", "v1"]) == 0
    assert "https://huggingface.co/me/code-lm/commit/abc" in capsys.readouterr().out
    kinds = [c[0] for c in fake_hub.calls]
    assert kinds == ["create_repo", "create_branch", "upload_folder", "files"]
    assert fake_hub.calls[0][2]["private"] is True and fake_hub.calls[2][2]["revision"] == "v1"
    assert fake_hub.calls[3][1] == ["README.md", "config.json", "model.safetensors", "recipe.yaml", "tokenizer.json"]


def test_push_refuses_a_folder_that_fails_validation(tmp_path_factory, tmp_path, fake_hub):
    from safetensors.torch import load_file, save_file

    e = exported("code", tmp_path_factory)
    good = publish.export(e.run, tmp_path / "good", repo_id="me/code-lm")

    def broken(name, change):
        d = tmp_path / name
        shutil.copytree(good, d)
        change(d)
        return d

    def edit_config(d, **kw):
        c = json.loads((d / "config.json").read_text())
        c.update(kw)
        (d / "config.json").write_text(json.dumps(c))

    def drop_key(d):
        sd = load_file(str(d / "model.safetensors"))
        sd.pop(sorted(sd)[0])
        save_file(sd, str(d / "model.safetensors"))

    cases = [
        (broken("no_card", lambda d: (d / "README.md").unlink()), ConfigError, r"README.md \(the model card\) is missing"),
        (broken("no_meta", lambda d: (d / "README.md").write_text("# a model\n")), ConfigError, "README.md has no metadata"),
        (broken("bad_json", lambda d: (d / "config.json").write_text("{")), ConfigError, "config.json does not parse"),
        (broken("unknown", lambda d: edit_config(d, architecture="no_such_model")), ConfigError,
         "config.json: architecture 'no_such_model' is not a registered model"),
        (broken("wrong_args", lambda d: edit_config(d, model_args={**e.config["model_args"], "dim": 48})),
         CheckpointError, "model.safetensors into .*shape mismatch"),
        (broken("missing_key", drop_key), CheckpointError, "model.safetensors into .*missing keys"),
        (broken("no_weights", lambda d: (d / "model.safetensors").unlink()), CheckpointError,
         r"model.safetensors \(the weights\) is missing"),
        (broken("no_tokenizer", lambda d: (d / "tokenizer.json").unlink()), ConfigError,
         "tokenizer.json is missing: config.json lists it"),
    ]
    for folder, error, message in cases:
        with pytest.raises(error, match=message):
            publish.push(folder, "me/code-lm")
    with pytest.raises(ConfigError, match="its usage loads hf-hub:me/code-lm, not hf-hub:me/other; export again "
                                          "with --repo-id me/other"):
        publish.push(good, "me/other")
    with pytest.raises(ConfigError, match="its usage loads the local folder"):
        publish.push(e.out, "me/code-lm")
    assert fake_hub.calls == []


# ---- (e) the recipes' tags: registered, never claimed as downloadable ----------------------------------------------------

def test_every_recipe_result_has_an_unpublished_tag_on_the_hub_org():
    from zoo.results import load_results

    rows = load_results()
    assert len(rows) >= 20
    for row in rows:
        entry = registry._entry(row["model"])
        tags = [t for t, c in entry.cfgs.items() if c.recipe == row["recipe"]]
        assert len(tags) == 1, row["recipe"]
        cfg = entry.cfgs[tags[0]]
        stem = Path(row["recipe"]).stem
        assert stem == f"{row['model']}_{tags[0]}"
        assert cfg.hf_hub_id == f"zoo-models/{stem}" and cfg.is_folder and not cfg.published
        assert cfg.metrics == {row["metric"]: round(row["value"], 4)}
    assert registry._entry("code_lm_rope_tiny").cfgs.keys() >= {"pystdlib", "pystdlib_pose4096"}


def test_registry_contract_sources_resolvable_and_unpublished_never_listed():
    listed = set(zoo.list_models(pretrained=True))
    with_unpublished = set(zoo.list_models(pretrained=True, unpublished=True))
    unpublished = set()
    for name in zoo.list_models():
        entry = registry._entry(name)
        for tag, cfg in entry.cfgs.items():
            full = f"{name}.{tag}"
            if cfg.has_source:
                src = cfg.source_string()
                assert re.match(r"https?://\S+$", src) or re.fullmatch(r"hf-hub:[\w.-]+/[\w.-]+(@[\w.-]+)?(/\S+)?", src) \
                    or (cfg.file and Path(cfg.file).name), (full, src)
                assert cfg.url or cfg.file or cfg.filename or cfg.is_folder, full
            if cfg.has_weights:
                assert full in listed
            elif cfg.has_source:
                unpublished.add(full)
                assert full not in listed and full in with_unpublished
                assert entry.default_tag != tag
    assert unpublished and listed == with_unpublished - unpublished
    import timm
    assert not unpublished & set(timm.list_models(pretrained=True))
    model = zoo.create("cpvt_tiny")                       # its only tag is unpublished: not its default
    assert model.pretrained_cfg["tag"] is None and model.pretrained_cfg["num_classes"] == 1000


def test_cli_list_pretrained_marks_the_unpublished(capsys):
    from zoo.cli import main

    assert main(["list", "--pretrained"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert "vit_irpe_tiny.in1k" in lines
    (mark,) = [ln for ln in lines if ln.startswith("vit_irpe_tiny.fmnist")]
    assert "unpublished" in mark and "zoo finetune configs/vision/vit_irpe_tiny_fmnist.yaml" in mark
    assert all(ln in zoo.list_models(pretrained=True) or "(unpublished" in ln for ln in lines)
