"""`zoo bench extrapolation --domain genomics` end to end at a tiny scale (structure and bookkeeping, not quality)."""
import json
import math
import statistics

import pytest
import torch
from genomics_test_helpers import require

from domains.genomics import bench
from domains.genomics.data import RRNA16S_PATH, load_16s, stratified_split
from domains.genomics.tokenizers import nucleotide_tokenizer
from zoo.cli import main
from zoo.errors import ConfigError

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
TINY = {"dim": 32, "depth": 1, "num_heads": 2}


@pytest.fixture(scope="module")
def fasta(tmp_path_factory):
    """The first 400 records of the real 16S file (same bytes), so the benchmark's loaders and split run as is."""
    if not RRNA16S_PATH.exists():
        pytest.fail(f"{RRNA16S_PATH} is missing: run scripts/setup.sh (apt-get install microbiomeutil-data)")
    out, records = [], 0
    with open(RRNA16S_PATH) as f:
        for line in f:
            if line.startswith(">"):
                records += 1
                if records > 400:
                    break
            out.append(line)
    path = tmp_path_factory.mktemp("bench16s") / "rRNA16S.gold.fasta"
    path.write_text("".join(out))
    return path


@pytest.mark.debian_data("microbiomeutil-data")
@require(RRNA16S_PATH, "microbiomeutil-data")
def test_evaluation_stream_joins_held_out_records(fasta):
    tok = nucleotide_tokenizer()
    s = bench.evaluation_stream(tok, str(fasta), "test")
    data = load_16s(str(fasta), rank="phylum", top_n=5)
    split = stratified_split(data.labels, (0.8, 0.1, 0.1), seed=0)
    test = [data.seqs[i] for i in split["test"]]
    assert s["records"] == len(test) > 5 and s["bases"] == sum(map(len, test))
    assert not set(split["test"].tolist()) & set(split["train"].tolist()), "evaluation records are held out"
    seps = (s["tokens"] == tok.sep_id).nonzero().flatten().tolist()
    assert len(seps) == len(test) - 1 and s["tokens"].numel() == s["bases"] + len(test) - 1
    assert seps[0] == len(test[0]) and tok.decode(s["tokens"][:seps[0]].numpy()) == test[0]
    plain = bench.evaluation_stream(tok, str(fasta), "test", separator=None)
    assert plain["separator_id"] is None and plain["tokens"].numel() == s["bases"]
    with pytest.raises(ValueError, match="not a special token"):
        bench.evaluation_stream(tok, str(fasta), "test", separator="A")


def test_stream_metrics_skips_separator_targets():
    torch.manual_seed(0)
    import zoo
    model = zoo.create("dna_lm_rope_tiny", allow_longer=True, max_seq_len=8, **TINY)
    tokens = torch.randint(7, 12, (65,))
    tokens[[5, 20, 40]] = 2                                                         # <sep>
    every = bench.stream_metrics(model, tokens, 16, 4, 3)
    skip = bench.stream_metrics(model, tokens, 16, 4, 3, ignore_id=2)
    assert every["tokens"] == 64 and skip["tokens"] == 61
    # the same numbers by hand: one window of 16 tokens past max_seq_len (allow_longer), no separator inside
    win = tokens[48:65]
    logits = model(win[None, :-1]).float()[0]
    ref = torch.nn.functional.cross_entropy(logits, win[1:])
    one = bench.stream_metrics(model, tokens[48:], 16, 1, 1, ignore_id=2)
    assert one["loss"] == pytest.approx(ref.item(), rel=1e-5)
    assert math.exp(one["loss"]) == pytest.approx(one["perplexity"], rel=1e-9)
    with pytest.raises(ValueError, match="4 windows of 16"):
        bench.stream_metrics(model, tokens, 16, 5, 1)


