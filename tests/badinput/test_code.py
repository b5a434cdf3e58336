"""Bad input for the code domain: source trees, tree-sitter hierarchy, tokenizer files, the LM task's data, every
registered code model (``zoo.list_models(domain="code")``) and every encoding ``zoo.pe.create`` can build."""
from __future__ import annotations

import os
import warnings
from pathlib import Path

import pytest
import torch

import zoo
import zoo.pe
from zoo import Positions
from zoo.errors import ConfigError, DatasetNotFoundError

from domains.code import data as code_data
from domains.code.data import DATASETS, CodeWindows, SourceTree, TokenizedCorpus, tokenize_files
from domains.code.hierarchy import hierarchical_positions
from domains.code.models import code_positions
from domains.code.task import gather_windows, lm_metrics, open_source_tree
from domains.code.tokenizer import TOKENIZER_FILE, CodeTokenizer, train_bpe

from .matrix import Case, check_case, params

GOOD_PY = "class A:\n    def f(self):\n        return 1\n\n\ndef g(x):\n    return x * 2\n"
V = 40                                   # tiny vocabulary of the model cases
NEWLINES = {3: 1}
_TOK = {}


def tok() -> CodeTokenizer:
    if "tok" not in _TOK:
        _TOK["tok"] = train_bpe([GOOD_PY] * 4, vocab_size=300)
    return _TOK["tok"]


def tree(root: Path, files: dict) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    for name, content in files.items():
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_bytes(content if isinstance(content, bytes) else content.encode())
    return root


def saved_tokenizer(tmp: Path) -> Path:
    return tok().save(tmp / "tk")


def corpus(tmp: Path) -> TokenizedCorpus:
    return tokenize_files(SourceTree(tree(tmp / "src", {"a.py": GOOD_PY})).files, tok(), progress=False)


def raises_in(exc, match):
    return dict(raises=exc, match=match)


# ---- source trees, hierarchy, tokenizer, task data -----------------------------------------------------------

def _symlink_tree(tmp: Path) -> SourceTree:
    root = tree(tmp / "src", {"a.py": GOOD_PY})
    (tmp / "secret.py").write_text("key = 'outside'\n")
    (root / "leak.py").symlink_to(tmp / "secret.py")
    (root / "loop.py").symlink_to(root / "loop.py")
    (root / "up").symlink_to(tmp)                                         # a folder link: not followed
    return SourceTree(root)


def _check_symlinks(t, tmp):
    assert [f.relpath for f in t.files] == ["a.py"]
    assert t.skipped["outside_root"] == 1 and t.skipped["not_a_file"] == 1


def _skipped(reason, relpaths):
    def check(t, tmp):
        assert [f.relpath for f in t.files] == relpaths and t.skipped[reason] == 1, t.counts()
    return check


def _vanishing_file(tmp: Path):
    t = SourceTree(tree(tmp / "src", {"a.py": GOOD_PY, "b.py": "y = 2\n"}))
    (t.root / "b.py").unlink()                                            # gone between scan and tokenize
    with warnings.catch_warnings(record=True) as w:
        warnings.simplefilter("always")
        c = tokenize_files(t.files, tok(), progress=False)
    return c, [str(x.message) for x in w]


def _interrupted_cache_write(tmp: Path):
    t = SourceTree(tree(tmp / "src", {"a.py": GOOD_PY}))
    cache = tmp / "cache"
    real = torch.save

    def dies_midway(obj, f, *a, **k):
        Path(f).write_bytes(b"PK\x03\x04 half")
        raise KeyboardInterrupt
    torch.save = dies_midway
    try:
        with pytest.raises(KeyboardInterrupt):
            tokenize_files(t.files, tok(), progress=False, cache_dir=cache)
    finally:
        torch.save = real
    left = sorted(p.name for p in cache.iterdir()) if cache.exists() else []
    again = tokenize_files(t.files, tok(), progress=False, cache_dir=cache)
    return left, again


def _truncated_cache(tmp: Path):
    t = SourceTree(tree(tmp / "src", {"a.py": GOOD_PY}))
    cache = tmp / "cache"
    first = tokenize_files(t.files, tok(), progress=False, cache_dir=cache)
    (f,) = cache.iterdir()
    f.write_bytes(f.read_bytes()[:64])
    with pytest.warns(UserWarning, match="unreadable corpus cache"):
        again = tokenize_files(t.files, tok(), progress=False, cache_dir=cache)
    return first, again


