"""Documents tasks on the fine-tune engine: word labelling on real R-manual pages, entity linking on a synthetic
FUNSD-format set (no FUNSD copy is installable here), exact resume, saved vocabulary, clear errors."""
import json
import struct
from pathlib import Path

import pytest
import torch

import zoo
from domains.documents.data import WordVocab
from domains.documents.task import VOCAB_FILE, EntityLinkingTask, WordLabellingTask
from zoo.errors import ConfigError
from zoo.finetune.config import build_config
from zoo.finetune.engine import finetune

R_INTRO = Path("/usr/share/doc/r-doc-pdf/manual/R-intro.pdf")
# 0-based R-intro pages: 13 and 18 fall in the "test" split by content hash, the others in "train"
SLICE = [10, 11, 12, 13, 14, 18]
TINY = {"dim": 32, "depth": 1, "num_heads": 2, "mlp_hidden": 64, "drop": 0.0, "attn_drop": 0.0}


@pytest.fixture(scope="module")
def manuals_dir(tmp_path_factory):
    import pypdfium2 as pdfium
    if not R_INTRO.is_file():
        pytest.fail(f"{R_INTRO} is missing: run scripts/setup.sh (apt-get install r-doc-pdf)")
    src, out = pdfium.PdfDocument(str(R_INTRO)), pdfium.PdfDocument.new()
    out.import_pages(src, SLICE)
    folder = tmp_path_factory.mktemp("manuals")
    out.save(str(folder / "R-intro.pdf"))
    out.close()
    src.close()
    return folder


def _wl_cfg(root, out, min_lr_ratio=0.01, **train):
    return build_config({
        "task": "word_labelling", "model": {"name": "doc_layoutlm_tiny", "kwargs": dict(TINY)},
        "data": {"name": "r_manuals", "root": str(root), "seq_len": 64, "min_freq": 1},
        "optim": {"lr": 3e-3, "warmup_steps": 0, "min_lr_ratio": min_lr_ratio},
        "train": {"steps": 6, "batch_size": 4, "progress": False, "log_every": 1, "eval_batch_size": 8, **train},
        "output": {"dir": str(out)}})


@pytest.mark.debian_data("r-doc-pdf")
def test_word_labelling_trains_and_evaluates_on_real_pages(manuals_dir, tmp_path):
    s = finetune(_wl_cfg(manuals_dir, tmp_path / "run"))
    final = s["final"]
    for key in ("accuracy", "macro_f1", "loss", "f1_body", "f1_heading", "f1_code", "f1_math"):
        assert key in final
    assert 0.0 <= final["macro_f1"] <= 1.0 and 0.0 <= final["accuracy"] <= 1.0
    assert s["data"]["train_pages"] == 4 and s["data"]["eval_pages"] == 2
    saved = WordVocab.load(tmp_path / "run" / VOCAB_FILE)
    assert len(saved) == s["data"]["vocab_size"] > 50
    assert json.loads((tmp_path / "run" / "labels.json").read_text()) == ["body", "heading", "code", "math"]


@pytest.mark.debian_data("r-doc-pdf")
def test_word_labelling_overfits_a_batch(manuals_dir):
    task = WordLabellingTask()
    cfg = _wl_cfg(manuals_dir, "unused")
    task.build_data(cfg)
    torch.manual_seed(0)
    model = zoo.create("doc_graph_rope_tiny", vocab_size=len(task.vocab), num_classes=4, dim=32, depth=1)
    batch = next(task.train_batches(0, torch.Generator().manual_seed(0)))
    assert batch["labels"].ne(-100).sum() > 100
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    losses = []
    for _ in range(40):
        loss, n = task.loss(model.train(), batch)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert int(n) == int(batch["labels"].ne(-100).sum())          # the labelled words the mean is over
    assert losses[-1] < 0.3 * losses[0], losses


@pytest.mark.debian_data("r-doc-pdf")
def test_word_labelling_batches_resume_exactly(manuals_dir):
    task = WordLabellingTask()
    task.build_data(_wl_cfg(manuals_dir, "unused", batch_size=2))
    nb = task.num_train_batches()
    assert nb >= 3
    full = list(task.train_batches(1, torch.Generator().manual_seed(5)))
    tail = list(task.train_batches(1, torch.Generator().manual_seed(5), start=2))
    assert len(full) == nb and len(tail) == nb - 2
    for a, b in zip(full[2:], tail):
        assert torch.equal(a["input_ids"], b["input_ids"]) and torch.equal(a["boxes"], b["boxes"])
    other = list(task.train_batches(2, torch.Generator().manual_seed(6)))
    assert any(not torch.equal(a["input_ids"], b["input_ids"]) for a, b in zip(full, other))


