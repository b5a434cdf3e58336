"""Shaw et al. (2018) relative position representations against a naive O(n^2 d) loop of eqs. (3)-(4)."""
import math

import pytest
import torch

from zoo import Positions
from zoo.nn import Attention, KVCache
from zoo.pe.shaw import ShawRPE, ShawRPEWithValues, shaw_relative_index


def naive_shaw(q, k, v, pq, pk, a_k, a_v, kmax, causal=False):
    """Eqs. (3)-(4) literally: e_ij = q_i.(k_j + a^K_ij)/sqrt(d), z_i = sum_j w_ij (v_j + a^V_ij).
    q [b, h, nq, d], k/v [b, h, nk, d], pq [b, nq], pk [b, nk]."""
    b, h, nq, d = q.shape
    nk = k.shape[-2]
    out = torch.zeros(b, h, nq, d, dtype=torch.float64)
    for bb in range(b):
        for hh in range(h):
            for i in range(nq):
                e = torch.full((nk,), float("-inf"), dtype=torch.float64)
                for j in range(nk):
                    if causal and pk[bb, j] > pq[bb, i]:
                        continue
                    r = int(min(max(int(pk[bb, j] - pq[bb, i]), -kmax), kmax)) + kmax
                    e[j] = (q[bb, hh, i] @ (k[bb, hh, j] + a_k[r])) / math.sqrt(d)
                w = e.softmax(-1)
                for j in range(nk):
                    r = int(min(max(int(pk[bb, j] - pq[bb, i]), -kmax), kmax)) + kmax
                    out[bb, hh, i] += w[j] * (v[bb, hh, j] + (a_v[r] if a_v is not None else 0))
    return out


def test_index_pinned():
    rel = torch.tensor([-9, -3, -2, 0, 2, 3, 50, 1.6])
    assert shaw_relative_index(rel.long(), 2).tolist() == [0, 0, 0, 2, 4, 4, 4, 3]
    assert shaw_relative_index(rel, 3).tolist() == [0, 0, 1, 3, 5, 6, 6, 5]     # 1.6 rounds to 2


@pytest.mark.parametrize("values", [True, False])
@pytest.mark.parametrize("causal", [False, True])
def test_attention_matches_naive_loop(values, causal):
    torch.manual_seed(0)
    b, n, h, d, kmax = 2, 7, 2, 4, 2
    pe = ShawRPE(d, max_relative_position=kmax, values=values, init_std=0.5)
    assert isinstance(pe, ShawRPEWithValues) == values and pe.needs_weights == values
    attn = Attention(h * d, h, pe=pe, causal=causal).double().eval()
    x = torch.randn(b, n, h * d, dtype=torch.float64)
    ids = torch.tensor([[0, 1, 2, 3, 4, 5, 6], [2, 3, 7, 8, 9, 15, 16]])
    for pos in (None, Positions(ids=ids)):
        with torch.no_grad():
            got = attn(x, pos)
            q, k, v = (x @ attn.qkv.weight.T + attn.qkv.bias).reshape(b, n, 3, h, d).permute(2, 0, 3, 1, 4)
            p = torch.arange(n).expand(b, n) if pos is None else ids
            z = naive_shaw(q, k, v, p, p, pe.relative_keys.double(),
                           pe.relative_values.double() if values else None, kmax, causal)
            want = z.transpose(1, 2).reshape(b, n, h * d) @ attn.proj.weight.T + attn.proj.bias
        # the tables are applied in float32 (our bias math), the rest runs in float64
        torch.testing.assert_close(got, want, atol=1e-6, rtol=1e-5)


def test_kv_cache_queries_are_last_keys():
    torch.manual_seed(1)
    pe = ShawRPE(4, max_relative_position=3, init_std=0.5)
    b, h, nq, nk = 1, 2, 3, 8
    q, k, v = torch.randn(b, h, nq, 4), torch.randn(b, h, nk, 4), torch.randn(b, h, nk, 4)
    ids = torch.tensor([[0, 2, 3, 5, 9, 10, 11, 13]])
    bias = pe.bias(q, k, Positions(ids=ids), 0.5)
    attn = (q @ k.transpose(-2, -1) * 0.5 + bias).softmax(-1)
    got = attn @ v + pe.value(attn, Positions(ids=ids))
    # the loop divides by sqrt(d) = 2; our scale is 0.5 = 1/2 too
    want = naive_shaw(q.double(), k.double(), v.double(), ids[:, nk - nq:], ids,
                      pe.relative_keys.double(), pe.relative_values.double(), 3)
    torch.testing.assert_close(got.double(), want, atol=1e-5, rtol=1e-4)
    # cached decoding equals the full causal pass
    attn_mod = Attention(8, 2, pe=pe, causal=True).eval()
    x = torch.randn(1, 6, 8)
    with torch.no_grad():
        full = attn_mod(x)
        cache = KVCache()
        steps = [attn_mod(x[:, :4], None, cache), attn_mod(x[:, 4:5], None, cache), attn_mod(x[:, 5:], None, cache)]
    torch.testing.assert_close(torch.cat(steps, 1), full, atol=1e-5, rtol=1e-4)


def test_shift_invariance():
    torch.manual_seed(2)
    pe = ShawRPE(4, max_relative_position=2, init_std=1.0)
    q, k = torch.randn(2, 3, 5, 4), torch.randn(2, 3, 5, 4)
    attn = torch.rand(2, 3, 5, 5).softmax(-1)
    for ids in (torch.arange(5).expand(2, 5), torch.tensor([[0, 4, 5, 6, 20], [1, 2, 3, 4, 5]])):
        p0, p1 = Positions(ids=ids), Positions(ids=ids + 123)
        torch.testing.assert_close(pe.bias(q, k, p1, 0.5), pe.bias(q, k, p0, 0.5), atol=0, rtol=0)
        torch.testing.assert_close(pe.value(attn, p1), pe.value(attn, p0), atol=0, rtol=0)
    torch.testing.assert_close(pe.bias(q, k, None, 0.5), pe.bias(q, k, Positions.sequence(5, 2, offset=9), 0.5))


def test_gradients_reach_tables_and_bf16():
    pe = ShawRPE(4, max_relative_position=2)
    attn = Attention(8, 2, pe=pe)
    attn(torch.randn(2, 5, 8)).sum().backward()
    assert pe.relative_keys.grad.abs().sum() > 0 and pe.relative_values.grad.abs().sum() > 0
    q = torch.randn(1, 2, 3, 4, dtype=torch.bfloat16)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert pe.bias(q, q, None, 0.5).dtype == torch.float32


def test_shaw_bad_input():
    with pytest.raises(ValueError, match="head_dim"):
        ShawRPE(0)
    with pytest.raises(ValueError, match="max_relative_position"):
        ShawRPE(4, max_relative_position=-1)
    with pytest.raises(ValueError, match="head dim"):
        ShawRPE(4).bias(torch.randn(1, 2, 3, 5), torch.randn(1, 2, 3, 5), None, 1.0)
    with pytest.raises(ValueError, match="values"):
        ShawRPEWithValues(4, values=False)
    with pytest.raises(ValueError, match="pos.ids"):
        ShawRPE(4).bias(torch.randn(1, 2, 3, 4), torch.randn(1, 2, 3, 4), Positions.sequence(2), 1.0)
