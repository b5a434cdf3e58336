"""Contract tests over every registered encoding (`zoo.pe.list_pe()`): what the base class promises of every hook
(`zoo.pe.base`) and what each registration claims (``relative``, ``position_only``).

Each encoding is built with `zoo.pe.build` at one small geometry (plus its registration's example keywords) and fed
positions of its kind.  KV-cache decoding == full forward (``causal_ok``) needs a decoder and is tested with the
models."""
import pytest
import torch

import zoo.pe as pe
from zoo.positions import Positions

GEOMETRY = dict(dim=64, head_dim=8, num_heads=2, causal=False, max_len=32, depth=2, grid_size=(3, 4))
H, D, N = GEOMETRY["num_heads"], GEOMETRY["head_dim"], 12              # 12 tokens = the 3 x 4 grid


def positions_1d(n, shift=0):
    t = torch.arange(n)[None]                                           # [1, n]
    seg = t // 3 + shift                                                # BiPE segments (3 tokens per segment)
    return Positions(ids=t + shift, segments=seg, levels=torch.stack([t // 4, t], dim=-1) + shift,  # levels [1, n, 2]
                     mask=torch.ones(1, n, dtype=torch.bool))


def positions_2d(n, shift=0):
    h, w = GEOMETRY["grid_size"]
    return Positions.grid_2d(h, w)


def positions_boxes(n, shift=0):
    t = torch.arange(n)[None]
    boxes = torch.stack([(t % 4) * 200, (t // 4) * 100, (t % 4) * 200 + 150, (t // 4) * 100 + 40], dim=-1)
    return Positions(ids=t, boxes=boxes, mask=torch.ones(1, n, dtype=torch.bool))       # boxes [1, n, 4] in 0..1000


def positions_multimodal(n, shift=0):
    # V2PE: text tokens step 1, the visual tokens 4..7 step 0.5
    steps = torch.tensor([1.0] * 4 + [0.5] * 4 + [1.0] * (n - 8))
    return Positions(ids=(torch.cumsum(steps, 0) - 1 + shift)[None])


POSITIONS = {"1d": positions_1d, "2d": positions_2d, "boxes": positions_boxes, "graph": positions_boxes,
             "multimodal": positions_multimodal}


def make(name):
    torch.manual_seed(0)
    enc = pe.build({"name": name, **pe.example_kwargs(name, **GEOMETRY)}, **GEOMETRY)
    for p in enc.parameters():                  # zero-initialised tables (CoPE) would hide a missing gradient path
        with torch.no_grad():
            p.add_(torch.randn_like(p) * 0.1)
    return enc


def hooks_of(enc):
    return [h for h in pe.HOOKS if getattr(enc, f"has_{h}", False) or (h == "value" and enc.needs_weights)]


def run_hooks(enc, pos, g=None):
    """Every hook the encoding has, on random inputs: {hook: output tensor(s)}."""
    g = g or torch.Generator().manual_seed(1)
    q, k = torch.randn(2, 1, H, N, D, generator=g)
    out = {}
    if enc.has_embed:
        out["embed"] = enc.embed(torch.randn(1, N, getattr(enc, "dim", GEOMETRY["dim"]), generator=g), pos)
    if isinstance(enc, pe.MixedRoPE2d):                         # one set of frequencies per block: each layer's view
        out["rotate"] = tuple(t for i in range(enc.depth) for t in enc.layer(i).rotate(q, k, pos))
    elif enc.has_rotate:
        out["rotate"] = enc.rotate(q, k, pos)
    if enc.has_bias:
        out["bias"] = enc.bias(q, k, pos, D ** -0.5)
    if enc.needs_weights:
        out["value"] = enc.value(torch.softmax(torch.randn(1, H, N, N, generator=g), -1), pos)
    return out


def flat(out):
    return [t for v in out.values() for t in (v if isinstance(v, tuple) else (v,)) if t is not None]


NAMES = pe.list_pe()


@pytest.mark.parametrize("name", NAMES)
def test_info_hooks_cover_the_built_encoding(name):
    enc = make(name)
    assert set(hooks_of(enc)) <= set(pe.info(name).hooks)
    assert isinstance(enc, pe.info(name).cls)


@pytest.mark.parametrize("name", NAMES)
def test_bf16_autocast_forward_is_finite(name):
    enc = make(name)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        outs = flat(run_hooks(enc, POSITIONS[pe.info(name).positions](N)))
    assert all(torch.isfinite(t.float()).all() for t in outs)


@pytest.mark.parametrize("name", [n for n in NAMES if any(True for _ in make(n).parameters())])
def test_gradients_reach_every_parameter(name):
    enc = make(name)
    out = run_hooks(enc, POSITIONS[pe.info(name).positions](N))
    g = torch.Generator().manual_seed(2)
    loss = sum((t.float() * torch.randn(t.shape, generator=g)).sum() for t in flat(out))
    loss.backward()
    missing = [n for n, p in enc.named_parameters() if p.requires_grad and (p.grad is None or not p.grad.any())]
    assert not missing, f"{name}: no gradient reaches {missing}"


@pytest.mark.parametrize("name", [n for n in NAMES if make(n).has_bias_rows])
def test_bias_rows_equal_rows_of_bias(name):
    enc = make(name)
    pos = POSITIONS[pe.info(name).positions](N)
    q, k = torch.randn(2, 1, H, N, D, generator=torch.Generator().manual_seed(3))
    full = enc.bias(q, k, pos, D ** -0.5)
    for start, c in ((0, 5), (5, 5), (10, 2)):
        rows = enc.bias_rows(q[..., start:start + c, :], k, pos, D ** -0.5, start)
        torch.testing.assert_close(rows.expand(full[..., start:start + c, :].shape), full[..., start:start + c, :])


@pytest.mark.parametrize("name", [n for n in NAMES if pe.info(n).position_only])
def test_shared_bias_equals_per_call_bias(name):
    enc = make(name)
    pos = POSITIONS[pe.info(name).positions](N)
    q, k = torch.randn(2, 1, H, N, D, generator=torch.Generator().manual_seed(4))
    q2 = torch.randn_like(q)                                     # another layer's queries: the bias must not read them
    with enc.shared(pos):
        first = enc.shared_bias(q, k, pos, D ** -0.5)
        second = enc.shared_bias(q2, k, pos, D ** -0.5)
    assert second is first                                       # built once per forward
    torch.testing.assert_close(first, enc.bias(q2, k, pos, D ** -0.5))


def scores(enc, pos, q, k):
    """Logits ``[b, h, n, n]`` as the attention forms them from the rotate and bias hooks."""
    if enc.has_rotate:
        q, k = enc.rotate(q, k, pos)
    s = q @ k.transpose(-1, -2) * D ** -0.5
    b = enc.bias(q, k, pos, D ** -0.5) if enc.has_bias else None
    return s if b is None else s + b


@pytest.mark.parametrize("name", [n for n in NAMES if pe.info(n).relative])
def test_relative_encodings_are_shift_invariant(name):
    # scores depend on i - j only: every position shifted by s gives the same logits (RoPE: Su et al. eq. 16)
    enc = make(name)
    assert pe.info(name).positions in ("1d", "multimodal")
    make_pos = POSITIONS[pe.info(name).positions]
    q, k = torch.randn(2, 1, H, N, D, generator=torch.Generator().manual_seed(5))
    torch.testing.assert_close(scores(enc, make_pos(N, shift=7), q, k), scores(enc, make_pos(N), q, k),
                               rtol=1e-4, atol=1e-4)


def test_shift_invariance_test_can_fail():
    # an absolute encoding seen through the same check: sin/cos added to q and k changes the logits under a shift
    enc = pe.create("sincos", dim=D)

    class Absolute(pe.PositionalEncoding):
        def rotate(self, q, k, pos):
            return enc.embed(q[0], pos)[None], enc.embed(k[0], pos)[None]

    q, k = torch.randn(2, 1, 1, N, D, generator=torch.Generator().manual_seed(6))
    a, b = scores(Absolute(), positions_1d(N, shift=7), q, k), scores(Absolute(), positions_1d(N), q, k)
    assert not torch.allclose(a, b, rtol=1e-4, atol=1e-4)