def _failed_tokenizer_save(tmp: Path):
    path = saved_tokenizer(tmp)
    before = path.read_bytes()
    real = os.replace

    def dies(*a, **k):
        raise KeyboardInterrupt
    os.replace = dies
    try:
        with pytest.raises(KeyboardInterrupt):
            train_bpe(["x = 1\n"] * 3, vocab_size=280).save(path.parent)
    finally:
        os.replace = real
    return before, path


def loader_cases():
    cases = [
        # wrong type
        Case("tree-language-not-a-name", "wrong type", "an unknown language value is refused, listing the supported",
             lambda tmp: SourceTree(tree(tmp / "s", {}), languages=[3]),
             **raises_in(ValueError, r"unsupported language 3.*python, go, javascript")),
        Case("hierarchy-source-int", "wrong type", "hierarchical_positions refuses a non-bytes source",
             lambda tmp: hierarchical_positions(3, [[0, 1]], "python"),
             **raises_in(TypeError, r"source must be bytes or str, got int")),
        Case("hierarchy-spans-float", "wrong type", "float byte spans are refused, not truncated",
             lambda tmp: hierarchical_positions(b"x = 1", [[0.5, 1.0]], "python"),
             **raises_in(TypeError, r"spans must be integer byte offsets.*float64")),
        Case("tokenize-files-str", "wrong type", "tokenize_files names an item that is not a SourceFile",
             lambda tmp: tokenize_files([str(tmp / "a.py")], tok(), progress=False),
             **raises_in(TypeError, r"files\[0\] is a str")),
        Case("windows-seq-len-str", "wrong type", "CodeWindows names seq_len given as a string",
             lambda tmp: CodeWindows(corpus(tmp), "8"), **raises_in(TypeError, r"seq_len must be an int, got str")),
        Case("tokenizer-encode-bytes", "wrong type", "encode() asks for str",
             lambda tmp: tok().encode(b"x = 1"), **raises_in(TypeError, r"encode\(\) takes a str, got bytes")),
        Case("train-bpe-int-source", "wrong type", "train_bpe names the source of the wrong type",
             lambda tmp: train_bpe(["x", 3], vocab_size=280), **raises_in(TypeError, r"source 1 is int")),
        # out of range
        Case("tree-huge-file", "out of range", "a file over max_bytes is skipped and counted as too_large",
             lambda tmp: SourceTree(tree(tmp / "s", {"a.py": GOOD_PY, "big.py": "x = 1\n" * 2000}), max_bytes=4096),
             check=_skipped("too_large", ["a.py"])),
        Case("hierarchy-span-past-end", "out of range", "a span past the end of the source names the token",
             lambda tmp: hierarchical_positions(b"x = 1", [[0, 1], [1, 99]], "python"),
             **raises_in(ValueError, r"token 1 has byte span \(1, 99\) outside the source of 5 bytes")),
        Case("tokenizer-decode-negative-id", "out of range", "a negative id is refused, not wrapped around",
             lambda tmp: tok().decode([5, -1]), **raises_in(ValueError, r"token id -1 .*vocabulary of \d+")),
        Case("tokenizer-decode-id-too-large", "out of range", "an id >= vocab_size is refused, naming it",
             lambda tmp: tok().decode([10 ** 6]), **raises_in(ValueError, r"token id 1000000 .*vocabulary of \d+")),
        Case("task-window-past-stream", "out of range", "gather_windows refuses a window past the stream",
             lambda tmp: gather_windows({"tokens": torch.arange(10), "levels": torch.zeros(10, 5, dtype=torch.long),
                                         "segments": torch.zeros(10, dtype=torch.long)}, torch.tensor([5]), 8),
             **raises_in(ValueError, r"window at 5 \+ 8 \+ 1 runs past the stream of 10 tokens")),
        Case("windows-seq-len-longer-than-corpus", "out of range", "CodeWindows says the corpus is too short",
             lambda tmp: CodeWindows(corpus(tmp), 10 ** 5),
             **raises_in(ValueError, r"corpus has \d+ tokens \(1 files\), fewer than one window")),
        # empty
        Case("tree-empty-folder", "empty", "an empty folder is a tree of 0 files (counted, not an error)",
             lambda tmp: SourceTree(tree(tmp / "s", {})),
             check=lambda t, tmp: (len(t) == 0 and t.counts()["other_files"] == 0) or pytest.fail(t.counts())),
        Case("tree-no-file-of-language", "empty", "files of other languages are counted as other_files",
             lambda tmp: SourceTree(tree(tmp / "s", {"a.py": GOOD_PY, "notes.txt": "x"}), languages=["go"]),
             check=lambda t, tmp: (len(t) == 0 and t.other_files == 2) or pytest.fail(t.counts())),
        Case("task-empty-tree", "empty", "the LM task refuses a tree without usable files, naming data.root",
             lambda tmp: open_source_tree("source_tree", str(tree(tmp / "s", {"a.txt": "x"}))),
             **raises_in(ConfigError, r"data.root .*/s holds no usable source files.*other files: 1")),
        Case("tokenize-no-files", "empty", "tokenize_files([]) is an empty corpus of the documented shapes",
             lambda tmp: tokenize_files([], tok(), progress=False),
             check=lambda c, tmp: (c.tokens.shape == (0,) and c.levels.shape == (0, 5)
                                   and c.file_offsets.tolist() == [0]) or pytest.fail(repr(c))),
        Case("windows-empty-corpus", "empty", "CodeWindows over an empty corpus says it has 0 tokens",
             lambda tmp: CodeWindows(tokenize_files([], tok(), progress=False), 8),
             **raises_in(ValueError, r"corpus has 0 tokens")),
        Case("task-metrics-empty-stream", "empty", "lm_metrics refuses a stream without one window",
             lambda tmp: lm_metrics(torch.nn.Identity(), {"tokens": torch.zeros(0, dtype=torch.long)}, 8),
             **raises_in(ValueError, r"stream has 0 tokens")),
        Case("hierarchy-no-tokens", "empty", "no tokens give levels [0, 5] and segments [0]",
             lambda tmp: hierarchical_positions(b"", [], "python"),
             check=lambda h, tmp: (h.levels.shape == (0, 5) and h.segments.shape == (0,)) or pytest.fail(str(h))),
        Case("tokenizer-empty-file", "empty", "an empty tokenizer file is refused, naming it",
             lambda tmp: CodeTokenizer.load(tree(tmp / "t", {"tok.json": b""}) / "tok.json"),
             **raises_in(ValueError, r"tok\.json: not a valid tokenizers JSON file")),
        # truncated
        Case("tokenizer-truncated", "truncated", "a truncated tokenizer.json is refused, naming the file",
             lambda tmp: CodeTokenizer.load(_truncate(saved_tokenizer(tmp))),
             **raises_in(ValueError, rf"{TOKENIZER_FILE}: not a valid tokenizers JSON file")),
        Case("corpus-truncated", "truncated", "a truncated corpus file is refused, naming it",
             lambda tmp: TokenizedCorpus.load(_truncate(corpus(tmp).save(tmp / "c.pt"))),
             **raises_in(ValueError, r"c\.pt: not a readable tokenized corpus")),
        Case("corpus-cache-truncated", "truncated", "a truncated corpus cache is warned about and rebuilt",
             _truncated_cache,
             check=lambda r, tmp: torch.testing.assert_close(r[0].tokens, r[1].tokens)),
        # corrupt
        Case("tokenizer-garbage", "corrupt", "random bytes as tokenizer.json are refused, naming the file",
             lambda tmp: CodeTokenizer.load(tree(tmp / "t", {TOKENIZER_FILE: bytes(range(256)) * 3})),
             **raises_in(ValueError, rf"{TOKENIZER_FILE}: not a valid tokenizers JSON file")),
        Case("tokenizer-json-not-a-tokenizer", "corrupt", "valid JSON that is no tokenizer is refused",
             lambda tmp: CodeTokenizer.load(tree(tmp / "t", {TOKENIZER_FILE: "[1, 2]"})),
             **raises_in(ValueError, rf"{TOKENIZER_FILE}: not a valid tokenizers JSON file")),
        Case("tree-not-utf8", "corrupt", "a file that is not UTF-8 is skipped and counted as undecodable",
             lambda tmp: SourceTree(tree(tmp / "s", {"a.py": GOOD_PY, "l1.py": "s = 'caf\xe9'\n".encode("latin-1")})),
             check=_skipped("undecodable", ["a.py"])),
        Case("tree-binary-file", "corrupt", "a file with NUL bytes is skipped and counted as binary",
             lambda tmp: SourceTree(tree(tmp / "s", {"a.py": GOOD_PY, "b.py": b"x = 1\n\x00\x01"})),
             check=_skipped("binary", ["a.py"])),
        Case("corpus-wrong-format", "corrupt", "a torch file that is not a corpus is refused, naming it",
             lambda tmp: (torch.save({"format": 99}, tmp / "c.pt"), TokenizedCorpus.load(tmp / "c.pt")),
             **raises_in(ValueError, r"c\.pt: not a readable tokenized corpus: format 99")),
        # adversarial path
        Case("tree-symlinks", "adversarial path", "links out of the tree and link loops are skipped and counted",
             _symlink_tree, check=_check_symlinks),
        Case("tree-root-is-a-file", "adversarial path", "a file as root is refused, naming it",
             lambda tmp: SourceTree(tree(tmp / "s", {"a.py": GOOD_PY}) / "a.py"),
             **raises_in(NotADirectoryError, r"s/a\.py is not a directory")),
        Case("tree-unknown-language", "adversarial path", "an unknown language name lists the supported ones",
             lambda tmp: SourceTree(tree(tmp / "s", {}), languages=["cobol"]),
             **raises_in(ValueError, r"unsupported language 'cobol'")),
        Case("task-missing-root", "adversarial path", "a missing data.root is named",
             lambda tmp: open_source_tree("source_tree", str(tmp / "missing")),
             **raises_in(DatasetNotFoundError, r"data.root=.*missing.* is not a directory")),
        Case("tokenizer-load-missing", "adversarial path", "a folder without tokenizer.json is named",
             lambda tmp: CodeTokenizer.load(tmp),
             **raises_in(FileNotFoundError, rf"no tokenizer at .*{TOKENIZER_FILE}")),
        Case("tokenizer-save-onto-file", "adversarial path", "saving into a path that is a file names it, untouched",
             lambda tmp: tok().save(tree(tmp / "s", {"model.py": "x = 1\n"}) / "model.py"),
             **raises_in(NotADirectoryError, r"model\.py: it is a file"),
             check=lambda info, tmp: (tmp / "s" / "model.py").read_text() == "x = 1\n" or pytest.fail("replaced")),
        # interrupted
        Case("tokenize-file-vanished", "interrupted", "a file removed after the scan is skipped with a warning",
             _vanishing_file,
             check=lambda r, tmp: (r[0].paths == ["a.py"] and any("b.py" in m for m in r[1])) or pytest.fail(r)),
        Case("corpus-cache-write-killed", "interrupted", "a cache write killed midway leaves no file behind",
             _interrupted_cache_write,
             check=lambda r, tmp: (r[0] == [] and r[1].paths == ["a.py"]) or pytest.fail(r[0])),
        Case("tokenizer-save-killed", "interrupted", "a tokenizer save killed midway keeps the previous file",
             _failed_tokenizer_save,
             check=lambda r, tmp: (r[1].read_bytes() == r[0] and len(list(r[1].parent.iterdir())) == 1)
             or pytest.fail(sorted(r[1].parent.iterdir()))),
    ]
    # every installed-dataset loader, pointed at a folder that is not that dataset
    for name, loader in sorted(DATASETS.items()):
        cases.append(Case(f"dataset-{name}-wrong-root", "adversarial path",
                          f"{name}(root=...) names the folder it searched",
                          lambda tmp, loader=loader: loader(tree(tmp / "elsewhere", {"a.py": GOOD_PY})),
                          **raises_in(DatasetNotFoundError, r"searched:\s+.*/elsewhere")))
    return cases


