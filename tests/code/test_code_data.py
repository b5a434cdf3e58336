"""domains.code.data: source trees, content-hash splits, tokenized corpora and LM windows with Positions."""
import hashlib
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

import tree_sitter  # noqa: F401
import tokenizers  # noqa: F401

from domains.code import data as code_data  # noqa: E402
from domains.code.data import (SPLITS, CodeWindows, SourceTree, TokenizedCorpus, collate_windows,  # noqa: E402
                               cpython_stdlib, find_cpython_stdlib, find_go_src, go_stdlib, lm_datasets,
                               split_for_hash, tokenize_files)
from domains.code.tokenizer import train_bpe  # noqa: E402
from zoo.errors import DatasetNotFoundError  # noqa: E402
from zoo.positions import Positions  # noqa: E402

pytestmark = pytest.mark.debian_data("golang-src")

ROOT = Path(__file__).resolve().parents[2]
PY_FILES = ("textwrap.py", "colorsys.py", "bisect.py", "fnmatch.py", "shlex.py", "queue.py", "heapq.py", "keyword.py")
GO_FILES = ("sort/sort.go", "container/list/list.go", "errors/wrap.go", "strings/builder.go", "unicode/utf8/utf8.go")

GOOD_PY = "class A:\n    def f(self):\n        return 'é'\n\n\ndef g(x):\n    return x * 2\n"


@pytest.fixture(scope="module")
def tok():
    root = find_cpython_stdlib()
    return train_bpe([root / f for f in PY_FILES], vocab_size=500)


@pytest.fixture
def tree_dir(tmp_path):
    root = tmp_path / "src"
    (root / "pkg" / "__pycache__").mkdir(parents=True)
    (root / "a.py").write_text(GOOD_PY)
    (root / "pkg" / "copy_of_a.py").write_text(GOOD_PY)  # same bytes, other place
    (root / "pkg" / "b.go").write_text("package b\n\nfunc B() int {\n\treturn 1\n}\n")
    (root / "pkg" / "c.js").write_text("const c = (x) => x + 1;\nclass K { m() { return c(1); } }\n")
    (root / "broken.py").write_text("x = 1\ndef f(:\n    y = 2\n\ndef g():\n    return 3\n")
    (root / "binary.py").write_bytes(b"x = 1\n\x00\x01\x02")
    (root / "latin1.py").write_bytes("s = 'caf\xe9'\n".encode("latin-1"))
    (root / "big.py").write_text("x = 1\n" * 400)  # 2,400 bytes: over max_bytes below
    (root / "notes.txt").write_text("not code")
    (root / "pkg" / "__pycache__" / "cached.py").write_text("x = 1\n")
    return root


def make_tree(root, **kw):
    kw.setdefault("max_bytes", 2000)
    return SourceTree(root, **kw)


# ---------------------------------------------------------------------------------------------------------------
# SourceTree
# ---------------------------------------------------------------------------------------------------------------

def test_source_tree_picks_and_skips_with_counts(tree_dir):
    tree = make_tree(tree_dir)
    assert sorted(f.relpath for f in tree.files) == ["a.py", "broken.py", "pkg/b.go", "pkg/c.js", "pkg/copy_of_a.py"]
    assert dict(tree.skipped) == {"binary": 1, "undecodable": 1, "too_large": 1}
    assert tree.other_files == 1  # notes.txt; __pycache__ is not walked
    c = tree.counts()
    assert c["files"] == 5 and c["train"] + c["val"] + c["test"] == 5
    assert c["lang:python"] == 3 and c["lang:go"] == 1 and c["lang:javascript"] == 1
    assert "undecodable=1" in repr(tree)
    only_go = make_tree(tree_dir, languages=["go"])
    assert [f.relpath for f in only_go.files] == ["pkg/b.go"] and only_go.other_files == 8
    assert [f.relpath for f in make_tree(tree_dir, languages="go").files] == ["pkg/b.go"]
    deduped = make_tree(tree_dir, dedupe=True)
    assert len(deduped) == 4 and deduped.skipped["duplicate"] == 1


