"""`zoo bench long --domain vision` at a tiny image size: every model, timm's ViT-S/16 the baseline (bookkeeping, not
speed)."""
import json

import pytest
import torch

from domains.vision.bench import LONG_MODELS, SPEED_BASELINE
from zoo.bench.long_image import build_image_model, measure_image
from zoo.cli import main

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def test_vision_variant_measures_every_model_against_timm(tmp_path, capsys):
    out = tmp_path / "long.json"
    assert main(["bench", "long", "--domain", "vision", "--img-size", "32", "--depth", "1", "--mode", "fwd",
                 "--json", str(out), "--out", str(tmp_path / "report")]) == 0
    rows = json.loads(out.read_text())
    assert SPEED_BASELINE == "timm:vit_small_patch16_224"
    assert [r["model"] for r in rows] == [SPEED_BASELINE, "vit_irpe_small", "vit_irpe_small_qkv", "vit_rope_small",
                                          "vit_rmt_small"] == [SPEED_BASELINE, *LONG_MODELS]
    base = rows[0]
    assert base["time_ratio"] == 1.0 and base["peak_ratio"] == 1.0
    for r in rows:
        assert r["mode"] == "fwd" and r["img_size"] == 32 and r["depth"] == 1 and r["batch"] == 1
        assert r["patches"] == 4 and r["input"] == "32x32"                        # (32 / 16) ** 2
        assert r["time_ratio"] == round(r["seconds"] / base["seconds"], 4)
        assert r["peak_ratio"] == round(r["peak_mib"] / base["peak_mib"], 4)
    report = json.loads((tmp_path / "report" / "long.json").read_text())
    assert report["variant"] == "vision" and report["baseline"] == SPEED_BASELINE and report["rows"] == rows
    assert (tmp_path / "report" / "long.png").read_bytes()[:8] == PNG_SIGNATURE
    assert "zoo bench long --domain vision" in capsys.readouterr().out


@pytest.mark.parametrize("spec", [SPEED_BASELINE, *LONG_MODELS])
def test_models_are_built_at_the_benchmark_size(spec):
    net = build_image_model(spec, 48, depth=1)
    assert len(net.blocks) == 1
    grid = getattr(net, "grid_size", None) or net.patch_embed.grid_size
    assert tuple(grid) == (3, 3)
    assert net(torch.randn(1, 3, 48, 48)).shape == (1, 1000)


def test_training_step_of_an_image_model_in_process():
    row = measure_image("vit_rope_small", img_size=32, depth=1, mode="fwdbwd", repeats=2)
    assert row["model"] == "vit_rope_small" and row["device"] == "cpu" and len(row["times"]) == 2
    assert row["seconds"] > 0 and row["peak_mib"] == row["peak_rss_mib"] > 0 and row["params"] > 0


@pytest.mark.parametrize("argv, message", [
    (["--img-size", "100"], "--img-size must be a positive multiple of the patch size 16, got 100"),
    (["--img-size", "0"], "--img-size must be a positive multiple of the patch size 16, got 0"),
    (["--models", "vit_rope_small,vit_nonesuch"], "--models: unknown image model(s) 'vit_nonesuch'"),
    (["--models", "timm:vit_nonesuch"], "--models: unknown image model(s) 'timm:vit_nonesuch'"),
    (["--mode", "train"], "--mode: expected fwd, fwdbwd or fwd,fwdbwd, got 'train'"),
])
def test_bad_options(argv, message, tmp_path, capsys):
    assert main(["bench", "long", "--domain", "vision", "--out", str(tmp_path / "out")] + argv) == 2
    assert message in capsys.readouterr().err
    assert not (tmp_path / "out").exists()
