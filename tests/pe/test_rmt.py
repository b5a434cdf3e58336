"""RMT Manhattan decay (Fan et al., CVPR 2024): head-wise decays vs the official formula, pinned bias vs a loop over
pairs, dependence on the Manhattan offset only, softmax weights ∝ γ^d through the real attention, prefix tokens,
caching, bad input."""
import math

import pytest
import torch

from zoo import Positions
from zoo.nn import Attention
from zoo.pe.base import PositionalEncoding
from zoo.pe.rmt import ManhattanDecay, manhattan_decay_bias, manhattan_log_decay


def official_decay(num_heads, initial_value, heads_range):
    # qhfan/RMT RetNetRelPos2d: decay = log(1 - 2 ** (-initial_value - heads_range * arange(num_heads) / num_heads))
    return [math.log(1 - 2 ** (-initial_value - heads_range * h / num_heads)) for h in range(num_heads)]


@pytest.mark.parametrize("heads,iv,hr", [(3, 2, 6), (4, 2, 4), (8, 2, 6), (16, 2, 6), (5, 2, 5), (7, 2, 6),
                                         (3, 1, 3)])
def test_log_decay_matches_official_formula(heads, iv, hr):
    got = manhattan_log_decay(heads, iv, hr)
    assert got.dtype == torch.float32 and got.shape == (heads,)
    torch.testing.assert_close(got.double(), torch.tensor(official_decay(heads, iv, hr), dtype=torch.float64),
                               atol=1e-7, rtol=1e-6)
    g = got.exp()
    assert (g > 0).all() and (g < 1).all() and (g[1:] > g[:-1]).all()     # later heads decay more slowly


def test_gamma_pinned():
    # DeiT-Tiny heads with the default (2, 6): 1 - 2^-2, 1 - 2^-4, 1 - 2^-6
    torch.testing.assert_close(ManhattanDecay(3).gamma, torch.tensor([0.75, 0.9375, 0.984375]))
    # RMT-T3 stage 1 (4 heads, initial 2, range 4): 1 - 2^-(2 + k)
    torch.testing.assert_close(ManhattanDecay(4, 2, 4).gamma, torch.tensor([0.75, 0.875, 0.9375, 0.96875]))


def naive_bias(h, w, log_decay, num_prefix=0):
    heads = len(log_decay)
    n = num_prefix + h * w
    out = torch.zeros(heads, n, n, dtype=torch.float64)
    for hh in range(heads):
        for i in range(num_prefix, n):
            for j in range(num_prefix, n):
                (ri, ci), (rj, cj) = divmod(i - num_prefix, w), divmod(j - num_prefix, w)
                out[hh, i, j] = log_decay[hh] * (abs(ri - rj) + abs(ci - cj))
    return out


@pytest.mark.parametrize("h,w,prefix", [(3, 4, 0), (4, 3, 1), (1, 5, 2), (2, 2, 0)])
def test_bias_pinned_loop(h, w, prefix):
    ld = manhattan_log_decay(3)
    got = manhattan_decay_bias(h, w, ld, num_prefix=prefix)
    assert got.shape == (1, 3, prefix + h * w, prefix + h * w) and got.dtype == torch.float32
    torch.testing.assert_close(got[0].double(), naive_bias(h, w, ld.double().tolist(), prefix), atol=1e-6,
                               rtol=1e-6)
    # a pinned entry: 3x4 grid, tokens (0,0) and (2,3) are 5 steps apart -> 5 log(0.75) in head 0
    if (h, w, prefix) == (3, 4, 0):
        assert got[0, 0, 0, 11].item() == pytest.approx(5 * math.log(0.75), rel=1e-6)


def test_bias_depends_only_on_manhattan_offset():
    h, w = 5, 6
    b = manhattan_decay_bias(h, w, manhattan_log_decay(4))[0]
    idx = lambda r, c: r * w + c  # noqa: E731
    # translation invariance on the grid: the same offset gives the same bias wherever it sits
    for (r0, c0), (r1, c1) in [((0, 0), (1, 2)), ((3, 1), (1, 4)), ((4, 5), (2, 0))]:
        dr, dc = r1 - r0, c1 - c0
        for sr in range(h):
            for sc in range(w):
                if 0 <= sr + dr < h and 0 <= sc + dc < w:
                    torch.testing.assert_close(b[:, idx(sr, sc), idx(sr + dr, sc + dc)], b[:, idx(r0, c0), idx(r1, c1)])
    # symmetric, zero on the diagonal, and the same for all offsets of equal |dr| + |dc|
    torch.testing.assert_close(b, b.transpose(-1, -2))
    assert torch.count_nonzero(b.diagonal(dim1=-2, dim2=-1)) == 0
    torch.testing.assert_close(b[:, idx(2, 2), idx(0, 3)], b[:, idx(2, 2), idx(3, 0)])   # 2+1 == 1+2


