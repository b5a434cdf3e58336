"""2D RoPE (RoPE-Axial, RoPE-Mixed; Heo et al., ECCV 2024): relative-offset property, prefix tokens untouched,
float32 angles under bf16 autocast, pinned frequency tables and rotations, parameter sharing, bad input."""
import math

import pytest
import torch

from zoo.pe.base import PositionalEncoding
from zoo.pe.rope2d import (AxialRoPE2d, MixedRoPE2d, axial_angles, axial_inv_freq, mixed_angles,
                           mixed_freqs_init)
from zoo.positions import Positions


def _pes(head_dim=16, heads=2):
    torch.manual_seed(0)
    return [AxialRoPE2d(head_dim), MixedRoPE2d(head_dim, heads)]


def _shifted(pos: Positions, dr: int, dc: int) -> Positions:
    return Positions(grid=pos.grid + torch.tensor([dr, dc]), grid_size=pos.grid_size, num_prefix=pos.num_prefix)


@pytest.mark.parametrize("pe", _pes(), ids=["axial", "mixed"])
def test_scores_depend_only_on_2d_offset(pe):
    torch.manual_seed(1)
    h, w, p = 3, 4, 1
    pos = Positions.grid_2d(h, w, num_prefix=p)
    q, k = torch.randn(2, 2, p + h * w, 16), torch.randn(2, 2, p + h * w, 16)
    q1, k1 = pe.rotate(q, k, pos)
    # the same instance sees a different grid next (its cache must follow)
    for dr, dc in [(5, -2), (0, 7), (-3, 0)]:
        q2, k2 = pe.rotate(q, k, _shifted(pos, dr, dc))
        s1, s2 = q1 @ k1.transpose(-1, -2), q2 @ k2.transpose(-1, -2)
        # grid-to-grid scores are shift-invariant (the unrotated prefix has no position, so its scores move)
        torch.testing.assert_close(s1[..., p:, p:], s2[..., p:, p:], atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(s1[..., :p, :p], s2[..., :p, :p])
        assert not torch.allclose(q1[..., p:, :], q2[..., p:, :])   # the absolute rotation did change
    # one query / key vector at every position: score(i, j) is a function of (row_i - row_j, col_i - col_j)
    qv, kv = torch.randn(1, 2, 1, 16).expand(1, 2, p + h * w, 16), torch.randn(1, 2, 1, 16).expand(1, 2, p + h * w, 16)
    qr, kr = pe.rotate(qv, kv, pos)
    s = (qr @ kr.transpose(-1, -2))[..., p:, p:]
    seen = {}
    for i in range(h * w):
        for j in range(h * w):
            off = (i // w - j // w, i % w - j % w)
            if off in seen:
                torch.testing.assert_close(s[..., i, j], seen[off], atol=1e-5, rtol=1e-5)
            else:
                seen[off] = s[..., i, j]


@pytest.mark.parametrize("pe", _pes(), ids=["axial", "mixed"])
def test_prefix_tokens_unchanged(pe):
    torch.manual_seed(2)
    pos = Positions.grid_2d(2, 3, num_prefix=2)
    q, k = torch.randn(1, 2, 8, 16), torch.randn(1, 2, 8, 16)
    q2, k2 = pe.rotate(q, k, pos)
    assert torch.equal(q2[..., :2, :], q[..., :2, :]) and torch.equal(k2[..., :2, :], k[..., :2, :])
    assert not torch.allclose(q2[..., 3:, :], q[..., 3:, :])
    # the first grid token sits at (0, 0): angle 0, unchanged as well
    torch.testing.assert_close(q2[..., 2, :], q[..., 2, :])
    # norms are preserved (a rotation)
    torch.testing.assert_close(q2.norm(dim=-1), q.norm(dim=-1))


@pytest.mark.parametrize("pe", _pes(), ids=["axial", "mixed"])
def test_angles_float32_under_bf16_autocast(pe):
    pos = Positions.grid_2d(2, 300, num_prefix=1)
    n = 1 + 600
    q = torch.randn(1, 2, n, 16, dtype=torch.bfloat16)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        if isinstance(pe, AxialRoPE2d):
            cos, sin, p = pe.cos_sin(pos, n, "cpu")
        else:
            cos, sin, p = pe.cos_sin(pos, n, 0, "cpu")
        q2, k2 = pe.rotate(q, q, pos)
        ang = axial_angles(pos.grid[:, 0], pos.grid[:, 1], axial_inv_freq(16).bfloat16())
        mix = mixed_angles(pos.grid[:, 0], pos.grid[:, 1], mixed_freqs_init(16, 2)[:, 0].bfloat16())
    assert cos.dtype == sin.dtype == ang.dtype == mix.dtype == torch.float32
    assert q2.dtype == torch.bfloat16
    # neighbouring columns keep distinct angles (in bf16, 257 rounds to 256: the two would collapse)
    assert ang[256, 0] - ang[255, 0] == pytest.approx(1.0, abs=1e-4)
    assert not torch.equal(cos[..., 256, :], cos[..., 257, :])


def test_axial_frequency_table_pinned():
    # f_j = theta^(-4j / r), j < r/4 (naver-ai compute_axial_cis: 1 / theta ** (arange(0, d, 4) / d))
    for r, theta in [(64, 100.0), (32, 100.0), (16, 10.0)]:
        want = torch.tensor([theta ** (-4.0 * j / r) for j in range(r // 4)], dtype=torch.float64)
        got = axial_inv_freq(r, theta)
        assert got.dtype == torch.float32 and got.shape == (r // 4,)
        torch.testing.assert_close(got.double(), want, atol=0, rtol=1e-7)
    f = axial_inv_freq(64, 100.0)
    assert f[0].item() == 1.0
    assert f[1].item() == pytest.approx(0.7498942093324559, rel=1e-7)    # 100^(-1/16)
    assert f[15].item() == pytest.approx(0.013335214321633242, rel=1e-6)  # 100^(-15/16)
    # angles of the token at (row 2, col 3): column pairs first, then row pairs
    ang = axial_angles(torch.tensor([2]), torch.tensor([3]), f)[0]
    torch.testing.assert_close(ang[:16], 3 * f)
    torch.testing.assert_close(ang[16:], 2 * f)


def test_axial_rotation_pinned():
    # head_dim 8: f = (1, 0.1); token (row 1, col 2) -> pair angles (2, 0.2, 1, 0.1), interleaved pairs
    pe = AxialRoPE2d(8, theta=100.0)
    pos = Positions.grid_2d(2, 3, num_prefix=1)
    x = torch.zeros(1, 1, 7, 8)
    x[..., 1 + 1 * 3 + 2, :] = torch.arange(1.0, 9.0)
    out, _ = pe.rotate(x, x, pos)
    want = []
    for t, a in enumerate([2.0, 0.2, 1.0, 0.1]):
        x0, x1 = 2.0 * t + 1, 2.0 * t + 2
        want += [x0 * math.cos(a) - x1 * math.sin(a), x1 * math.cos(a) + x0 * math.sin(a)]
    torch.testing.assert_close(out[0, 0, 6], torch.tensor(want), atol=1e-6, rtol=1e-6)
    # partial rotary: channels past rot_dim pass through
    y = torch.randn(1, 1, 7, 12)
    out, _ = AxialRoPE2d(12, rot_dim=8).rotate(y, y, pos)
    assert torch.equal(out[..., 8:], y[..., 8:])
    torch.testing.assert_close(out[..., :8], pe.rotate(y[..., :8], y[..., :8], pos)[0])


def test_mixed_freqs_init_pinned():
    mag = torch.tensor([10.0 ** (-4.0 * j / 16) for j in range(4)])
    f = mixed_freqs_init(16, num_heads=3, depth=2, theta=10.0, rotate=False)
    assert f.shape == (2, 2, 3, 8)
    torch.testing.assert_close(f[0, 1, 2], torch.cat([mag, torch.zeros(4)]), atol=1e-7, rtol=1e-6)
    torch.testing.assert_close(f[1, 0, 0], torch.cat([torch.zeros(4), mag]), atol=1e-7, rtol=1e-6)
    g = torch.Generator().manual_seed(3)
    phi = torch.rand(2, 3, 1, generator=torch.Generator().manual_seed(3)) * 2 * math.pi
    f = mixed_freqs_init(16, 3, 2, 10.0, generator=g)
    want_x = torch.cat([mag * phi.cos(), mag * (phi + math.pi / 2).cos()], -1)
    want_y = torch.cat([mag * phi.sin(), mag * (phi + math.pi / 2).sin()], -1)
    torch.testing.assert_close(f, torch.stack([want_x, want_y]))
    # every (layer, head) frequency vector pair has the same magnitudes, only the direction differs
    torch.testing.assert_close(f[0] ** 2 + f[1] ** 2, (torch.cat([mag, mag]) ** 2).expand(2, 3, 8))


def test_mixed_angles_formula():
    torch.manual_seed(4)
    freqs = torch.randn(2, 3, 8)
    rows, cols = torch.tensor([0, 1, 5]), torch.tensor([2, 0, 7])
    ang = mixed_angles(rows, cols, freqs)
    assert ang.shape == (3, 3, 8)
    for h in range(3):
        for i in range(3):
            torch.testing.assert_close(ang[h, i], cols[i] * freqs[0, h] + rows[i] * freqs[1, h])


def test_matches_timm_tables():
    import timm.layers.pos_embed_sincos as sincos
    torch.testing.assert_close(axial_inv_freq(64, 100.0), sincos.freq_bands(16, temperature=100.0, step=1))
    torch.manual_seed(5)
    ours = mixed_freqs_init(64, num_heads=6, depth=2, theta=10.0)
    torch.manual_seed(5)
    theirs = sincos.init_random_2d_freqs(64, 2, 6, temperature=10.0)
    torch.testing.assert_close(ours, theirs)


def test_batched_grid_equals_per_sample():
    torch.manual_seed(6)
    for pe in _pes():
        base = Positions.grid_2d(2, 3, num_prefix=1)
        g = torch.stack([base.grid, base.grid + torch.tensor([4, 1])])           # [2, n, 2]
        q, k = torch.randn(2, 2, 7, 16), torch.randn(2, 2, 7, 16)
        qb, kb = pe.rotate(q, k, Positions(grid=g, grid_size=(2, 3), num_prefix=1))
        for i in range(2):
            qi, ki = pe.rotate(q[i:i + 1], k[i:i + 1], Positions(grid=g[i], grid_size=(2, 3), num_prefix=1))
            torch.testing.assert_close(qb[i:i + 1], qi)
            torch.testing.assert_close(kb[i:i + 1], ki)


def test_mixed_layers_share_one_parameter():
    torch.manual_seed(7)
    owner = MixedRoPE2d(16, num_heads=2, depth=3)
    container = torch.nn.Module()
    container.rope = owner
    container.pes = torch.nn.ModuleList([owner.layer(i) for i in range(3)])
    assert list(container.state_dict()) == ["rope.freqs"]
    assert all(isinstance(p, PositionalEncoding) and p.has_rotate and not p.needs_weights for p in container.pes)
    pos = Positions.grid_2d(2, 2, num_prefix=1)
    q = torch.randn(1, 2, 5, 16)
    outs = [pe.rotate(q, q, pos)[0] for pe in container.pes]
    assert not torch.allclose(outs[0], outs[1])
    torch.testing.assert_close(outs[2], owner.rotate(q, q, pos, layer=2)[0])
    # a loss that is not rotation-invariant (a sum of squares would have a zero angle gradient)
    w = torch.randn(1, 2, 5, 16)
    sum((o * w).sum() * (i + 1) for i, o in enumerate(outs)).backward()
    assert owner.freqs.grad is not None and (owner.freqs.grad.abs().sum(dim=(0, 2, 3)) > 0).all()


def test_axial_has_no_state():
    pe = AxialRoPE2d(64)
    assert dict(pe.state_dict()) == {} and not list(pe.parameters())
    pe.rotate(torch.randn(1, 1, 5, 64), torch.randn(1, 1, 5, 64), Positions.grid_2d(2, 2, num_prefix=1))
    assert dict(pe.half().state_dict()) == {}


def test_bad_input():
    with pytest.raises(ValueError, match="multiple of 4"):
        AxialRoPE2d(6)
    with pytest.raises(ValueError, match="multiple of 4"):
        MixedRoPE2d(18, 2)
    with pytest.raises(ValueError, match="theta"):
        AxialRoPE2d(16, theta=0)
    pe = AxialRoPE2d(16)
    q = torch.randn(1, 2, 5, 16)
    with pytest.raises(ValueError, match="grid"):
        pe.rotate(q, q, None)
    with pytest.raises(ValueError, match="grid"):
        pe.rotate(q, q, Positions.sequence(5))
    with pytest.raises(ValueError, match="grid_size"):
        pe.rotate(q, q, Positions(grid=Positions.grid_2d(2, 2).grid, grid_size=(2, 3), num_prefix=1))
    with pytest.raises(ValueError, match="5 tokens"):
        pe.rotate(q, q, Positions.grid_2d(2, 3, num_prefix=1))
    with pytest.raises(ValueError, match="head_dim"):
        pe.rotate(torch.randn(1, 2, 5, 8), torch.randn(1, 2, 5, 8), Positions.grid_2d(2, 2, num_prefix=1))
    deep = MixedRoPE2d(16, 2, depth=2)
    with pytest.raises(ValueError, match="layer"):
        deep.rotate(q, q, Positions.grid_2d(2, 2, num_prefix=1))
    with pytest.raises(ValueError, match="layer index"):
        deep.layer(2)
    with pytest.raises(ValueError, match="heads"):
        MixedRoPE2d(16, 3).rotate(q, q, Positions.grid_2d(2, 2, num_prefix=1))


def test_rotate_pairs_equals_the_real_formula_with_its_gradients():
    # the fused complex rotation against autograd through apply_rotary (x_{2t}, x_{2t+1}) pairs
    from zoo.pe import apply_rotary
    from zoo.pe.rope2d import rotate_pairs
    torch.manual_seed(0)
    x = torch.randn(2, 3, 7, 8, dtype=torch.float64).transpose(1, 2).transpose(1, 2)  # a strided view
    ang = torch.randn(3, 7, 4, dtype=torch.float64)
    w = torch.randn(2, 3, 7, 8, dtype=torch.float64)
    x1, a1 = x.clone().requires_grad_(), ang.clone().requires_grad_()
    x2, a2 = x.clone().requires_grad_(), ang.clone().requires_grad_()
    out1 = rotate_pairs(x1, a1)
    out2 = apply_rotary(x2, a2.cos(), a2.sin(), layout="interleaved")
    # apply_rotary rotates in float32: compare at float32 precision; gradcheck below is exact in float64
    torch.testing.assert_close(out1, out2, rtol=1e-5, atol=1e-6)
    (out1 * w).sum().backward()
    (out2 * w).sum().backward()
    torch.testing.assert_close(x1.grad, x2.grad, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(a1.grad, a2.grad, rtol=1e-5, atol=1e-6)
    assert torch.autograd.gradcheck(lambda a, b: rotate_pairs(a, b), (x1.detach().requires_grad_(),
                                                                     a1.detach().requires_grad_()))


def test_rotate_pairs_keeps_bf16_and_rotates_in_float32():
    from zoo.pe.rope2d import rotate_pairs
    x = torch.randn(1, 1, 2, 4).to(torch.bfloat16)
    ang = torch.tensor([[[256.0, 0.0], [257.0, 0.0]]])                  # float32: two distinct angles
    out = rotate_pairs(x, ang)
    assert out.dtype == torch.bfloat16
    ref = torch.view_as_real(torch.view_as_complex(x.float().reshape(1, 1, 2, 2, 2)) *
                             torch.polar(torch.ones_like(ang), ang)).reshape(1, 1, 2, 4).to(torch.bfloat16)
    torch.testing.assert_close(out, ref, rtol=0, atol=0)