def _truncate(path: Path) -> Path:
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    return path


# ---- every registered code model -------------------------------------------------------------------------------

def build(name):
    torch.manual_seed(0)
    return zoo.create(name, vocab_size=V, dim=16, depth=1, num_heads=2, max_seq_len=32, newline_ids=NEWLINES).eval()


def ids(n=6):
    x = torch.arange(n)[None].repeat(2, 1) % V
    x[:, 1] = 3
    return x


def pos_for(x):
    return code_positions(x, NEWLINES, V, flat_levels=True)


def with_bad_id(bad):
    def run(tmp, name):
        x = ids()
        p = pos_for(x)
        x[1, 4] = bad
        return build(name)(x, p)
    return run


def model_cases():
    cases = []
    for name in zoo.list_models(domain="code"):
        def c(suffix, category, does, run, **kw):
            cases.append(Case(f"{name}-{suffix}", category, does, lambda tmp, run=run: run(tmp, name), **kw))
        c("input-list", "wrong type", "a list as input_ids is refused",
          lambda tmp, n: build(n)([[1, 2]]), **raises_in(ValueError, r"input_ids must be an int \[b, n\] tensor"))
        c("input-float", "wrong type", "float input_ids are refused",
          lambda tmp, n: build(n)(ids().float()), **raises_in(ValueError, r"input_ids must be an int .*float32"))
        c("pos-tensor", "wrong type", "a tensor as pos is refused",
          lambda tmp, n: build(n)(ids(), ids()), **raises_in(ValueError, r"pos must be a zoo.Positions, got Tensor"))
        c("id-vocab", "out of range", "a token id >= vocab_size is refused, naming it",
          with_bad_id(V), **raises_in(ValueError, rf"input_ids holds token id {V}\b.*vocab_size={V}"))
        c("id-negative", "out of range", "a negative token id is refused, naming it",
          with_bad_id(-3), **raises_in(ValueError, rf"input_ids holds token id -3\b.*vocab_size={V}"))
        c("pos-longer", "out of range", "positions of more tokens than the input are refused",
          lambda tmp, n: build(n)(ids(6), pos_for(ids(7))),
          **raises_in(ValueError, r"Positions\.\w+ describes 7 tokens but the model sees 6"))
        c("generate-negative-steps", "out of range", "a negative max_new_tokens is refused",
          lambda tmp, n: build(n).generate(ids(), -1), **raises_in(ValueError, r"max_new_tokens must be a non-neg"))
        c("generate-float-steps", "wrong type", "a float max_new_tokens is refused",
          lambda tmp, n: build(n).generate(ids(), 2.0), **raises_in(ValueError, r"max_new_tokens .* got 2\.0"))
        c("empty-input", "empty", "a length-0 input is refused at the model's entry",
          lambda tmp, n: build(n)(torch.zeros(2, 0, dtype=torch.long)),
          **raises_in(ValueError, r"input_ids has no tokens \(shape \(2, 0\)\)"))
        c("generate-empty-prompt", "empty", "generate() on an empty prompt asks for at least one token",
          lambda tmp, n: build(n).generate(torch.zeros(1, 0, dtype=torch.long), 3),
          **raises_in(ValueError, r"input_ids has no tokens.*prompt of at least one token"))
        c("generate-length-one", "empty", "a one-token prompt generates (cache and full forward agree)",
          lambda tmp, n: (build(n).generate(torch.tensor([[5]]), 3, temperature=0),
                          build(n).generate(torch.tensor([[5]]), 3, temperature=0, use_cache=False)),
          check=lambda r, tmp: (r[0].shape == (1, 4) and torch.equal(r[0], r[1])) or pytest.fail(str(r)))
    return cases