@pytest.mark.debian_data("r-doc-pdf")
def test_word_labelling_resume_is_exact_and_reuses_the_vocab(manuals_dir, tmp_path):
    # constant lr (min_lr_ratio=1): a run of 3 steps resumed to 6 follows the 6-step run
    ref = finetune(_wl_cfg(manuals_dir, tmp_path / "ref", min_lr_ratio=1.0))
    finetune(_wl_cfg(manuals_dir, tmp_path / "part", min_lr_ratio=1.0, steps=3))
    # the resumed run must read the run folder's vocabulary, not rebuild it: make the saved copy recognisable
    vocab = WordVocab.load(tmp_path / "part" / VOCAB_FILE)
    marked = WordVocab(vocab.itos[2:-1] + ["zz-marker"])
    marked.save(tmp_path / "part" / VOCAB_FILE)
    task = WordLabellingTask()
    task.resume_dir = tmp_path / "part"
    task.build_data(_wl_cfg(manuals_dir, tmp_path / "part", min_lr_ratio=1.0))
    assert task.vocab.itos[-1] == "zz-marker"
    vocab.save(tmp_path / "part" / VOCAB_FILE)                  # restore: the resumed trajectory must match
    res = finetune(_wl_cfg(manuals_dir, tmp_path / "part", min_lr_ratio=1.0, steps=6), resume=True)
    assert res["final"]["loss"] == pytest.approx(ref["final"]["loss"], abs=1e-6)
    log = lambda p: [json.loads(ln)["loss"] for ln in (p / "metrics.jsonl").read_text().splitlines()
                     if json.loads(ln).get("event") == "train"]
    assert log(tmp_path / "part") == pytest.approx(log(tmp_path / "ref"), abs=1e-6)


# ---- entity linking on a synthetic FUNSD set -------------------------------------------------------------------

def _png_header(path: Path, w: int, h: int) -> None:
    ihdr = struct.pack(">IIBBBBB", w, h, 8, 2, 0, 0, 0)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + struct.pack(">I", 13) + b"IHDR" + ihdr + b"\x00" * 4)


def _form(g: torch.Generator, rows: int = 4) -> list:
    """``rows`` question/answer pairs, one per row at shuffled heights; each question links to the answer on its
    row (the learnable rule), plus an unlinked header."""
    ys = (torch.randperm(9, generator=g)[:rows] * 90 + 150).tolist()
    ents = [{"id": 0, "text": "FORM", "box": [300, 40, 460, 80], "label": "header",
             "words": [{"text": "FORM", "box": [300, 40, 460, 80]}], "linking": []}]
    for r, y in enumerate(ys):
        qx = int(torch.randint(20, 120, (1,), generator=g))
        ax = int(torch.randint(420, 560, (1,), generator=g))
        q, a = 1 + 2 * r, 2 + 2 * r
        qw, aw = f"field{int(torch.randint(0, 6, (1,), generator=g))}:", f"value{int(torch.randint(0, 6, (1,), generator=g))}"
        ents.append({"id": q, "text": qw, "box": [qx, y, qx + 150, y + 30], "label": "question",
                     "words": [{"text": qw, "box": [qx, y, qx + 150, y + 30]}], "linking": [[q, a]]})
        ents.append({"id": a, "text": aw, "box": [ax, y, ax + 160, y + 30], "label": "answer",
                     "words": [{"text": aw, "box": [ax, y, ax + 160, y + 30]}], "linking": [[q, a]]})
    return ents


def _write_funsd(root: Path, n_train: int = 48, n_test: int = 12, dangling: bool = False) -> Path:
    g = torch.Generator().manual_seed(0)
    for split, n in (("training_data", n_train), ("testing_data", n_test)):
        (root / split / "annotations").mkdir(parents=True)
        (root / split / "images").mkdir()
        for i in range(n):
            form = _form(g)
            if dangling and split == "training_data" and i == 3:
                form[1]["linking"].append([1, 99])
            (root / split / "annotations" / f"form_{i:03d}.json").write_text(json.dumps({"form": form}))
            _png_header(root / split / "images" / f"form_{i:03d}.png", 1000, 1000)
    return root


def _el_cfg(root, out, **data):
    return build_config({
        "task": "entity_linking",
        "model": {"name": "doc_layoutlm_tiny", "kwargs": {**TINY, "dim": 48, "link_dim": 32}},
        "data": {"name": "funsd", "root": None if root is None else str(root), "min_freq": 1, **data},
        "optim": {"lr": 3e-3, "warmup_steps": 5},
        "train": {"epochs": 40, "batch_size": 8, "progress": False, "log_every": 10},
        "output": {"dir": str(out)}})


