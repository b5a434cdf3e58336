"""`zoo bench extrapolation --domain code` and `zoo bench code` end to end at a tiny scale (structure, not speed)."""
import json
import math
import re

import pytest
import torch

import tree_sitter  # noqa: F401
import tokenizers  # noqa: F401

from zoo.bench import bf16_native  # noqa: E402
from zoo.cli import main  # noqa: E402
from zoo.errors import ConfigError  # noqa: E402

from domains.code import bench  # noqa: E402
from code_test_helpers import copy_small_tree  # noqa: E402

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


@pytest.fixture(scope="module")
def src(tmp_path_factory):
    """Ten train, two val and two test files of the stdlib, copied (same bytes, so the same split)."""
    return copy_small_tree(tmp_path_factory.mktemp("bench") / "src")


def test_extrapolation_bench_end_to_end(src, tmp_path, capsys):
    out = tmp_path / "bench"
    result = bench.extrapolation(models=["code_lm_rope_tiny", "code_lm_alibi_tiny"], steps=4, lengths=[128, 64],
                                 train_len=64, batch_size=4, out=str(out), eval_tokens=512, dataset="source_tree",
                                 root=str(src), vocab_size=300, tokenizer_files=None, device="cpu",
                                 model_kwargs={"dim": 32, "depth": 1, "num_heads": 2}, progress=False)
    printed = capsys.readouterr().out
    data = json.loads((out / "extrapolation.json").read_text())
    assert data["lengths"] == [64, 128] and data["train_len"] == 64 and data["steps"] == 4
    pairs = sorted((r["model"], r["length"]) for r in data["rows"])
    assert pairs == [("code_lm_alibi_tiny", 64), ("code_lm_alibi_tiny", 128), ("code_lm_rope_tiny", 64),
                     ("code_lm_rope_tiny", 128)]
    for r in data["rows"]:
        assert math.isfinite(r["ppl"]) and 1.0 < r["ppl"] < 10 * 300, r
        assert r["ppl"] == pytest.approx(math.exp(r["loss"]), rel=1e-9)
        assert r["tokens"] == 512, "every length scores the same test tokens"
    assert data["train"]["code_lm_rope_tiny"]["params"] > 0
    assert (out / "extrapolation.png").read_bytes()[:8] == PNG_SIGNATURE
    assert (out / "tokenizer.json").is_file() and (out / "runs" / "code_lm_alibi_tiny" / "model.safetensors").is_file()
    assert [p.name for p in out.iterdir() if p.name.endswith(".tmp")] == []
    # the printed table: a header with the lengths (training length starred) and one line per model
    table = printed[printed.index("zoo bench extrapolation"):].splitlines()
    assert table[1].split() == ["model", "64*", "128"]
    rope = next(line for line in table if line.startswith("code_lm_rope_tiny")).split()
    ppl = {(r["model"], r["length"]): r["ppl"] for r in data["rows"]}
    assert [float(v) for v in rope[1:]] == [pytest.approx(ppl[("code_lm_rope_tiny", L)], abs=0.01) for L in (64, 128)]
    assert result["files"]["png"].endswith("extrapolation.png")
    # run again: both models are reused (same config, same tokenizer), not retrained; another vocabulary retrains
    stamp = (out / "runs" / "code_lm_alibi_tiny" / "model.safetensors").stat().st_mtime_ns
    again = bench.extrapolation(models=["code_lm_rope_tiny", "code_lm_alibi_tiny"], steps=4, lengths=[128, 64],
                                train_len=64, batch_size=4, out=str(out), eval_tokens=512, dataset="source_tree",
                                root=str(src), vocab_size=300, tokenizer_files=None, device="cpu",
                                model_kwargs={"dim": 32, "depth": 1, "num_heads": 2}, progress=False)
    assert capsys.readouterr().err.count("reusing the finished run") == 2
    assert (out / "runs" / "code_lm_alibi_tiny" / "model.safetensors").stat().st_mtime_ns == stamp
    assert [r["ppl"] for r in again["rows"]] == [r["ppl"] for r in data["rows"]]
    bench.extrapolation(models=["code_lm_alibi_tiny"], steps=4, lengths=[64], train_len=64, batch_size=4,
                        out=str(out), eval_tokens=512, dataset="source_tree", root=str(src), vocab_size=280,
                        tokenizer_files=None, device="cpu", model_kwargs={"dim": 32, "depth": 1, "num_heads": 2},
                        progress=False)
    assert "reusing" not in capsys.readouterr().err, "a new tokenizer means a new model"
    assert (out / "runs" / "code_lm_alibi_tiny" / "model.safetensors").stat().st_mtime_ns != stamp


