"""KERPLE log / power kernels (Chi et al., 2022): pinned values from the paper formula, causal (official tril) and
symmetric forms, shift invariance, KV cache, clamping with autograd."""
import math

import pytest
import torch

from zoo import Positions
from zoo.nn import Attention, KVCache
from zoo.pe.kerple import KerpleLog, KerplePower, kerple_log_bias, kerple_power_bias


def _set(pe, p, a):
    with torch.no_grad():
        pe.bias_p.copy_(torch.tensor(p)[:, None, None])
        pe.bias_a.copy_(torch.tensor(a)[:, None, None])


def formula(kind, p, a, dist):
    return -p * math.log(1 + a * dist) if kind == "log" else -a * dist ** p


@pytest.mark.parametrize("cls,kind", [(KerpleLog, "log"), (KerplePower, "power")])
@pytest.mark.parametrize("causal", [True, False])
def test_pinned_against_formula(cls, kind, causal):
    pe = cls(3, causal=causal)
    p, a = [0.5, 1.3, 1.9], [0.2, 1.0, 0.05]
    _set(pe, p, a)
    nq, nk = 4, 9                                                              # KV cache: queries = last 4 keys
    got = pe.bias(torch.randn(1, 3, nq, 2), torch.randn(1, 3, nk, 2), None, 1.0)
    assert got.shape == (1, 3, nq, nk) and got.dtype == torch.float32
    for h in range(3):
        for qi in range(nq):
            i = qi + nk - nq
            for j in range(nk):
                dist = (i - j if j <= i else 0) if causal else abs(i - j)    # official: tril(i - j)
                assert got[0, h, qi, j].item() == pytest.approx(formula(kind, p[h], a[h], dist), rel=1e-5, abs=1e-6)
    # REFERENCES pinned example: log kernel, p=1.3, a=1.0, distance 3 -> -1.3 ln 4
    if kind == "log":
        assert got[0, 1, 3, 5].item() == pytest.approx(-1.3 * math.log(4.0), rel=1e-6)


@pytest.mark.parametrize("cls", [KerpleLog, KerplePower])
def test_clamp_forward_and_gradient(cls):
    pe = cls(2)
    _set(pe, [-0.5, 3.0], [-1.0, 0.3])                                         # out of range on purpose
    p_eff, a_eff = pe.effective_params()
    want_p = [0.01, 2.0 if cls is KerplePower else 3.0]
    torch.testing.assert_close(p_eff.flatten(), torch.tensor(want_p))
    torch.testing.assert_close(a_eff.flatten(), torch.tensor([0.01, 0.3]))
    assert pe.bias_p[0].item() == -0.5                                         # the parameter is not mutated
    out = pe.bias(torch.randn(1, 2, 5, 2), torch.randn(1, 2, 5, 2), None, 1.0)
    out.sum().backward()
    # straight-through: a clamped parameter still gets the gradient at its clamped value (nonzero, finite)
    assert torch.isfinite(pe.bias_p.grad).all() and torch.isfinite(pe.bias_a.grad).all()
    assert (pe.bias_p.grad != 0).all() and (pe.bias_a.grad != 0).all()
    # gradient equals the formula's derivative at the clamped values (log: d/da = -p * d / (1 + a d))
    if cls is KerpleLog:
        dist = torch.tensor([[max(i - j, 0) for j in range(5)] for i in range(5)], dtype=torch.float32)
        want_ga0 = (-0.01 * dist / (1 + 0.01 * dist)).sum()
        torch.testing.assert_close(pe.bias_a.grad[0, 0, 0], want_ga0)
    pe.project_()
    torch.testing.assert_close(pe.bias_p.detach(), p_eff.detach())
    torch.testing.assert_close(pe.bias_a.detach(), a_eff.detach())


@pytest.mark.parametrize("cls", [KerpleLog, KerplePower])
@pytest.mark.parametrize("causal", [True, False])
def test_shift_invariance_and_ids(cls, causal):
    pe = cls(4, causal=causal)
    q, k = torch.randn(2, 4, 6, 3), torch.randn(2, 4, 6, 3)
    plain = pe.bias(q, k, None, 0.5)
    torch.testing.assert_close(pe.bias(q, k, Positions.sequence(6, batch=2, offset=500), 0.5), plain)
    ids = torch.tensor([[0.0, 1.0, 5.0, 6.5, 9.0, 30.0], [3, 4, 5, 6, 7, 8]])
    got = pe.bias(q, k, Positions(ids=ids), 0.5)
    assert got.shape == (2, 4, 6, 6)
    torch.testing.assert_close(pe.bias(q, k, Positions(ids=ids + 17), 0.5), got)
    torch.testing.assert_close(got[1:], plain)
    p, a = pe.effective_params()
    want = formula(pe.kernel, p[2].item(), a[2].item(), 30.0 - 6.5)
    assert got[0, 2, 5, 3].item() == pytest.approx(want, rel=1e-5)
    if causal:
        assert (got[0][:, torch.ones(6, 6, dtype=torch.bool).triu(1)] == 0).all()
    else:
        torch.testing.assert_close(got, got.transpose(-2, -1))


def test_functions_and_attention_cache():
    d = torch.tensor([0.0, 1.0, 4.0])
    torch.testing.assert_close(kerple_log_bias(d, torch.tensor(2.0), torch.tensor(0.5)),
                               torch.tensor([0.0, -2 * math.log(1.5), -2 * math.log(3.0)]))
    torch.testing.assert_close(kerple_power_bias(d, torch.tensor(0.5), torch.tensor(3.0)),
                               torch.tensor([0.0, -3.0, -6.0]))
    torch.manual_seed(0)
    attn = Attention(16, 4, pe=KerpleLog(4), causal=True).eval()
    x = torch.randn(1, 7, 16)
    with torch.no_grad():
        full = attn(x)
        cache = KVCache()
        parts = [attn(x[:, :3], None, cache)] + [attn(x[:, t:t + 1], None, cache) for t in range(3, 7)]
    torch.testing.assert_close(torch.cat(parts, 1), full, atol=1e-5, rtol=1e-4)
    q = torch.randn(1, 4, 3, 4, dtype=torch.bfloat16)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert KerplePower(4).bfloat16().bias(q, q, None, 0.5).dtype == torch.float32


def test_kerple_bad_input():
    with pytest.raises(ValueError, match="num_heads"):
        KerpleLog(0)
    with pytest.raises(ValueError, match="eps"):
        KerplePower(2, eps=0)
    with pytest.raises(ValueError, match="num_heads"):
        KerpleLog(3).bias(torch.randn(1, 2, 3, 2), torch.randn(1, 2, 3, 2), None, 1.0)
    with pytest.raises(ValueError, match="pos.ids"):
        KerpleLog(2).bias(torch.randn(1, 2, 3, 2), torch.randn(1, 2, 3, 2), Positions.sequence(5), 1.0)