def test_entity_linking_learns_a_simple_rule(tmp_path):
    root = _write_funsd(tmp_path / "funsd")
    task = EntityLinkingTask()
    cfg = _el_cfg(root, tmp_path / "run")
    task.build_data(cfg)
    torch.manual_seed(0)
    before = task.evaluate(zoo.create(cfg.model.name, **task.model_kwargs(cfg)))
    s = finetune(cfg)
    assert set(s["final"]) >= {"link_f1", "link_precision", "link_recall", "loss"}
    # val = a fixed 10% of training_data by file-name hash, held out of training
    assert s["data"]["eval_links"] == 12 * 4 and 40 <= s["data"]["train_forms"] < 48
    # chance: 4 links among 9 * 8 ordered pairs per form -> F1 <= 2 * (4/72) / (1 + 4/72) ~ 0.11
    assert s["final"]["link_f1"] > 0.6 > before["link_f1"] + 0.3, (before, s["final"])
    assert (tmp_path / "run" / VOCAB_FILE).is_file()


def test_entity_linking_bad_input(tmp_path):
    with pytest.raises(ConfigError, match="no such folder.*FUNSD is not installable"):
        EntityLinkingTask().build_data(_el_cfg(tmp_path / "missing", tmp_path / "o"))
    with pytest.raises(ConfigError, match="needs data.root"):
        EntityLinkingTask().build_data(_el_cfg(None, tmp_path / "o"))
    root = _write_funsd(tmp_path / "bad", n_train=6, n_test=2, dangling=True)
    with pytest.raises(ConfigError, match=r"form_003\.json.*99.*dangling_links=drop"):
        EntityLinkingTask().build_data(_el_cfg(root, tmp_path / "o"))
    task = EntityLinkingTask()
    task.build_data(_el_cfg(root, tmp_path / "o", dangling_links="drop"))
    d = task.describe()
    assert task.skipped["dangling_link"] == 1 and d["train_links"] == 4 * d["train_forms"]
    with pytest.raises(ConfigError, match="data.dangling_links.*'keep'"):
        EntityLinkingTask().build_data(_el_cfg(root, tmp_path / "o", dangling_links="keep"))
    with pytest.raises(ConfigError, match="unknown dataset data.name='xfund'.*funsd"):
        EntityLinkingTask().build_data(_el_cfg(root, tmp_path / "o", name="xfund"))


@pytest.mark.debian_data("r-doc-pdf")
def test_word_labelling_bad_input(manuals_dir, tmp_path):
    with pytest.raises(ConfigError, match="unknown dataset data.name='funsd' for task word_labelling"):
        WordLabellingTask().build_data(build_config({"task": "word_labelling", "model": {"name": "doc_bros_tiny"},
                                                     "data": {"name": "funsd"}}))
    with pytest.raises(ConfigError, match=r"R-nope.*not found"):
        WordLabellingTask().build_data(build_config({**_plain(_wl_cfg(manuals_dir, "o")), "data": {
            "name": "r_manuals", "root": str(manuals_dir), "manuals": ["R-nope"]}}))
    with pytest.raises(ConfigError, match="apt-get install r-doc-pdf"):
        WordLabellingTask().build_data(build_config({**_plain(_wl_cfg(manuals_dir, "o")),
                                                     "data": {"name": "r_manuals", "root": str(tmp_path)}}))
    with pytest.raises(ConfigError, match="did you mean 'data.manuals'"):
        build_config({"task": "word_labelling", "model": {"name": "doc_bros_tiny"},
                      "data": {"name": "r_manuals", "manual": ["R-intro"]}})
    with pytest.raises(ConfigError, match="num_classes=3 but word_labelling has 4 labels"):
        cfg = _wl_cfg(manuals_dir, "o")
        cfg.model.kwargs.num_classes = 3
        task = WordLabellingTask()
        task.build_data(cfg)
        task.model_kwargs(cfg)


def _plain(cfg):
    from omegaconf import OmegaConf
    return OmegaConf.to_container(cfg)


def test_entity_linking_drops_forms_without_words(tmp_path):
    # a form whose "form" list is empty has nothing to link: it is left out and counted, never fed to the model
    # as a length-0 sequence
    root = _write_funsd(tmp_path / "funsd", n_train=6, n_test=2)
    for split in ("training_data", "testing_data"):
        (root / split / "annotations" / "form_000.json").write_text(json.dumps({"form": []}))
    task = EntityLinkingTask()
    cfg = _el_cfg(root, tmp_path / "o", eval_split="test")
    task.build_data(cfg)
    assert task.skipped["empty_form"] == 2
    assert task.describe()["eval_forms"] == 1 and all(len(it["input_ids"]) for its in task.items.values() for it in its)
    model = zoo.create(cfg.model.name, **task.model_kwargs(cfg))
    for items in task.items.values():
        for it in items:
            loss, _ = task.loss(model, task._batch([it]))
            assert torch.isfinite(loss)
