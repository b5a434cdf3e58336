"""Large images for `zoo bench long`: forward-only and forward + backward time and peak memory of image models at
one large resolution against a baseline image model, one subprocess per (model, mode).

    zoo bench long --domain <plugin> [--img-size 1024] [--models a,b] [--mode fwd,fwdbwd] [--repeats 1] [--out DIR]

A model spec is a registered zoo model name or ``timm:<name>`` (a timm model); the plugin registering the variant
names the baseline and the default models (`image_long_bench`).  Every model is built at ``img_size`` (``img_size=``
of its builder; no position table is resampled during a step), random weights, ``[batch, 3, img, img]`` random
pixels, float32.  Per (model, mode) the worker runs one warm-up step at the same size, then ``repeats`` timed steps
(`zoo.bench.long.timed_steps`): ``fwd`` = eval + inference mode, the logits ``[b, classes]``; ``fwdbwd`` = train,
cross-entropy against random classes, backward.  Ratios are against the baseline's row of the same mode.
"""
from __future__ import annotations

from typing import Any, Dict, List, Optional, Sequence

__all__ = ["measure_image", "image_long_bench", "run_image_from_cli", "build_image_model"]


def build_image_model(spec: str, img_size: int, depth: Optional[int] = None):
    """``timm:<name>`` -> ``timm.create_model(name, img_size=img_size)``, else ``zoo.create(spec, img_size=...)``;
    ``depth`` overrides the number of blocks."""
    kw: Dict[str, Any] = dict(img_size=img_size)
    if depth is not None:
        kw["depth"] = depth
    import zoo                                         # timm then knows the zoo's image models too
    if spec.startswith("timm:"):
        import timm
        return timm.create_model(spec[len("timm:"):], **kw)
    return zoo.create(spec, **kw)


def measure_image(spec: str, img_size: int = 1024, batch: int = 1, depth: Optional[int] = None,
                  mode: str = "fwdbwd", repeats: int = 1, device: str = "cpu", seed: int = 0) -> Dict[str, Any]:
    """One image model in one mode in this process (module docstring); returns a row (a dict)."""
    import torch
    import torch.nn.functional as F

    from .long import timed_steps

    torch.manual_seed(seed)
    net = build_image_model(spec, img_size, depth).to(device)
    x = torch.randn(batch, 3, img_size, img_size, device=device)                  # [b, 3, H, W]
    classes = getattr(net, "num_classes", None)
    if not classes:
        with torch.inference_mode():
            classes = net.eval()(x[:1]).shape[-1]                                   # logits [1, classes]
    target = torch.randint(0, classes, (batch,), device=device)                     # [b]

    def loss(logits, y):                                                            # logits [b, classes]
        return F.cross_entropy(logits.float(), y)

    row = timed_steps(net, (x, target), (x, target), loss, mode, repeats, device)
    blocks = getattr(net, "blocks", None)
    grid = getattr(net, "grid_size", None) or getattr(getattr(net, "patch_embed", None), "grid_size", None)
    patches = int(grid[0] * grid[1]) if grid is not None else None
    return dict(model=spec, img_size=img_size, batch=batch, depth=len(blocks) if blocks is not None else None,
                patches=patches, path=_attention_path(net, patches, batch, device, mode),
                params=sum(p.numel() for p in net.parameters()), **row)


def _attention_path(net, patches: Optional[int], batch: int, device: str, mode: str) -> str:
    """The first zoo attention's kernel (`zoo.nn.Attention.kernel_path`) over the image's tokens; ``"timm"`` for a
    model without one."""
    from ..nn import Attention
    attn = next((m for m in net.modules() if isinstance(m, Attention)), None)
    if attn is None or patches is None:
        return "timm"
    prefix = int(getattr(net, "num_prefix_tokens", 0) or 0)
    return attn.kernel_path(patches + prefix, batch, device, grad=mode == "fwdbwd")


def image_long_bench(baseline: str, models: Sequence[str], img_size: int = 1024, batch: int = 1,
                     depth: Optional[int] = None, modes: Sequence[str] = ("fwd", "fwdbwd"), repeats: int = 1,
                     device: str = "cpu", out: Optional[str] = None, variant: Optional[str] = None,
                     timeout: Optional[float] = None, verbose: bool = True) -> Dict[str, Any]:
    """``baseline`` first, then every model of ``models``, in every mode of ``modes``, each (model, mode) in its own
    subprocess (`measure_image`); returns the result of `zoo.bench.long.run_suite` (ratios against
    ``baseline``).  ``img_size``: the image side in pixels; ``batch`` images per step; ``depth`` overrides every
    model's number of blocks (a fast check)."""
    from .long import DEFAULT_TIMEOUT, run_suite

    specs = [baseline] + [m for m in models if m != baseline]
    jobs = [dict(kind="image", label=spec, input=f"{img_size}x{img_size}" + (f" x{batch}" if batch > 1 else ""),
                 args=dict(spec=spec, img_size=img_size, batch=batch, depth=depth, mode=mode, repeats=repeats,
                           device=device))
            for mode in modes for spec in specs]
    return run_suite(jobs, baseline, variant=variant, input=f"{img_size}x{img_size} images, batch {batch}",
                     modes=modes, repeats=repeats, device=device, label="model", out=out,
                     timeout=timeout or DEFAULT_TIMEOUT, verbose=verbose)


def _check_specs(specs: Sequence[str]) -> List[str]:
    import timm

    import zoo
    from ..errors import ConfigError

    known = set(zoo.list_models())
    bad = [s for s in specs if (s[5:] not in timm.list_models(s[5:]) if s.startswith("timm:") else s not in known)]
    if bad:
        raise ConfigError(f"--models: unknown image model(s) {', '.join(map(repr, bad))} (a zoo name, or "
                          f"timm:<name> for a timm model)")
    return list(specs)


def run_image_from_cli(args, baseline: str, models: Sequence[str], patch_size: int = 16,
                       variant: Optional[str] = None) -> int:
    """``zoo bench long --domain <variant>``: ``--models`` replaces ``models`` (the baseline always runs);
    ``--img-size`` must be a positive multiple of ``patch_size``."""
    from ..errors import ConfigError
    from .long import common_options, finish_cli
    from .speed import parse_list

    opts = common_options(args)
    img = getattr(args, "img_size", None)
    if isinstance(img, bool) or not isinstance(img, int) or img < 1 or img % patch_size:
        raise ConfigError(f"--img-size must be a positive multiple of the patch size {patch_size}, got {img!r}")
    specs = _check_specs(parse_list(getattr(args, "models", None)) or list(models))
    result = image_long_bench(baseline, specs, img_size=img, batch=opts["batch"], depth=opts["depth"],
                              modes=opts["modes"], repeats=opts["repeats"], device=opts["device"], out=opts["out"],
                              variant=variant)
    return finish_cli(result, args)
