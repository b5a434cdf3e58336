"""CoPE (Golovneva et al., 2024) against a naive loop of the paper's appendix code semantics."""
import math

import pytest
import torch

from zoo import Positions
from zoo.nn import Attention, KVCache
from zoo.pe.cope import CoPE, cope_interpolate, cope_positions


def naive_cope_logits(q, k, pos_emb, npos_max, keep=None):
    """Appendix semantics, one scalar at a time: gates g_it = sigmoid(q_i.k_t / sqrt(d)) for unmasked t <= i,
    p_ij = sum_{t=j..i} g_it clamped to npos_max - 1, e_ij = lerp of z_i = q_i @ pos_emb at floor/ceil of p_ij.
    Returns the logits q.k/sqrt(d) + e (masked entries -inf).  q [b, h, nq, d], k [b, h, nk, d]."""
    b, h, nq, d = q.shape
    nk = k.shape[-2]
    out = torch.full((b, h, nq, nk), float("-inf"), dtype=torch.float64)
    E = pos_emb.double()[0]                                                      # [d, npos]
    for bb in range(b):
        for hh in range(h):
            for qi in range(nq):
                i = qi + nk - nq
                ok = [t <= i and (keep is None or bool(keep[bb, t])) for t in range(nk)]
                s = [float(q[bb, hh, qi] @ k[bb, hh, t]) / math.sqrt(d) for t in range(nk)]
                g = [1 / (1 + math.exp(-s[t])) if ok[t] else 0.0 for t in range(nk)]
                z = q[bb, hh, qi].double() @ E                                  # [npos]
                for j in range(nk):
                    if not ok[j]:
                        continue
                    p = min(sum(g[j:i + 1]), npos_max - 1)
                    lo, hi = math.floor(p), math.ceil(p)
                    out[bb, hh, qi, j] = s[j] + z[hi] * (p - lo) + z[lo] * (1 - (p - lo))
    return out


def test_pinned_small_example():
    # d = 1, q = 2, keys 0, 0, ln(3)/2: q.k = 0, 0, ln 3 -> gates 0.5, 0.5, 0.75 (sigmoid(ln 3) = 3/4)
    q = torch.tensor([[[[2.0]]]])
    k = torch.tensor([[[[0.0], [0.0], [math.log(3.0) / 2]]]])
    logits = (q @ k.transpose(-2, -1))                                         # scale 1 (d = 1)
    p = cope_positions(logits, npos_max=16)
    torch.testing.assert_close(p[0, 0, 0], torch.tensor([1.75, 1.25, 0.75]))
    torch.testing.assert_close(cope_positions(logits, npos_max=2)[0, 0, 0], torch.tensor([1.0, 1.0, 0.75]))
    z = torch.tensor([[10.0, 20.0, 40.0]])
    got = cope_interpolate(z, torch.tensor([[1.75, 1.25, 0.75, 2.0]]))
    torch.testing.assert_close(got, torch.tensor([[35.0, 25.0, 17.5, 40.0]]))


def test_attention_matches_naive_loop_with_padding_and_cache():
    torch.manual_seed(0)
    b, n, h, d, npos = 2, 7, 2, 4, 4
    pe = CoPE(d, npos_max=npos)
    with torch.no_grad():
        pe.pos_emb.normal_()
    attn = Attention(h * d, h, pe=pe, causal=True).double().eval()
    x = torch.randn(b, n, h * d, dtype=torch.float64)
    mask = torch.tensor([[True] * 7, [False, False, True, True, True, True, True]])   # left padding in row 1
    for pos in (None, Positions(mask=mask)):
        with torch.no_grad():
            got = attn(x, pos)
            q, k, v = (x @ attn.qkv.weight.T + attn.qkv.bias).reshape(b, n, 3, h, d).permute(2, 0, 3, 1, 4)
            logits = naive_cope_logits(q, k, pe.pos_emb, npos, None if pos is None else mask)
            w = logits.softmax(-1).nan_to_num(0.0)
            want = (w @ v).transpose(1, 2).reshape(b, n, h * d) @ attn.proj.weight.T + attn.proj.bias
        rows = slice(None) if pos is None else slice(2, None)                  # fully padded query rows differ
        torch.testing.assert_close(got[1, rows], want[1, rows], atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(got[0], want[0], atol=1e-5, rtol=1e-5)
    # KV cache: queries = the last nq keys
    with torch.no_grad():
        full = attn(x)
        cache = KVCache()
        parts = [attn(x[:, :3], None, cache)] + [attn(x[:, t:t + 1], None, cache) for t in range(3, n)]
    torch.testing.assert_close(torch.cat(parts, 1), full, atol=1e-6, rtol=1e-6)


def test_bias_is_the_naive_extra_term_and_ids_are_ignored():
    torch.manual_seed(1)
    pe = CoPE(8, npos_max=5)
    with torch.no_grad():
        pe.pos_emb.normal_()
    q, k = torch.randn(1, 3, 4, 8), torch.randn(1, 3, 9, 8)
    got = pe.bias(q, k, None, 8 ** -0.5)
    want = naive_cope_logits(q, k, pe.pos_emb, 5) - (q.double() @ k.double().transpose(-2, -1)) / math.sqrt(8)
    keep = torch.ones(4, 9, dtype=torch.bool).tril(5)
    torch.testing.assert_close(got[..., keep].double(), want[..., keep], atol=1e-5, rtol=1e-5)
    # contextual positions: shifting (or scrambling) pos.ids changes nothing
    for ids in (torch.arange(9) + 100, torch.tensor([0, 5, 6, 7, 30, 31, 32, 33, 90])):
        torch.testing.assert_close(pe.bias(q, k, Positions(ids=ids[None]), 8 ** -0.5), got)


def test_zero_init_gradient_and_bf16():
    pe = CoPE(4)
    attn = Attention(8, 2, pe=pe, causal=True)
    x = torch.randn(2, 5, 8)
    ref = Attention(8, 2, causal=True)
    ref.load_state_dict({k: v for k, v in attn.state_dict().items() if not k.startswith("pe.")})
    torch.testing.assert_close(attn(x), ref(x), atol=1e-6, rtol=1e-5)          # zero pos_emb: plain attention
    attn(x).sum().backward()
    assert pe.pos_emb.grad.abs().sum() > 0
    q = torch.randn(1, 2, 3, 4, dtype=torch.bfloat16)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert pe.bias(q, q, None, 0.5).dtype == torch.float32


def test_cope_bad_input():
    with pytest.raises(ValueError, match="head_dim"):
        CoPE(0)
    with pytest.raises(ValueError, match="npos_max"):
        CoPE(4, npos_max=0)
    with pytest.raises(ValueError, match="head dim"):
        CoPE(4).bias(torch.randn(1, 2, 3, 5), torch.randn(1, 2, 3, 5), None, 1.0)
    with pytest.raises(ValueError, match="nq"):
        CoPE(4).bias(torch.randn(1, 2, 5, 4), torch.randn(1, 2, 3, 4), None, 1.0)
    with pytest.raises(ValueError, match="pos.mask"):
        CoPE(4).bias(torch.randn(1, 2, 3, 4), torch.randn(1, 2, 3, 4), Positions(mask=torch.ones(1, 4, dtype=bool)),
                     1.0)