@pytest.mark.debian_data("microbiomeutil-data")
@require(RRNA16S_PATH, "microbiomeutil-data")
def test_extrapolation_bench_end_to_end(fasta, tmp_path, capsys):
    out = tmp_path / "bench"
    models = ["dna_lm_alibi_tiny", "dna_lm_bipe_tiny"]
    result = bench.extrapolation(models=models, steps=3, lengths=[128, 32, 64], train_len=32, batch_size=4,
                                 out=str(out), eval_tokens=512, root=str(fasta), model_kwargs=TINY, device="cpu",
                                 train_limit=64, val_windows=8, progress=False)
    printed = capsys.readouterr().out
    data = json.loads((out / "extrapolation.json").read_text())
    assert data["lengths"] == [32, 64, 128] and data["train_len"] == 32 and data["steps"] == 3
    assert data["domain"] == "genomics" and data["separator"] == "<sep>" and data["eval_records"] > 5
    assert sorted((r["model"], r["length"]) for r in data["rows"]) == [(m, L) for m in models for L in (32, 64, 128)]
    tokens = {r["tokens"] for r in data["rows"]}
    assert len(tokens) == 1 and 500 <= tokens.pop() <= 512, "every length scores the same bases (minus <sep>)"
    for r in data["rows"]:
        assert math.isfinite(r["ppl"]) and 1.0 < r["ppl"] < 50, r
        assert r["ppl"] == pytest.approx(math.exp(r["loss"]), rel=1e-9)
        assert r["windows"] == 512 // r["length"] and r["trained_at"] == 32
    for m in models:
        assert data["train"][m]["params"] > 0 and math.isfinite(data["train"][m]["val_loss_at_train_len"])
        assert (out / "runs" / m / "model.safetensors").is_file()
    assert (out / "extrapolation.png").read_bytes()[:8] == PNG_SIGNATURE
    assert not [p.name for p in out.rglob("*.tmp")]
    table = printed[printed.index("zoo bench extrapolation --domain genomics"):].splitlines()
    assert table[1].split() == ["model", "32*", "64", "128"]
    row = next(line for line in table if line.startswith("dna_lm_bipe_tiny")).split()
    ppl = {(r["model"], r["length"]): r["ppl"] for r in data["rows"]}
    assert [float(v) for v in row[1:]] == [pytest.approx(ppl[("dna_lm_bipe_tiny", L)], abs=1e-3)
                                           for L in (32, 64, 128)]
    assert result["files"]["png"].endswith("extrapolation.png")


@pytest.mark.debian_data("microbiomeutil-data")
@require(RRNA16S_PATH, "microbiomeutil-data")
def test_extrapolation_bench_reuses_runs_trained_with_the_same_config(fasta, tmp_path, capsys):
    out = tmp_path / "reuse"
    kw = dict(steps=2, lengths=[32, 64], train_len=32, batch_size=2, out=str(out), eval_tokens=128,
              root=str(fasta), model_kwargs=TINY, device="cpu", train_limit=16, val_windows=4, progress=False)
    first = bench.extrapolation(models=["dna_lm_rope_tiny"], **kw)
    weights = out / "runs" / "dna_lm_rope_tiny" / "model.safetensors"
    stamp = weights.stat().st_mtime_ns
    # a second process / a later call adds a model: the first one is scored again, not retrained
    second = bench.extrapolation(models=["dna_lm_rope_tiny", "dna_lm_alibi_tiny"], **kw)
    assert "dna_lm_rope_tiny: reusing the finished run" in capsys.readouterr().err
    assert weights.stat().st_mtime_ns == stamp
    rope = lambda res: [r["ppl"] for r in res["rows"] if r["model"] == "dna_lm_rope_tiny"]   # noqa: E731
    assert rope(second) == rope(first), "same weights, same held-out bases: the same perplexities"
    assert second["train"]["dna_lm_rope_tiny"]["val_loss_at_train_len"] == \
        first["train"]["dna_lm_rope_tiny"]["val_loss_at_train_len"]
    # another config (more steps), or --retrain, trains again
    bench.extrapolation(models=["dna_lm_rope_tiny"], **{**kw, "steps": 3})
    assert "reusing" not in capsys.readouterr().err and weights.stat().st_mtime_ns != stamp
    stamp = weights.stat().st_mtime_ns
    bench.extrapolation(models=["dna_lm_rope_tiny"], **{**kw, "steps": 3}, retrain=True)
    assert "reusing" not in capsys.readouterr().err and weights.stat().st_mtime_ns != stamp
    # an interrupted (or unfinished) run is never reused
    summary = out / "runs" / "dna_lm_rope_tiny" / "summary.json"
    data = json.loads(summary.read_text())
    summary.write_text(json.dumps({**data, "interrupted": True}))
    stamp = weights.stat().st_mtime_ns
    bench.extrapolation(models=["dna_lm_rope_tiny"], **{**kw, "steps": 3})
    assert "reusing" not in capsys.readouterr().err and weights.stat().st_mtime_ns != stamp