def test_softmax_weights_proportional_to_gamma_power_distance():
    # zero q and k: the attention weights are softmax(bias) = γ^d / Σ γ^d, through the real (SDPA) attention
    heads, h, w = 3, 3, 4
    n = 1 + h * w
    attn = Attention(heads * n, heads, pe=ManhattanDecay(heads)).eval()
    q = torch.zeros(1, heads, n, n)
    v = torch.eye(n).expand(1, heads, n, n)                                       # reads the weights out
    with torch.no_grad():
        weights = attn.attend(q, q, v, Positions.grid_2d(h, w, num_prefix=1))   # [1, heads, n, n]
    gamma = torch.tensor([0.75, 0.9375, 0.984375], dtype=torch.float64)
    want = torch.zeros(heads, n, n, dtype=torch.float64)
    for hh in range(heads):
        for i in range(n):
            for j in range(n):
                if i == 0 or j == 0:
                    want[hh, i, j] = 1.0                                          # cls: no decay to or from it
                else:
                    (ri, ci), (rj, cj) = divmod(i - 1, w), divmod(j - 1, w)
                    want[hh, i, j] = gamma[hh] ** (abs(ri - rj) + abs(ci - cj))
    want = want / want.sum(-1, keepdim=True)
    torch.testing.assert_close(weights[0].double(), want, atol=1e-6, rtol=1e-5)
    # the ratio form: w_ij / w_ik = γ^(d_ij - d_ik)
    r = weights[0, 0, 1, 1 + 5] / weights[0, 0, 1, 1 + 0]                     # (0,0)->(1,1): d=2 vs d=0
    assert r.item() == pytest.approx(0.75 ** 2, rel=1e-5)


def test_attention_matches_naive_with_random_qk():
    torch.manual_seed(0)
    b, heads, h, w, c = 2, 4, 3, 3, 32
    n, d = h * w, c // heads
    attn = Attention(c, heads, pe=ManhattanDecay(heads, 2, 4)).eval()
    x = torch.randn(b, n, c)
    bias = naive_bias(h, w, official_decay(heads, 2, 4)).float()
    with torch.no_grad():
        out = attn(x, Positions.grid_2d(h, w))
        q, k, v = (x @ attn.qkv.weight.T + attn.qkv.bias).reshape(b, n, 3, heads, d).permute(2, 0, 3, 1, 4)
        wts = (q @ k.transpose(-2, -1) / math.sqrt(d) + bias).softmax(-1)
        ref = (wts @ v).transpose(1, 2).reshape(b, n, c) @ attn.proj.weight.T + attn.proj.bias
    torch.testing.assert_close(out, ref, atol=1e-5, rtol=1e-4)


def test_cache_per_grid_and_prefix():
    pe = ManhattanDecay(2)
    q = torch.zeros(1, 2, 7, 4)
    p1 = Positions.grid_2d(2, 3, num_prefix=1)
    a = pe.bias(q, q, p1, 1.0)
    assert pe.bias(q, q, p1, 1.0) is a                                        # built once per (h, w, prefix, device)
    pe.train()
    assert pe.bias(q, q, Positions.grid_2d(2, 3, num_prefix=1), 1.0) is a   # no parameters: cached in training too
    b = pe.bias(q, q, Positions.grid_2d(3, 2, num_prefix=1), 1.0)
    assert b is not a and not torch.equal(a, b)                              # 2x3 and 3x2 differ
    q6 = torch.zeros(1, 2, 6, 4)
    assert pe.bias(q6, q6, Positions.grid_2d(2, 3), 1.0).shape == (1, 2, 6, 6)
    # a bias first built under inference mode still serves a training step
    pe2 = ManhattanDecay(2)
    with torch.inference_mode():
        pe2.bias(q, q, p1, 1.0)
    attn = Attention(8, 2, pe=pe2)
    x = torch.randn(1, 7, 8, requires_grad=True)
    attn(x, p1).sum().backward()
    assert x.grad is not None
    for i in range(ManhattanDecay.max_cache + 3):
        qq = torch.zeros(1, 2, i + 1, 4)
        pe.bias(qq, qq, Positions.grid_2d(1, i + 1), 1.0)
    assert len(pe._cache) <= ManhattanDecay.max_cache


def test_decays_survive_half_and_contract():
    pe = ManhattanDecay(6).half()
    assert pe.log_decay.dtype == torch.float32
    torch.testing.assert_close(pe.log_decay, manhattan_log_decay(6), atol=0, rtol=0)
    assert isinstance(pe, PositionalEncoding) and pe.has_bias and not pe.has_embed and not pe.needs_weights
    assert list(pe.state_dict()) == []


def test_bad_input():
    pe = ManhattanDecay(2)
    q = torch.zeros(1, 2, 9, 4)
    with pytest.raises(ValueError, match=r"grid 2x2 plus 1 prefix token\(s\) is 5 tokens, but q has 9"):
        pe.bias(q, q, Positions.grid_2d(2, 2, num_prefix=1), 1.0)
    with pytest.raises(ValueError, match="grid_size"):
        pe.bias(q, q, None, 1.0)
    with pytest.raises(ValueError, match="heads"):
        pe.bias(torch.zeros(1, 3, 9, 4), torch.zeros(1, 3, 9, 4), Positions.grid_2d(3, 3), 1.0)
    with pytest.raises(ValueError, match="num_heads"):
        manhattan_log_decay(0)
    with pytest.raises(ValueError, match="initial_value"):
        ManhattanDecay(2, initial_value=0)
    with pytest.raises(ValueError, match="grid size"):
        manhattan_decay_bias(0, 3, manhattan_log_decay(2))