# ---- every encoding zoo.pe can create ----------------------------------------------------------------------------

H, D, C = 2, 8, 16
#: tiny constructor arguments per encoding name; a name missing here is built by ``zoo.pe.build`` at this geometry
PE_KWARGS = {
    "alibi": dict(num_heads=H), "alibi_interp": dict(num_heads=H, factor=2.0), "bipe_alibi": dict(num_heads=H),
    "bipe_intra": dict(max_intra=16, dim=C), "bipe_rope": dict(head_dim=D), "bros": dict(hidden_size=64, head_dim=D),
    "cope": dict(head_dim=D), "fire": dict(num_heads=H), "hirope": dict(head_dim=D),
    "irpe": dict(head_dim=D, num_heads=H), "kerple_log": dict(num_heads=H), "kerple_power": dict(num_heads=H),
    "layoutlm_2d": dict(dim=C), "layoutlmv3_bias": dict(num_heads=H),
    "layoutlmv3_spatial": dict(coordinate_size=3, shape_size=2), "learned": dict(num_tokens_or_grid=16, dim=C),
    "manhattan_decay": dict(num_heads=H), "md_lrpe_cosine": dict(head_dim=D, num_heads=H),
    "md_tpe": dict(embed_dim=C, num_heads=H), "nope": {}, "p_rope": dict(head_dim=D, p=0.5), "peg": dict(dim=C),
    "randomized": dict(pe=zoo.pe.RoPE(D), max_length=32), "reading_order": dict(num_heads=H),
    "rope": dict(head_dim=D), "rope2d_axial": dict(head_dim=D), "rope2d_mixed": dict(head_dim=D, num_heads=H),
    "rope_scaled": dict(head_dim=D), "shaw": dict(head_dim=D), "sincos": dict(dim=C), "t5": dict(num_heads=H),
    "v2pe": dict(head_dim=D), "xpos": dict(head_dim=D),
}
#: encodings that refuse an empty grid with a clear error instead of returning empty results
EMPTY_REFUSED = {"manhattan_decay": r"grid size must be positive, got 0x0",
                 "learned_2d": r"pos\.grid_size must be positive, got 0x0"}