@pytest.mark.debian_data("microbiomeutil-data")
@require(RRNA16S_PATH, "microbiomeutil-data")
def test_extrapolation_bench_cli(fasta, tmp_path, capsys):
    out = tmp_path / "cli"
    assert main(["bench", "extrapolation", "--domain", "genomics", "--models", "dna_lm_nope_tiny", "--steps", "1",
                 "--lengths", "32,64", "--train-len", "32", "--eval-tokens", "128", "--batch-size", "2",
                 "--data-root", str(fasta), "--device", "cpu", "--out", str(out), "--quiet"]) == 0
    data = json.loads((out / "extrapolation.json").read_text())
    assert data["models"] == ["dna_lm_nope_tiny"] and data["lengths"] == [32, 64] and data["steps"] == 1
    assert data["eval_tokens"] == 128 and data["batch_size"] == 2 and len(data["rows"]) == 2
    assert "dna_lm_nope_tiny" in capsys.readouterr().out
    # a second process scores another model; --merge writes both as one result (table, JSON, PNG)
    assert main(["bench", "extrapolation", "--domain", "genomics", "--models", "dna_lm_alibi_tiny", "--steps", "1",
                 "--lengths", "32,64", "--train-len", "32", "--eval-tokens", "128", "--batch-size", "2",
                 "--data-root", str(fasta), "--device", "cpu", "--out", str(tmp_path / "cli2"), "--quiet"]) == 0
    other = json.loads((tmp_path / "cli2" / "extrapolation.json").read_text())
    both = ",".join(str(p / "extrapolation.json") for p in (out, tmp_path / "cli2"))
    assert main(["bench", "extrapolation", "--domain", "genomics", "--merge", both, "--out",
                 str(tmp_path / "merged"), "--quiet"]) == 0
    merged = json.loads((tmp_path / "merged" / "extrapolation.json").read_text())
    assert merged["models"] == ["dna_lm_nope_tiny", "dna_lm_alibi_tiny"]
    assert merged["rows"] == data["rows"] + other["rows"]
    md = (tmp_path / "merged" / "extrapolation.md").read_text().splitlines()
    assert [line.split("|")[1].strip() for line in md[2:]] == ["`dna_lm_nope_tiny`", "`dna_lm_alibi_tiny`"]
    assert (tmp_path / "merged" / "extrapolation.png").stat().st_size > 0


@pytest.mark.debian_data("microbiomeutil-data")
@require(RRNA16S_PATH, "microbiomeutil-data")
def test_extrapolation_bench_bad_arguments(fasta, tmp_path, capsys):
    with pytest.raises(ConfigError, match="unknown DNA decoder.*dna_lm_alibi_tiny"):
        bench.extrapolation(models=["dna_alibi_tiny"], out=str(tmp_path))         # an encoder
    with pytest.raises(ConfigError, match="twice"):
        bench.extrapolation(models=["dna_lm_rope_tiny", "dna_lm_rope_tiny"], out=str(tmp_path))
    with pytest.raises(ConfigError, match="at least the longest length"):
        bench.extrapolation(models=["dna_lm_rope_tiny"], lengths=[64, 4096], eval_tokens=1024, out=str(tmp_path))
    with pytest.raises(ConfigError, match="fewer than --eval-tokens 100000000"):
        bench.extrapolation(models=["dna_lm_rope_tiny"], lengths=[64], eval_tokens=10 ** 8, root=str(fasta),
                            out=str(tmp_path / "x"), progress=False)
    assert not (tmp_path / "x").exists(), "a refused benchmark writes nothing"
    assert main(["bench", "extrapolation", "--domain", "genomics", "--models", "dna_lm_fancy_tiny",
                 "--out", str(tmp_path)]) == 2
    assert main(["bench", "extrapolation", "--domain", "proteins", "--out", str(tmp_path)]) == 2
    assert "known: code, genomics" in capsys.readouterr().err


