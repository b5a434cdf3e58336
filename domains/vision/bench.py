"""Vision benchmarks, registered with `zoo.bench`.

    zoo bench vision [--models a,b] [--img-size 224] [--batch-size 8]
    zoo bench linear
    zoo bench long --domain vision [--img-size 1024] [--models a,b] [--mode fwd,fwdbwd] [--out DIR]

``vision``: every vision family at the Small geometry against timm's plain ViT-S/16, forward+backward as ratios
(`zoo.bench.speed.image_speed`). ``linear``: one LightNet block (linear attention + MD-LRPE) against one softmax
block at growing token counts (`domains.vision.lightnet.linear_scaling_bench`). ``long --domain vision``: the
relative-position models (iRPE on keys, iRPE on queries, keys and values, axial 2D RoPE, RMT's Manhattan decay) at
1024 x 1024 pixels (4,096 patches), batch 1, inference and a training step, against timm's plain ViT-S/16 built at
the same size (`zoo.bench.long_image`).
"""
from __future__ import annotations

import json

from zoo.bench import register_bench

__all__ = ["SPEED_BASELINE", "SPEED_MODELS", "LONG_MODELS", "run_speed", "run_linear_scaling", "run_long"]

SPEED_BASELINE = "timm:vit_small_patch16_224"
SPEED_MODELS = ("vit_ape_small", "vit_irpe_small", "vit_irpe_small_qkv", "cpvt_small", "vit_rope_small",
                "vit_rope_mixed_small", "vit_rmt_small", "lightnet_small")
#: `zoo bench long --domain vision`: position biases and rotations whose cost grows with the number of patches
LONG_MODELS = ("vit_irpe_small", "vit_irpe_small_qkv", "vit_rope_small", "vit_rmt_small")
LONG_IMG_SIZE = 1024
_OPTIONS = [(("--img-size",), dict(type=int, default=None, help="image side in pixels (default 224; zoo bench long "
                                                                "--domain vision: 1024)"))]


def run_speed(args) -> int:
    from zoo.bench.speed import image_speed
    return image_speed("vision", SPEED_BASELINE, list(SPEED_MODELS), args)


def run_long(args) -> int:
    """``zoo bench long --domain vision``: `LONG_MODELS` vs timm's ViT-S/16 at ``--img-size`` (default 1024)."""
    from zoo.bench.long_image import run_image_from_cli
    return run_image_from_cli(args, SPEED_BASELINE, LONG_MODELS, patch_size=16, variant="vision")


def run_linear_scaling(args) -> int:
    """LightNet block (linear attention + MD-LRPE) vs a softmax block at growing token counts."""
    from .lightnet import linear_scaling_bench

    rows = linear_scaling_bench(sizes=(64, 256, 1024, 4096), device="cuda" if args.device == "cuda" else "cpu")
    print("\nzoo bench linear: forward+backward of one block (dim 192, 3 heads), batch 1")
    print(f"{'tokens':>7s} {'grid':>9s} {'linear ms':>10s} {'softmax ms':>11s} {'tokens x':>9s} {'linear x':>9s} "
          f"{'softmax x':>10s}")
    for r in rows:
        g = "x".join(str(v) for v in r["grid"])
        print(f"{r['tokens']:7d} {g:>9s} {r['linear_ms']:10.2f} {r['softmax_ms']:11.2f} {r['token_growth']:9.1f} "
              f"{r['linear_growth']:9.1f} {r['softmax_growth']:10.1f}")
    if getattr(args, "json", None):
        from zoo.io import atomic_write_text
        atomic_write_text(args.json, json.dumps(rows, indent=2))
    return 0


register_bench("vision", run_speed, options=_OPTIONS, defaults={"batch_size": 8, "img_size": 224},
               help="forward+backward of every vision family vs timm's ViT-S/16")
register_bench("linear", run_linear_scaling, defaults={"batch_size": 8},
               help="a LightNet block vs a softmax block as the token count grows")


def _register_long() -> None:
    from zoo.bench.long import OPTIONS as LONG_OPTIONS
    register_bench("long", run_long, variant="vision", options=list(LONG_OPTIONS) + _OPTIONS,
                   defaults={"img_size": LONG_IMG_SIZE, "batch_size": 1},
                   help="forward and forward+backward of the relative-position ViTs at --img-size vs timm's ViT-S/16")


_register_long()
