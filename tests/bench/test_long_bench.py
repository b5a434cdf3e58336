"""`zoo bench long`: ratios against the baseline of the same run, the report files, failing workers, bad options.
Sizes are tiny: these check bookkeeping, never speed (DESIGN.md: no timed assertions)."""
import json
import sys

import pytest

from zoo.bench import long as long_bench
from zoo.bench import long_report
from zoo.cli import main

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def _row(label, mode, seconds, peak, step):
    return dict(label=label, mode=mode, input="64", depth=1, seconds=seconds, peak_mib=peak, step_mib=step)


def _result(rows):
    return dict(suite="long", variant="genomics", baseline="nope", input="64 tokens, batch 1",
                modes=["fwd", "fwdbwd"], repeats=3, device="cpu", load_avg_after=[0.5, 0.4, 0.3],
                machine=dict(cpu="Test CPU", cpus=2, load_avg=[0.25, 0.5, 1.0], commit="abc123-dirty"), rows=rows)


def test_ratios_are_against_the_baseline_of_the_same_mode():
    rows = [_row("nope", "fwd", 0.5, 1000.0, 40.0), _row("alibi", "fwd", 0.75, 1100.0, 60.0),
            _row("nope", "fwdbwd", 2.0, 1500.0, 0.0), _row("alibi", "fwdbwd", 3.0, 1800.0, 12.0),
            dict(label="rope", mode="fwd", input="64", error="exit 1: boom")]
    long_report.add_ratios(rows, "nope")
    assert [r.get("time_ratio") for r in rows] == [1.0, 1.5, 1.0, 1.5, None]
    assert [r.get("peak_ratio") for r in rows] == [1.0, 1.1, 1.0, 1.2, None]
    assert rows[1]["step_ratio"] == 1.5 and rows[3]["step_ratio"] is None, "no ratio to a growth of 0 MiB"
    # a mode whose baseline failed has no ratios at all (never against the other mode's baseline)
    rows = [dict(label="nope", mode="fwd", error="timed out"), _row("alibi", "fwd", 0.75, 1100.0, 60.0),
            _row("nope", "fwdbwd", 2.0, 1500.0, 10.0)]
    long_report.add_ratios(rows, "nope")
    assert "time_ratio" not in rows[1] and rows[2]["time_ratio"] == 1.0


def test_table_note_and_figure(tmp_path):
    rows = [_row("nope", "fwd", 0.5, 1000.0, 40.0), _row("alibi", "fwd", 0.75, 1100.0, 60.0),
            _row("nope", "fwdbwd", 2.0, 1500.0, 20.0), dict(label="alibi", mode="fwdbwd", input="64", depth=1,
                                                             error="exit 1: MemoryError")]
    long_report.add_ratios(rows, "nope")
    result = _result(rows)
    table = long_report.format_table(rows, "encoding").splitlines()
    assert table[0].startswith("| encoding | mode | input | depth | seconds | time / base")
    assert table[3] == "| `alibi` | fwd | 64 | 1 | 0.750 | 1.50x | 1,100.0 | 1.10x | 60.0 | 1.50x |"
    assert table[5].endswith("| error: exit 1: MemoryError |")
    note = long_report.format_note(result)
    assert "machine: Test CPU, 2 CPUs" in note and "load average (1/5/15 min) 0.25 0.50 1.00 before" in note
    assert "commit abc123-dirty" in note and "median of 3 timed step(s)" in note
    fig = long_report.ratio_figure(result)
    assert len(fig.axes) == 2
    time_ax, mem_ax = fig.axes
    # bars in order: fwd for nope, alibi, then fwd+bwd for nope, alibi (the failed one has no height)
    heights = [p.get_height() for p in time_ax.patches]
    assert heights[:3] == [1.0, 1.5, 1.0] and heights[3] != heights[3]
    assert [p.get_height() for p in mem_ax.patches][:3] == [1.0, 1.1, 1.0]
    assert time_ax.get_ylabel() == "time / baseline" and mem_ax.get_ylabel() == "peak memory / baseline"