def test_split_is_content_based_and_deterministic(tree_dir, tmp_path):
    tree = make_tree(tree_dir)
    by_path = {f.relpath: f for f in tree.files}
    assert by_path["a.py"].split == by_path["pkg/copy_of_a.py"].split, "same bytes, same split"
    for f in tree.files:
        assert f.sha256 == hashlib.sha256(f.path.read_bytes()).hexdigest()
        assert f.split == split_for_hash(f.sha256)
    # moving and renaming files does not move them between splits
    moved = tmp_path / "moved"
    moved.mkdir()
    for i, f in enumerate(tree.files):
        (moved / f"renamed_{i}{f.path.suffix}").write_bytes(f.path.read_bytes())
    again = {f.sha256: f.split for f in make_tree(moved).files}
    assert all(again[f.sha256] == f.split for f in tree.files)
    assert [f.relpath for f in tree.split("train")] == [f.relpath for f in tree.files if f.split == "train"]


def test_split_fractions_on_real_stdlib():
    tree = cpython_stdlib()
    c = tree.counts()
    assert c["files"] > 1000 and c["lang:python"] == c["files"]
    assert not any("site-packages" in f.relpath for f in tree.files)
    assert 0.85 < c["train"] / c["files"] < 0.95 and c["val"] > 0 and c["test"] > 0
    assert [f.split for f in cpython_stdlib().files] == [f.split for f in tree.files]
    everything_val = cpython_stdlib(fractions=(0, 1, 0))
    assert len(everything_val.split("val")) == len(everything_val)


def test_split_for_hash_edges():
    assert split_for_hash("0" * 64) == "train"
    assert split_for_hash("f" * 64) == "test"
    assert split_for_hash("f" * 64, (0.5, 0.5, 0.0)) == "val", "round-off never picks an empty split"
    assert split_for_hash("e" + "0" * 63) == "train" and split_for_hash("f3" + "0" * 62) == "val"


def test_source_tree_bad_arguments(tree_dir):
    with pytest.raises(NotADirectoryError, match="missing"):
        SourceTree(tree_dir / "missing")
    with pytest.raises(ValueError, match="python, go, javascript"):
        SourceTree(tree_dir, languages=["rust"])
    with pytest.raises(ValueError, match="summing to 1"):
        SourceTree(tree_dir, fractions=(0.5, 0.5, 0.5))
    with pytest.raises(ValueError, match="unknown split 'dev'"):
        make_tree(tree_dir).split("dev")


def test_stdlib_helpers_say_how_to_install(tmp_path):
    with pytest.raises(DatasetNotFoundError, match="apt-get install golang-src") as e:
        go_stdlib(root=tmp_path)
    assert str(tmp_path) in str(e.value)
    with pytest.raises(DatasetNotFoundError, match="os.py"):
        cpython_stdlib(root=tmp_path)
    assert isinstance(e.value, FileNotFoundError)


# ---------------------------------------------------------------------------------------------------------------
# Tokenized corpora and windows
# ---------------------------------------------------------------------------------------------------------------

def check_corpus(corpus: TokenizedCorpus, files, tok):
    lv = corpus.levels.numpy()
    assert (np.diff(lv, axis=0) >= 0).all()
    assert (lv[:, -1] == np.arange(len(corpus))).all()
    assert (np.diff(corpus.segments.numpy()) >= 0).all()
    offs = corpus.file_offsets.tolist()
    assert offs[0] == 0 and offs[-1] == len(corpus) and corpus.num_files == len(files)
    for i, f in enumerate(files):
        a, b = offs[i], offs[i + 1]
        ids = corpus.tokens[a:b].tolist()
        assert ids[-1] == tok.eos_id and tok.decode(ids[:-1]) == f.read_text(), f.relpath
        assert (lv[a:b, 0] == i).all(), "file column = file index"
        if i:
            assert (lv[a] > lv[a - 1]).all(), "a new file starts a new unit at every level"
            assert corpus.segments[a] > corpus.segments[a - 1]
        # line segments: newlines before each token's start byte, counted on from the file's first line
        enc = tok.encode(f.read_text())
        data = f.read_bytes()
        want = [data.count(b"\n", 0, s) for s in enc.spans[:, 0]] + [data.count(b"\n")]
        assert (corpus.segments[a:b] - corpus.segments[a]).tolist() == want


