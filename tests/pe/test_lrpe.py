"""MD-LRPE cosine form (LightNet): frequencies, the xopes reference semantics on a 4x5 grid with a prefix token,
relative-ness of q'·k' on the grid, prefix and 1D positions, float32 angles."""
import math

import pytest
import torch

from zoo import Positions
from zoo.pe.lrpe import MdLrpeCosine, lrpe_theta, md_lrpe_angles


def reference_lrpe_cosine_md(x, theta, shape, l=0):
    """``lrpe_cosine_md_torch(x, theta, shape, l)`` semantics (xopes), written out element by element, float64.

    x [b, h, l + prod(shape), d]; theta [h, e] with e * len(shape) >= d. Grid index from meshgrid(indexing='ij')
    flattened row-major; Θ_s = concat_k(s_k * theta)[:d]; out = [x cos Θ, x sin Θ]; the first l tokens get [x, 0]."""
    b, h, n, d = x.shape
    e = theta.shape[-1]
    m = len(shape)
    assert e * m >= d and n == l + math.prod(shape)
    out = torch.zeros(b, h, n, 2 * d, dtype=torch.float64)
    for bi in range(b):
        for hi in range(h):
            for tok in range(n):
                if tok < l:
                    idx = None
                else:
                    rest, idx = tok - l, []
                    for size in reversed(shape):                                # last axis fastest
                        idx.append(rest % size)
                        rest //= size
                    idx = idx[::-1]
                for c in range(d):
                    ang = 0.0 if idx is None else idx[c // e] * float(theta[hi, c % e])
                    xv = float(x[bi, hi, tok, c])
                    out[bi, hi, tok, c] = xv * math.cos(ang)
                    out[bi, hi, tok, d + c] = xv * math.sin(ang)
    return out


def test_theta_pinned():
    torch.testing.assert_close(lrpe_theta(4), torch.tensor([1.0, 1e-2, 1e-4, 1e-6]))
    torch.testing.assert_close(lrpe_theta(3, base=8.0), torch.tensor([1.0, 0.25, 0.0625]))
    with pytest.raises(ValueError):
        lrpe_theta(0)


@pytest.mark.parametrize("head_dim", [8, 7])
def test_matches_xopes_reference_on_4x5_grid_with_one_prefix_token(head_dim):
    torch.manual_seed(0)
    h, l, shape = 2, 1, (4, 5)
    pe = MdLrpeCosine(head_dim, h, base=100.0)
    q, k = torch.randn(2, 2, h, l + 20, head_dim).unbind(0)
    e = math.ceil(head_dim / 2)
    theta = torch.tensor([[100.0 ** (-2 * j / head_dim) for j in range(e)]] * h)  # [h, e]: θ_j = base^(-2j/D)
    qo, ko = pe.rotate(q, k, Positions.grid_2d(*shape, num_prefix=l))
    assert qo.shape == (2, h, 21, 2 * head_dim)
    torch.testing.assert_close(qo.double(), reference_lrpe_cosine_md(q, theta, shape, l), rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(ko.double(), reference_lrpe_cosine_md(k, theta, shape, l), rtol=1e-5, atol=1e-6)


def test_pinned_values():
    # D = 4 on a 2-axis grid: e = 2; token (row 2, col 3) -> Θ = [2, 2·0.01, 3, 3·0.01]
    pe = MdLrpeCosine(4, 1)
    x = torch.tensor([1.0, 2.0, 3.0, 4.0]).expand(1, 1, 21, 4)
    out, _ = pe.rotate(x, x, Positions.grid_2d(4, 5, num_prefix=1))
    tok = out[0, 0, 1 + 2 * 5 + 3]
    ang = [2.0, 0.02, 3.0, 0.03]
    expect = [v * math.cos(a) for v, a in zip([1, 2, 3, 4], ang)] + [v * math.sin(a) for v, a in zip([1, 2, 3, 4], ang)]
    torch.testing.assert_close(tok, torch.tensor(expect))
    # the prefix token is [x, 0]
    torch.testing.assert_close(out[0, 0, 0], torch.tensor([1.0, 2.0, 3.0, 4.0, 0.0, 0.0, 0.0, 0.0]))


def scores(pe, q, k, pos):
    qo, ko = pe.rotate(q, k, pos)
    return (qo.double() @ ko.double().transpose(-2, -1))[0, 0]                  # [n, n]


def test_scores_equal_the_cosine_formula():
    torch.manual_seed(0)
    d, (hh, ww) = 6, (3, 4)
    pe = MdLrpeCosine(d, 1, base=50.0)
    q, k = torch.randn(2, 1, 1, hh * ww, d).unbind(0)
    s = scores(pe, q, k, Positions.grid_2d(hh, ww))
    e = 3
    for t in range(hh * ww):
        for u in range(hh * ww):
            pt, pu = divmod(t, ww), divmod(u, ww)
            ref = sum(float(q[0, 0, t, c] * k[0, 0, u, c])
                      * math.cos((pt[c // e] - pu[c // e]) * 50.0 ** (-2 * (c % e) / d)) for c in range(d))
            assert abs(float(s[t, u]) - ref) < 1e-5


def test_scores_depend_only_on_the_grid_offset():
    torch.manual_seed(0)
    d, (hh, ww) = 8, (4, 5)
    pe = MdLrpeCosine(d, 1)
    qv, kv = torch.randn(2, d)
    # the same query and key vector at every token: the score of (t, u) is a function of t - u alone
    q = qv.expand(1, 1, hh * ww, d)
    k = kv.expand(1, 1, hh * ww, d)
    s = scores(pe, q, k, Positions.grid_2d(hh, ww))
    by_offset = {}
    for t in range(hh * ww):
        for u in range(hh * ww):
            off = (t // ww - u // ww, t % ww - u % ww)
            by_offset.setdefault(off, []).append(float(s[t, u]))
    assert len(by_offset) == (2 * hh - 1) * (2 * ww - 1)
    for vals in by_offset.values():
        assert max(vals) - min(vals) < 1e-5
    # cos is even, per axis: the score is f(|dr|) + g(|dc|), and those 4 x 5 classes are all distinct
    for (dr, dc), vals in by_offset.items():
        assert abs(vals[0] - by_offset[(abs(dr), abs(dc))][0]) < 1e-5
    assert len({round(v[0], 4) for v in by_offset.values()}) == hh * ww
    # shifting the whole grid leaves every score unchanged
    qr, kr = torch.randn(2, 1, 1, hh * ww, d).unbind(0)
    base = Positions.grid_2d(hh, ww)
    shifted = Positions(grid=base.grid + torch.tensor([7, -3]), grid_size=(hh, ww))
    torch.testing.assert_close(scores(pe, qr, kr, shifted), scores(pe, qr, kr, base), rtol=1e-5, atol=1e-5)


def test_one_dimensional_positions_use_all_channels():
    torch.manual_seed(0)
    d = 4
    pe = MdLrpeCosine(d, 1)
    x = torch.randn(1, 1, 6, d)
    out, _ = pe.rotate(x, x, None)
    th = [10000 ** (-2 * j / d) for j in range(d)]
    ang = torch.tensor([[s * t for t in th] for s in range(6)], dtype=torch.float64)
    torch.testing.assert_close(out.double(), torch.cat([x * ang.cos(), x * ang.sin()], -1).double(),
                               rtol=1e-6, atol=1e-6)
    # explicit ids give the same, prefix tokens still get Θ = 0
    out_ids, _ = pe.rotate(x, x, Positions(ids=torch.arange(6)[None]))
    torch.testing.assert_close(out_ids, out)
    out_pre, _ = pe.rotate(x, x, Positions(num_prefix=2))
    torch.testing.assert_close(out_pre[..., 2:, :], torch.cat([x[..., 2:, :] * ang[:4].cos(),
                                                                x[..., 2:, :] * ang[:4].sin()], -1).float())
    torch.testing.assert_close(out_pre[..., :2, d:], torch.zeros(1, 1, 2, d))


def test_angles_are_float32_and_output_keeps_dtype():
    pe = MdLrpeCosine(8, 1)
    x = torch.randn(1, 1, 20, 8, dtype=torch.bfloat16)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        ang = md_lrpe_angles(torch.tensor([[257, 3]]), lrpe_theta(8), 8)
        out, _ = pe.rotate(x, x, Positions.grid_2d(4, 5))
    assert ang.dtype == torch.float32 and float(ang[0, 0]) == 257.0
    assert out.dtype == torch.bfloat16


def test_bad_input_raises():
    pe = MdLrpeCosine(8, 1)
    x = torch.randn(1, 1, 20, 8)
    with pytest.raises(ValueError, match="describes"):
        pe.rotate(x, x, Positions.grid_2d(4, 4))
    with pytest.raises(ValueError, match="head dim"):
        pe.rotate(torch.randn(1, 1, 20, 6), torch.randn(1, 1, 20, 6), None)
    with pytest.raises(ValueError, match="frequencies"):
        md_lrpe_angles(torch.zeros(3, 2, dtype=torch.long), lrpe_theta(8)[:3], 8)