def test_extrapolation_of_finished_runs_scores_them_as_the_training_bench_did(src, tmp_path, capsys):
    trained = tmp_path / "trained"
    first = bench.extrapolation(models=["code_lm_nope_tiny", "code_lm_bipe_tiny"], steps=3, lengths=[64, 128],
                                train_len=64, batch_size=4, out=str(trained), eval_tokens=384,
                                dataset="source_tree", root=str(src), vocab_size=300, tokenizer_files=None,
                                device="cpu", model_kwargs={"dim": 32, "depth": 1, "num_heads": 2}, progress=False)
    runs = [str(trained / "runs" / m) for m in ("code_lm_bipe_tiny", "code_lm_nope_tiny")]
    out = tmp_path / "scored"
    assert main(["bench", "extrapolation", "--domain", "code", "--runs", ",".join(runs), "--lengths", "64,128",
                 "--eval-tokens", "384", "--data-root", str(src), "--device", "cpu", "--out", str(out),
                 "--quiet"]) == 0
    printed = capsys.readouterr().out
    data = json.loads((out / "extrapolation.json").read_text())
    assert data["models"] == ["code_lm_bipe_tiny", "code_lm_nope_tiny"], "in the order of --runs"
    assert data["train_len"] == 64 and data["steps"] == 3 and data["tokenizers"] == 1
    before = {(r["model"], r["length"]): r["ppl"] for r in first["rows"]}
    after = {(r["model"], r["length"]): r["ppl"] for r in data["rows"]}
    assert after.keys() == before.keys()
    for key in before:                     # same weights, same tokenizer, same test tokens: the same perplexity
        assert after[key] == pytest.approx(before[key], rel=1e-6), key
    assert (out / "extrapolation.png").read_bytes()[:8] == PNG_SIGNATURE
    assert "finished runs" in printed and not (out / "runs").exists(), "nothing is trained"
    with pytest.raises(ConfigError, match="passed twice"):
        bench.extrapolation(runs=[runs[1], runs[1]], lengths=[64], out=str(tmp_path / "x"), dataset="source_tree",
                            root=str(src), device="cpu", progress=False)
    # two runs of one model (a run and its fine-tune): each row is labelled with its folder, both are scored
    import shutil
    again = tmp_path / "again" / "tuned"
    shutil.copytree(runs[1], again)
    two = bench.extrapolation(runs=[runs[1], str(again)], lengths=[64], eval_tokens=384, out=str(tmp_path / "two"),
                              dataset="source_tree", root=str(src), device="cpu", progress=False)
    assert two["models"] == ["code_lm_nope_tiny (code_lm_nope_tiny)", "code_lm_nope_tiny (tuned)"]
    p1, p2 = (r["ppl"] for r in two["rows"])
    assert p1 == pytest.approx(p2, rel=1e-6) and p1 == pytest.approx(before[("code_lm_nope_tiny", 64)], rel=1e-6)
    from zoo.errors import CheckpointError
    with pytest.raises(CheckpointError, match="tokenizer.json"):
        (trained / "runs" / "code_lm_bipe_tiny" / "tokenizer.json").unlink()
        bench.extrapolation(runs=[runs[0]], lengths=[64], out=str(tmp_path / "y"), dataset="source_tree",
                            root=str(src), device="cpu", progress=False)
    assert not (tmp_path / "x").exists() and not (tmp_path / "y").exists(), "a refused benchmark writes nothing"