HOOKS = ("embed", "rotate", "bias", "value")


def full_positions(n: int) -> Positions:
    """Every field an encoding may read, for n tokens on a 1 x n grid (an empty grid for n == 0)."""
    t = torch.arange(n)[None]                                                       # [1, n]
    boxes = torch.stack([t * 10, t * 5, t * 10 + 8, t * 5 + 4], dim=-1)              # [1, n, 4]
    grid = torch.stack([torch.zeros(n, dtype=torch.long), torch.arange(n)], dim=-1)  # [n, 2]
    return Positions(ids=t, levels=t[..., None].expand(1, n, 5), segments=t // 2, boxes=boxes,
                     mask=torch.ones(1, n, dtype=torch.bool), grid=grid, grid_size=(1, n) if n else (0, 0))


def call_hook(pe, hook, n, pos):
    g = torch.Generator().manual_seed(0)
    width = pe.embed_width if hasattr(pe, "embed_width") else getattr(pe, "dim", None) or C
    if hook == "embed":
        return pe.embed(torch.randn(1, n, width, generator=g), pos)
    q, k = torch.randn(2, 1, H, n, D, generator=g)
    if hook == "rotate":
        return pe.rotate(q, k, pos)
    if hook == "bias":
        return pe.bias(q, k, pos, D ** -0.5)
    return pe.value(torch.softmax(torch.randn(1, H, n, n, generator=g), -1), pos)