def test_tokenize_temp_tree_including_broken_file(tree_dir, tok):
    tree = make_tree(tree_dir)
    corpus = tokenize_files(tree.files, tok, progress=False)
    check_corpus(corpus, tree.files, tok)
    broken = tree.files.index(next(f for f in tree.files if f.relpath == "broken.py"))
    a, b = corpus.file_offsets[broken: broken + 2].tolist()
    assert b - a > 5 and corpus.levels[a:b, 3].unique().numel() > 3, "a syntax-error file still has statements"
    assert corpus.levels[a:b, 2].unique().numel() >= 3, "... and functions (f, g, the code around them)"


def test_tokenize_real_python_and_go_slices(tok):
    py = [f for f in cpython_stdlib().files if f.relpath in PY_FILES]
    assert len(py) == len(PY_FILES)
    files = py
    try:
        go_root = find_go_src()
        go = SourceTree(go_root / "sort", languages=["go"]).files[:2] + [
            f for f in SourceTree(go_root / "errors", languages=["go"]).files if f.relpath == "wrap.go"]
        files = py + go
    except FileNotFoundError:
        pass
    corpus = tokenize_files(files, tok, progress=False)
    check_corpus(corpus, files, tok)
    # function units are real: a Python file with defs has more than 1 function unit, fewer than statements
    for i, f in enumerate(files):
        if b"\ndef " not in f.read_bytes() and b"\nfunc " not in f.read_bytes():
            continue
        a, b = corpus.file_offsets[i: i + 2].tolist()
        n_func = corpus.levels[a:b, 2].unique().numel()
        n_stmt = corpus.levels[a:b, 3].unique().numel()
        assert 1 < n_func < n_stmt < b - a