def test_extrapolation_bench_bad_arguments(src, tmp_path):
    with pytest.raises(ConfigError, match="unknown code model.*code_lm_nope_tiny"):
        bench.extrapolation(models=["code_lm_fancy_tiny"], out=str(tmp_path))
    with pytest.raises(ConfigError, match="fewer than the longest length 1000000"):
        bench.extrapolation(models=["code_lm_rope_tiny"], lengths=[64, 1000000], train_len=64, out=str(tmp_path),
                            dataset="source_tree", root=str(src), vocab_size=300, tokenizer_files=None,
                            progress=False)
    assert not (tmp_path / "tokenizer.json").exists(), "a refused benchmark writes nothing"
    assert main(["bench", "extrapolation", "--domain", "vision", "--out", str(tmp_path)]) == 2
    assert main(["bench", "extrapolation", "--lengths", "64,abc", "--out", str(tmp_path)]) == 2


def test_code_speed_bench_structure(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    out = tmp_path / "speed.json"
    rows = bench.speed(models=["code_lm_hirope_tiny"], baseline="code_lm_nope_tiny", batch=2, seq_len=32, iters=1,
                       warmup=1, device="cpu", prompt=8, new_tokens=4, gen_iters=1, rounds=1, progress=False,
                       json_path=str(out))
    assert [r["model"] for r in rows] == ["code_lm_nope_tiny", "code_lm_hirope_tiny"]
    assert json.loads(out.read_text()) == rows
    assert rows[0]["train_speed_vs_baseline"] == 1.0 and rows[0]["gen_speed_vs_baseline"] == 1.0
    for r in rows:
        for key in ("train_tokens_per_s", "gen_cache_tokens_per_s", "gen_nocache_tokens_per_s", "cache_speedup",
                    "train_speed_vs_baseline"):
            assert math.isfinite(r[key]) and r[key] > 0, (r["model"], key)
        assert r["greedy_same_with_and_without_cache"] is True, "the KV cache must not change greedy decoding"
        # bf16 autocast only where the CPU computes bf16 natively (emulated bf16 would time the emulation)
        assert r["amp"] == ("bf16" if bf16_native(torch.device("cpu")) else "off")
    assert "code_lm_hirope_tiny" in capsys.readouterr().out


def test_extrapolation_with_training_free_extensions(src, tmp_path, capsys):
    trained = tmp_path / "trained"
    bench.extrapolation(models=["code_lm_rope_tiny", "code_lm_alibi_tiny"], steps=3, lengths=[64], train_len=64,
                        batch_size=4, out=str(trained), eval_tokens=256, dataset="source_tree", root=str(src),
                        vocab_size=300, tokenizer_files=None, device="cpu",
                        model_kwargs={"dim": 32, "depth": 1, "num_heads": 2}, progress=False)
    runs = [str(trained / "runs" / m) for m in ("code_lm_rope_tiny", "code_lm_alibi_tiny")]
    out = tmp_path / "ext"
    assert main(["bench", "extrapolation", "--domain", "code", "--runs", ",".join(runs), "--lengths", "64,128",
                 "--eval-tokens", "256", "--data-root", str(src), "--device", "cpu", "--out", str(out),
                 "--extend", "all", "--quiet"]) == 0
    data = json.loads((out / "extrapolation.json").read_text())
    from zoo.extend import METHODS
    rope = [m for m in METHODS if METHODS[m].fits_fn(__import__("zoo").pe.build("rope", head_dim=16))]
    want = ["code_lm_rope_tiny"] + [f"code_lm_rope_tiny +{m}" for m in rope if m != "none"] + \
        ["code_lm_alibi_tiny", "code_lm_alibi_tiny +log_scale", "code_lm_alibi_tiny +alibi_interp"]
    assert data["models"] == want
    assert data["skipped"] == {}, "'all' takes the methods that fit each model"
    md = (out / "extrapolation.md").read_text().splitlines()
    assert md[0] == "| model | 64 (train) | 128 | 128 / 64 |" and len(md) == 2 + len(want)
    yarn = next(line for line in md if line.startswith("| `code_lm_rope_tiny` + yarn |")).split("|")
    r = {row["length"]: row["ppl"] for row in data["rows"] if row["model"] == "code_lm_rope_tiny +yarn"}
    assert [c.strip() for c in yarn[2:5]] == [f"{r[64]:.2f}", f"{r[128]:.2f}", f"{r[128] / r[64]:.2f}x"]
    named = bench.extrapolation(runs=runs[1:], lengths=[64], out=str(tmp_path / "named"), dataset="source_tree",
                                root=str(src), device="cpu", progress=False, extend="none,pi")
    assert named["models"] == ["code_lm_alibi_tiny"] and named["skipped"] == {"code_lm_alibi_tiny": ["pi"]}
    ppl = {(r["model"], r["length"]): r for r in data["rows"]}
    for label in want:
        for L in (64, 128):
            r = ppl[(label, L)]
            assert math.isfinite(r["ppl"]) and r["tokens"] == 256 and r["tokens_per_s"] > 0 and r["peak_mib"] > 0
    # at the training length a method leaves the model as it is (except STRING's local window, by design at
    # any length, and the log scale which is 1 there): the same perplexity as the plain model
    for label in want:
        base = ppl[(label.split(" +")[0], 64)]["ppl"]
        assert ppl[(label, 64)]["ppl"] == pytest.approx(base, rel=1e-5), label
    # beyond it each method changes the model, and says how
    for label in want[1:]:
        if "+ms_poe" in label:                                                # layers 2+: a one-layer model is
            assert ppl[(label, 128)]["ppl"] == ppl[("code_lm_rope_tiny", 128)]["ppl"]   # left as it is
            continue
        if "+" in label and "alibi_tiny" not in label:
            assert ppl[(label, 128)]["ppl"] != ppl[("code_lm_rope_tiny", 128)]["ppl"], label
            assert ppl[(label, 128)]["overrides"], label
    # --merge: the runs scored by two processes, written as one result, equal the one-process result
    for i, (run, ext) in enumerate(((runs[0], "none,yarn"), (runs[1], "none"))):
        assert main(["bench", "extrapolation", "--domain", "code", "--runs", run, "--lengths", "64,128",
                     "--eval-tokens", "256", "--data-root", str(src), "--device", "cpu", "--out",
                     str(tmp_path / f"part{i}"), "--extend", ext, "--quiet"]) == 0
    parts = [str(tmp_path / f"part{i}" / "extrapolation.json") for i in (0, 1)]
    assert main(["bench", "extrapolation", "--domain", "code", "--merge", ",".join(parts), "--out",
                 str(tmp_path / "merged"), "--quiet"]) == 0
    merged = json.loads((tmp_path / "merged" / "extrapolation.json").read_text())
    assert merged["models"] == ["code_lm_rope_tiny", "code_lm_rope_tiny +yarn", "code_lm_alibi_tiny"]
    assert merged["merged_from"] == parts and set(merged["train"]) == {"code_lm_rope_tiny", "code_lm_alibi_tiny"}
    for r in merged["rows"]:
        assert r["ppl"] == pytest.approx(ppl[(r["model"], r["length"])]["ppl"], rel=1e-6), r["model"]
    assert (tmp_path / "merged" / "extrapolation.png").read_bytes()[:8] == PNG_SIGNATURE
    md = (tmp_path / "merged" / "extrapolation.md").read_text().splitlines()
    assert len(md) == 5 and md[4].startswith("| `code_lm_alibi_tiny` |")
    capsys.readouterr()

    def refused(domain, files, match):
        assert main(["bench", "extrapolation", "--domain", domain, "--merge", files, "--out",
                     str(tmp_path / "m2")]) == 2
        assert re.search(match, capsys.readouterr().err), match
    bad = tmp_path / "bad.json"
    for content, match in (("[1]", "bad.json is not a zoo bench extrapolation result"), ("{", "bad.json is not JSON")):
        bad.write_text(content)
        refused("code", f"{parts[0]},{bad}", match)
    refused("code", f"{parts[0]},{parts[0]}", "model 'code_lm_rope_tiny' is already in an earlier result")
    refused("code", f"{parts[0]},{tmp_path / 'named' / 'extrapolation.json'}", r"named/extrapolation.json: lengths is")
    refused("genomics", parts[0], "part0/extrapolation.json holds a result of --domain code, not genomics")
    refused("code", str(tmp_path / "none.json"), "cannot read .*none.json")
    assert not (tmp_path / "m2").exists(), "a refused merge writes nothing"
    with pytest.raises(ConfigError, match="closest: yarn"):
        bench.extrapolation(runs=runs[:1], lengths=[64], out=str(tmp_path / "z"), dataset="source_tree",
                            root=str(src), device="cpu", progress=False, extend="yarm")
    # LongRoPE: a small search on the held-out split, written to a file the --extend method reads
    factors = tmp_path / "factors.json"
    assert main(["bench", "longrope", "--domain", "code", "--runs", runs[0], "--target-len", "128",
                 "--eval-tokens", "128", "--population", "4", "--generations", "1", "--data-root", str(src),
                 "--device", "cpu", "--longrope-factors", str(factors), "--json", str(tmp_path / "lr.json"),
                 "--quiet"]) == 0
    info = json.loads((tmp_path / "lr.json").read_text())
    from zoo.longrope_search import load_factors
    spec = load_factors(factors, head_dim=16)
    assert spec["original_max_position_embeddings"] == 64 and spec["factor"] == 2.0
    assert info["evaluations"] >= 4 and info["split"] == "val" and math.isfinite(info["perplexity"])
    lr = bench.extrapolation(runs=runs[:1], lengths=[64, 128], out=str(tmp_path / "lr"), dataset="source_tree",
                             root=str(src), device="cpu", progress=False, extend="none,longrope",
                             longrope_factors=str(factors))
    assert lr["models"] == ["code_lm_rope_tiny", "code_lm_rope_tiny +longrope"]
    row = next(r for r in lr["rows"] if r["model"].endswith("+longrope") and r["length"] == 128)
    assert row["overrides"]["pe"]["long_factor"] == spec["long_factor"]
    with pytest.raises(ConfigError, match="plain RoPE"):
        bench.longrope_search(runs[1], 128, str(tmp_path / "no.json"), root=str(src), dataset="source_tree",
                              device="cpu", progress=False)
    assert not (tmp_path / "no.json").exists()


def test_streaming_bench_runs_each_cell_in_its_own_process(tmp_path, capsys):
    out = tmp_path / "s.json"
    assert main(["bench", "streaming", "--domain", "code", "--stream-tokens", "12,40", "--window", "8", "--sinks",
                 "2", "--full-cache", "--device", "cpu", "--json", str(out), "--quiet"]) == 0
    data = json.loads(out.read_text())
    cells = [(r["cache"], r["tokens"], r["generated"], r["window"]) for r in data["rows"]]
    assert cells == [("streaming", 12, 12, 8), ("streaming", 40, 40, 8), ("full", 12, 12, None),
                     ("full", 40, 40, None)]
    for r in data["rows"]:
        assert r["peak_mib"] >= r["rss_before_mib"] > 0 and r["tokens_per_s"] > 0
    assert [(q["cache"], q["tokens"]) for q in data["ratios"]] == [("streaming", [12, 40]), ("full", [12, 40])]
    assert "peak x" in capsys.readouterr().out


def test_packing_bench_compares_packed_with_padded(src, tmp_path):
    trained = tmp_path / "trained"
    bench.extrapolation(models=["code_lm_rope_tiny"], steps=2, lengths=[64], train_len=64, batch_size=4,
                        out=str(trained), eval_tokens=128, dataset="source_tree", root=str(src), vocab_size=300,
                        tokenizer_files=None, device="cpu", model_kwargs={"dim": 32, "depth": 1, "num_heads": 2},
                        progress=False)
    result = bench.packing(str(trained / "runs" / "code_lm_rope_tiny"), steps=1, warmup=1, batch=32, seq_len=256,
                           rounds=1, root=str(src), out=str(tmp_path / "p"), progress=False)
    packed, padded = result["rows"]
    assert packed["mode"] == "packed" and padded["mode"] == "padded"
    # packed windows leave a label out only where a file ends; padded rows leave every padding position out
    assert 0 < packed["unlabelled_share"] < padded["unlabelled_share"]
    assert packed["labelled_tokens_per_s"] > 0 and padded["labelled_tokens_per_s"] > 0
    assert result["packed_vs_padded"] == pytest.approx(packed["labelled_tokens_per_s"] /
                                                       padded["labelled_tokens_per_s"], rel=1e-3)
    assert (tmp_path / "p" / "packing.png").read_bytes()[:8] == PNG_SIGNATURE
    assert json.loads((tmp_path / "p" / "packing.json").read_text())["model"] == "code_lm_rope_tiny"