def shapes_ok(hook, n):
    def check(out, tmp):
        outs = out if isinstance(out, tuple) else (out,)
        for o in outs:
            if o is None:
                assert hook == "bias", f"{hook} returned None"
                continue
            assert isinstance(o, torch.Tensor) and o.shape[0] == 1, o
            if hook == "bias":
                assert o.shape[-2:] == (n, n), tuple(o.shape)
            else:                                         # embed [1, n, C]; rotate / value [1, h, n, d']
                assert o.shape[-2] == n, tuple(o.shape)
            assert torch.isfinite(o).all()
    return check


def pe_cases():
    cases = []
    for name in zoo.pe.list_pe():
        if name in PE_KWARGS:
            pe = zoo.pe.create(name, **PE_KWARGS[name])
        else:                                             # the registry's geometry mapping and example keywords
            geometry = dict(dim=C, head_dim=D, num_heads=H, max_len=16, depth=1, grid_size=(4, 4))
            pe = zoo.pe.build({"name": name, **zoo.pe.example_kwargs(name, **geometry)}, **geometry)
        if name == "layoutlmv3_spatial":
            pe.embed_width = 4 * 3 + 2 * 2
        for hook in [h for h in HOOKS if zoo.pe.overrides(pe, h)]:
            def add(suffix, category, does, run, **kw):
                cases.append(Case(f"pe-{name}-{hook}-{suffix}", category, does,
                                  lambda tmp, run=run, pe=pe, hook=hook: run(pe, hook), **kw))
            if name in EMPTY_REFUSED:
                add("n0", "empty", "an empty grid is refused, naming the grid size",
                    lambda pe, hook: call_hook(pe, hook, 0, full_positions(0)),
                    **raises_in(ValueError, EMPTY_REFUSED[name]))
            else:
                add("n0", "empty", "length-0 positions give empty outputs of the right shape",
                    lambda pe, hook: call_hook(pe, hook, 0, full_positions(0)), check=shapes_ok(hook, 0))
            add("n1", "out of range", "length-1 positions give outputs of the right shape",
                lambda pe, hook: call_hook(pe, hook, 1, full_positions(1)), check=shapes_ok(hook, 1))
            add("pos-str", "wrong type", "a pos that is not a Positions is refused, naming pos",
                lambda pe, hook: call_hook(pe, hook, 3, "0 1 2"),
                **raises_in(TypeError, r"pos must be a zoo\.Positions \(or None\), got str"))
            add("ids-list", "wrong type", "a Positions field that is not a tensor is refused, naming it",
                lambda pe, hook: call_hook(pe, hook, 3, Positions(ids=[0, 1, 2], grid_size=(1, 3))),
                **raises_in(TypeError, r"Positions\.ids must be a torch\.Tensor, got list"))
    return cases


CASES = loader_cases() + model_cases() + pe_cases()


@pytest.mark.parametrize("case", params(CASES))
def test_case(case, tmp_path):
    check_case(case, tmp_path)