def test_outputs_are_written_whole_or_not_at_all(tmp_path, monkeypatch):
    rows = [_row("nope", "fwd", 0.5, 1000.0, 40.0), _row("alibi", "fwd", 0.75, 1100.0, 60.0)]
    long_report.add_ratios(rows, "nope")
    result = _result(rows)
    files = long_report.write_outputs(result, tmp_path / "out", "encoding")
    assert json.loads((tmp_path / "out" / "long.json").read_text()) == result
    png = (tmp_path / "out" / "long.png").read_bytes()
    assert files["png"].endswith("long.png") and png[:8] == PNG_SIGNATURE and len(png) > 10_000
    import matplotlib.image
    h, w = matplotlib.image.imread(files["png"]).shape[:2]
    assert w > h > 300
    assert "| `alibi` | fwd |" in (tmp_path / "out" / "long.md").read_text()

    def broken(result):
        raise RuntimeError("no figure")
    monkeypatch.setattr(long_report, "plot_ratios", broken)
    with pytest.raises(RuntimeError, match="no figure"):
        long_report.write_outputs(result, tmp_path / "failed", "encoding")
    assert not (tmp_path / "failed").exists() or not list((tmp_path / "failed").iterdir())


def test_machine_facts():
    facts = long_report.machine_facts()
    assert facts["cpu"] and facts["cpus"] >= 1 and len(facts["load_avg"]) == 3
    assert facts["commit"] is None or len(facts["commit"].split("-")[0]) == 12


def test_a_failing_worker_gives_an_error_row_and_exit_code_1(tmp_path, monkeypatch, capsys):
    real = long_bench.worker_command

    def command(job):                             # the alibi worker dies; nope is measured for real
        if job["label"] == "alibi":
            return [sys.executable, "-c", "import sys; sys.exit('out of memory (simulated)')"]
        return real(job)
    monkeypatch.setattr(long_bench, "worker_command", command)
    out = tmp_path / "long.json"
    assert main(["bench", "long", "--tokens", "64", "--depth", "1", "--models", "alibi", "--mode", "fwd",
                 "--json", str(out), "--out", str(tmp_path / "report")]) == 1
    rows = json.loads(out.read_text())
    assert [(r["label"], r["mode"]) for r in rows] == [("nope", "fwd"), ("alibi", "fwd")]
    assert rows[0]["time_ratio"] == 1.0 and "error" not in rows[0]
    assert rows[1]["error"] == "exit 1: out of memory (simulated)" and "time_ratio" not in rows[1]
    assert "error: exit 1: out of memory (simulated)" in capsys.readouterr().out
    report = json.loads((tmp_path / "report" / "long.json").read_text())
    assert report["rows"] == rows and (tmp_path / "report" / "long.png").read_bytes()[:8] == PNG_SIGNATURE
    # a worker that raises (an unknown model) fails the same way, with its last line of stderr
    [row] = long_bench.run_jobs([dict(kind="tokens", label="nosuch", input="64", args=dict(
        pe="nosuch", model="dna_{pe}_tiny", token_range=[5, 9], tokens=64, depth=1, mode="fwd"))], verbose=False)
    assert row["label"] == "nosuch" and row["error"].startswith("exit 1: ") and "dna_nosuch_tiny" in row["error"]


@pytest.mark.parametrize("argv, message", [
    (["--mode", "fwd,backward"], "--mode: expected fwd, fwdbwd or fwd,fwdbwd, got 'fwd,backward'"),
    (["--mode", ","], "--mode: expected"),
    (["--repeats", "0"], "--repeats must be a positive integer, got 0"),
    (["--tokens", "0"], "--tokens must be a positive integer, got 0"),
    (["--depth", "-1"], "--depth must be a positive integer, got -1"),
    (["--batch-size", "0"], "--batch-size must be a positive integer, got 0"),
    (["--device", "tpu"], "--device: expected auto, cpu, cuda or cuda:N, got 'tpu'"),
    (["--models", "alibi,fancy"], "--models: no dna_{pe}_tiny for 'fancy'; known encodings: "),
    (["--domain", "proteins"], "zoo bench long --domain proteins: not implemented; known: genomics, vision"),
])
def test_bad_options_are_refused_before_anything_runs(argv, message, tmp_path, capsys):
    assert main(["bench", "long", "--tokens", "64", "--out", str(tmp_path / "out")] + argv) == 2
    assert message in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


def test_modes_parse_in_a_fixed_order():
    assert long_bench.parse_modes(None) == ["fwd", "fwdbwd"]
    assert long_bench.parse_modes("fwdbwd, fwd") == ["fwd", "fwdbwd"]
    assert long_bench.parse_modes("fwdbwd") == ["fwdbwd"]
