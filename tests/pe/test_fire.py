"""FIRE (Li et al., ICLR 2024): pinned values from the paper's formula (loop), progressive interpolation,
shift invariance, KV cache, Positions.ids, bidirectional variant."""
import math

import pytest
import torch

from zoo import Positions
from zoo.nn import Attention, KVCache
from zoo.pe.fire import FIRE


def paper_bias(pe, i, j, L, c, first=0, last=None, causal=True):
    """b(i, j) = f(psi(i - j) / psi(max(L, i))), psi(x) = log(c x + 1), f = Linear -> ReLU -> Linear (by hand)."""
    psi = lambda x: math.log(c * x + 1)                                       # noqa: E731
    if causal:
        x = psi(max(i - j, 0)) / (psi(max(L, i - first)) + 1e-6)
    else:
        x = psi(abs(i - j)) / (psi(max(L, last - first)) + 1e-6)
    w1, b1 = pe.mlp[0].weight.detach().double()[:, 0], pe.mlp[0].bias.detach().double()
    w2, b2 = pe.mlp[2].weight.detach().double(), pe.mlp[2].bias.detach().double()
    return w2 @ torch.relu(w1 * x + b1) + b2                                    # [heads]


@pytest.mark.parametrize("causal", [True, False])
def test_pinned_against_paper_formula(causal):
    torch.manual_seed(0)
    pe = FIRE(3, mlp_width=8, init_c=0.3, init_L=5.0, causal=causal)          # small L: rows beyond it interpolate
    nq, nk = 6, 12
    got = pe.bias(torch.randn(1, 3, nq, 4), torch.randn(1, 3, nk, 4), None, 0.5)
    assert got.shape == (1, 3, nq, nk) and got.dtype == torch.float32
    for qi in range(nq):
        i = qi + nk - nq                                                       # queries = last nq keys
        for j in range(nk):
            if causal and j > i:
                continue
            want = paper_bias(pe, i, j, 5.0, 0.3, 0, nk - 1, causal)
            torch.testing.assert_close(got[0, :, qi, j].double(), want, atol=1e-5, rtol=1e-5)


def test_progressive_interpolation_and_relative_inside_L():
    torch.manual_seed(1)
    pe = FIRE(2, init_L=8.0)
    b = pe.bias(torch.randn(1, 2, 20, 4), torch.randn(1, 2, 20, 4), None, 1.0)[0]
    # inside the threshold (i <= L) the bias depends on i - j only
    for i in range(1, 8):
        for j in range(0, i + 1):
            torch.testing.assert_close(b[:, i, j], b[:, i - j, 0])
    # beyond it the normaliser grows with i: same distance, different input (i=19 vs i=10, distance 5)
    assert not torch.allclose(b[:, 19, 14], b[:, 10, 5])
    # equivalently the MLP input of the far query at j = 0 is 1 (psi(i) / psi(i))
    from zoo.pe.fire import fire_inputs
    x = fire_inputs(torch.arange(20.)[:, None], torch.arange(20.)[None], pe.c, pe.threshold, True)
    assert x.max().item() <= 1.0 and abs(x[19, 0].item() - 1.0) < 1e-5


@pytest.mark.parametrize("causal", [True, False])
def test_shift_invariance_and_ids(causal):
    torch.manual_seed(2)
    pe = FIRE(4, causal=causal, init_L=6.0)
    q, k = torch.randn(2, 4, 9, 4), torch.randn(2, 4, 9, 4)
    plain = pe.bias(q, k, None, 0.5)
    torch.testing.assert_close(pe.bias(q, k, Positions.sequence(9, batch=2, offset=300), 0.5), plain)
    ids = torch.tensor([[0, 2, 3, 7, 8, 15, 16, 17, 40], [10, 11, 12, 13, 14, 15, 16, 17, 18]])
    got = pe.bias(q, k, Positions(ids=ids), 0.5)
    assert got.shape == (2, 4, 9, 9)
    torch.testing.assert_close(pe.bias(q, k, Positions(ids=ids + 1000), 0.5), got)
    torch.testing.assert_close(got[1:], plain)
    want = paper_bias(pe, 17, 3, 6.0, 0.1, 0, 40, causal)                      # query pos 17, key pos 3
    torch.testing.assert_close(got[0, :, 7, 2].double(), want, atol=1e-5, rtol=1e-5)
    if not causal:
        torch.testing.assert_close(got, got.transpose(-2, -1))


def test_kv_cache_and_gradients():
    torch.manual_seed(3)
    attn = Attention(16, 2, pe=FIRE(2, init_L=3.0), causal=True).eval()
    x = torch.randn(1, 7, 16)
    with torch.no_grad():
        full = attn(x)
        cache = KVCache()
        parts = [attn(x[:, :4], None, cache)] + [attn(x[:, t:t + 1], None, cache) for t in range(4, 7)]
    torch.testing.assert_close(torch.cat(parts, 1), full, atol=1e-5, rtol=1e-4)
    pe = FIRE(2, init_L=3.0)
    pe.bias(torch.randn(1, 2, 6, 4), torch.randn(1, 2, 6, 4), None, 1.0).pow(2).sum().backward()
    for name in ("c", "L_multiplier"):
        g = getattr(pe, name).grad
        assert g is not None and torch.isfinite(g) and g != 0, name
    assert "init_L" in pe.state_dict() and not any(n == "init_L" for n, _ in pe.named_parameters())
    q = torch.randn(1, 2, 3, 4, dtype=torch.bfloat16)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert pe.bfloat16().bias(q, q, None, 0.5).dtype == torch.float32


def test_fire_bad_input():
    with pytest.raises(ValueError, match="num_heads"):
        FIRE(0)
    with pytest.raises(ValueError, match="mlp_width"):
        FIRE(2, mlp_width=0)
    with pytest.raises(ValueError, match="init_c"):
        FIRE(2, init_c=-1.0)
    with pytest.raises(ValueError, match="init_L"):
        FIRE(2, init_L=0)
    with pytest.raises(ValueError, match="num_heads"):
        FIRE(3).bias(torch.randn(1, 2, 3, 2), torch.randn(1, 2, 3, 2), None, 1.0)
    with pytest.raises(ValueError, match="pos.ids"):
        FIRE(2).bias(torch.randn(1, 2, 3, 2), torch.randn(1, 2, 3, 2), Positions.sequence(4), 1.0)