def test_windows_rebased_and_batched(tree_dir, tok):
    corpus = tokenize_files(make_tree(tree_dir).files, tok, progress=False)
    n = 16
    ds = CodeWindows(corpus, seq_len=n, stride=8)
    assert len(ds) == (len(corpus) - n - 1) // 8 + 1 and len(ds) >= 3
    for i in range(len(ds)):
        item = ds[i]
        s = i * 8
        assert torch.equal(item["input_ids"], corpus.tokens[s: s + n].long())
        assert torch.equal(item["labels"], corpus.tokens[s + 1: s + n + 1].long())
        assert torch.equal(item["ids"], torch.arange(n)) and torch.equal(item["levels"][:, -1], torch.arange(n))
        assert (item["levels"][0] == 0).all() and item["segments"][0] == 0
        assert torch.equal(item["levels"], corpus.levels[s: s + n].long() - corpus.levels[s].long())
        assert (item["levels"].diff(dim=0) >= 0).all()
        assert item["levels"].dtype == item["segments"].dtype == torch.int64
    batch = collate_windows([ds[0], ds[2]])
    pos = batch["positions"]
    assert isinstance(pos, Positions) and pos.causal
    assert batch["input_ids"].shape == (2, n) and batch["labels"].shape == (2, n)
    assert pos.ids.shape == (2, n) and pos.levels.shape == (2, n, 5) and pos.segments.shape == (2, n)
    assert pos.mask.dtype == torch.bool and pos.mask.all()
    assert torch.equal(batch["input_ids"][1], ds[2]["input_ids"])
    assert len(torch.utils.data.DataLoader(ds, batch_size=4, collate_fn=collate_windows)) == -(-len(ds) // 4)
    with pytest.raises(IndexError):
        ds[len(ds)]
    with pytest.raises(ValueError, match="fewer than one window"):
        CodeWindows(corpus, seq_len=len(corpus))
    with pytest.raises(ValueError, match="positive"):
        CodeWindows(corpus, seq_len=8, stride=0)


def test_lm_datasets_per_split(tree_dir, tok):
    tree = make_tree(tree_dir, fractions=(1.0, 0.0, 0.0))
    out = lm_datasets(tree, tok, seq_len=8, stride=4, splits=("train",), progress=False)
    assert set(out) == {"train"} and out["train"].stride == 4 and len(out["train"]) > 0
    assert SPLITS == ("train", "val", "test")
    with pytest.raises(ValueError, match="split 'val': the corpus has 0 tokens"):
        lm_datasets(tree, tok, seq_len=8, splits=("val",), progress=False)


def test_corpus_cache_round_trip_and_corruption(tree_dir, tok, tmp_path, monkeypatch):
    files = make_tree(tree_dir).files
    cache = tmp_path / "cache"
    first = tokenize_files(files, tok, progress=False, cache_dir=cache)
    cached = list(cache.iterdir())
    assert len(cached) == 1 and cached[0].suffix == ".pt"

    def fail(*a, **k):
        raise AssertionError("recomputed instead of loading the cache")
    monkeypatch.setattr(code_data, "hierarchical_positions", fail)
    second = tokenize_files(files, tok, progress=False, cache_dir=cache)
    assert torch.equal(first.tokens, second.tokens) and torch.equal(first.levels, second.levels)
    assert second.paths == first.paths
    monkeypatch.undo()
    # a different file set is a different cache entry
    tokenize_files(files[:2], tok, progress=False, cache_dir=cache)
    assert len(list(cache.iterdir())) == 2
    # a truncated cache file is ignored with a warning and rewritten
    cached[0].write_bytes(cached[0].read_bytes()[:100])
    with pytest.warns(UserWarning, match="unreadable corpus cache"):
        third = tokenize_files(files, tok, progress=False, cache_dir=cache)
    assert torch.equal(first.levels, third.levels)
    assert TokenizedCorpus.load(cached[0]).paths == first.paths
    assert not [p for p in cache.iterdir() if p.name.endswith(".tmp")]


def test_changed_file_is_skipped_with_warning(tree_dir, tok):
    tree = make_tree(tree_dir)
    f = tree.files[0]
    f.path.write_text("x = 'changed'\n")
    with pytest.warns(UserWarning, match="content changed"):
        corpus = tokenize_files(tree.files, tok, progress=False)
    assert corpus.num_files == len(tree.files) - 1 and f.relpath not in corpus.paths


def test_domain_modules_import_no_heavy_packages():
    code = ("import sys, zoo; zoo.list_models(); import domains.code.data, domains.code.hierarchy, "
            "domains.code.tokenizer; print([m for m in sys.modules if m.split('.')[0] in "
            "('tree_sitter', 'tree_sitter_python', 'tree_sitter_go', 'tokenizers')])")
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT)
    assert res.returncode == 0, res.stderr
    assert res.stdout.strip() == "[]"


def test_symlinks_outside_the_tree_are_skipped_and_counted(tmp_path):
    root = tmp_path / "src"
    root.mkdir()
    (root / "a.py").write_text(GOOD_PY)
    (tmp_path / "secret.py").write_text("token = 'not part of the tree'\n")
    (root / "leak.py").symlink_to(tmp_path / "secret.py")              # a file link pointing out of the tree
    (root / "alias.py").symlink_to(root / "a.py")                      # a link inside the tree is an ordinary file
    (root / "loop.py").symlink_to(root / "loop.py")                    # a link to itself
    tree = SourceTree(root)
    assert [f.relpath for f in tree.files] == ["a.py", "alias.py"]
    assert tree.skipped["outside_root"] == 1 and tree.skipped["not_a_file"] == 1


def test_tokenize_files_names_an_item_that_is_not_a_source_file(tree_dir, tok):
    files = make_tree(tree_dir).files[:1] + [str(tree_dir / "a.py")]
    with pytest.raises(TypeError, match=r"files\[1\] is a str.*SourceTree"):
        code_data.tokenize_files(files, tok, progress=False)


def test_windows_arguments_are_named(tree_dir, tok):
    corpus = code_data.tokenize_files(make_tree(tree_dir).files, tok, progress=False)
    with pytest.raises(TypeError, match=r"seq_len must be an int, got str"):
        CodeWindows(corpus, "12")
    with pytest.raises(TypeError, match=r"stride must be an int.*float"):
        CodeWindows(corpus, 4, stride=1.5)