def test_long_bench_builds_the_dna_encoder_per_encoding_and_mode(tmp_path, capsys):
    # `zoo bench long` (default variant: genomics) is the generic suite of zoo.bench.long; the genomics plugin gives
    # it the model and token ids.  One subprocess per (encoding, mode), NoPE the baseline of each mode.
    out = tmp_path / "long.json"
    assert main(["bench", "long", "--tokens", "256", "--depth", "1", "--models", "alibi,nope", "--repeats", "2",
                 "--json", str(out), "--out", str(tmp_path / "report"), "--quiet"]) == 0
    rows = json.loads(out.read_text())
    assert [(r["model"], r["mode"]) for r in rows] == [("dna_nope_tiny", "fwd"), ("dna_alibi_tiny", "fwd"),
                                                       ("dna_nope_tiny", "fwdbwd"), ("dna_alibi_tiny", "fwdbwd")]
    for r in rows:
        assert r["depth"] == 1 and r["tokens"] == 256 and r["repeats"] == len(r["times"]) == 2
        assert r["seconds"] == pytest.approx(statistics.median(r["times"]), abs=1e-4)
        base = next(b for b in rows if b["mode"] == r["mode"] and b["label"] == "nope")
        assert r["time_ratio"] == round(r["seconds"] / base["seconds"], 4)
        assert r["peak_ratio"] == round(r["peak_mib"] / base["peak_mib"], 4)
        assert r["peak_mib"] == r["peak_rss_mib"] > 0 and r["memory"] == "rss" and r["device"] == "cpu"
        assert r["torch_threads"] >= 1 and r["cpu"] and len(r["load_avg"]) == 3 and "commit" in r
    assert rows[0]["time_ratio"] == rows[2]["time_ratio"] == 1.0 and rows[0]["peak_ratio"] == 1.0
    report = json.loads((tmp_path / "report" / "long.json").read_text())
    assert report["rows"] == rows and report["variant"] == "genomics" and report["baseline"] == "nope"
    assert (tmp_path / "report" / "long.png").read_bytes()[:8] == PNG_SIGNATURE
    printed = capsys.readouterr().out
    assert "zoo bench long --domain genomics" in printed and "machine: " in printed and "load average" in printed


@pytest.mark.debian_data("microbiomeutil-data")
@require(RRNA16S_PATH, "microbiomeutil-data")
def test_extrapolation_bench_scores_training_free_extensions(fasta, tmp_path, one_thread):
    kw = dict(steps=2, lengths=[32, 64], train_len=32, batch_size=2, out=str(tmp_path / "ext"), eval_tokens=128,
              root=str(fasta), model_kwargs=TINY, device="cpu", train_limit=16, val_windows=4, progress=False,
              amp="off")                       # float32: at the training length every method must change nothing
    result = bench.extrapolation(models=["dna_lm_rope_tiny", "dna_lm_kerple_tiny"], extend="none,yarn,self_extend,"
                                 "log_scale", **kw)
    assert result["models"] == ["dna_lm_rope_tiny", "dna_lm_rope_tiny +yarn", "dna_lm_rope_tiny +self_extend",
                                "dna_lm_rope_tiny +log_scale", "dna_lm_kerple_tiny", "dna_lm_kerple_tiny +log_scale"]
    assert result["skipped"] == {"dna_lm_kerple_tiny": ["yarn", "self_extend"]}
    ppl = {(r["model"], r["length"]): r for r in result["rows"]}
    for label in result["models"]:
        base = label.split(" +")[0]
        # at the training length every method leaves the model as it is
        assert ppl[(label, 32)]["ppl"] == pytest.approx(ppl[(base, 32)]["ppl"], rel=1e-5), label
        assert ppl[(label, 64)]["tokens_per_s"] > 0 and ppl[(label, 64)]["peak_mib"] > 0
    assert ppl[("dna_lm_rope_tiny +yarn", 64)]["overrides"]["pe"]["name"] == "rope_yarn"
    assert ppl[("dna_lm_rope_tiny +yarn", 64)]["ppl"] != ppl[("dna_lm_rope_tiny", 64)]["ppl"]
