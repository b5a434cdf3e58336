"""Attention: fused and slow paths against a naive softmax reference; masks; the bias is built once per forward."""
import math

import pytest
import torch

from zoo import Positions
from zoo.nn import Attention, Block
from zoo.nn.attention import KVCache
from zoo.pe import PositionalEncoding
from zoo.pe.alibi import ALiBi
from zoo.pe.rope import RoPE


@torch.no_grad()
def naive(attn: Attention, x, bias=None, key_valid=None, causal=False, value_fn=None):
    b, n, c = x.shape
    h, d = attn.num_heads, attn.head_dim
    qkv = x @ attn.qkv.weight.T + attn.qkv.bias
    q, k, v = qkv.view(b, n, 3, h, d).permute(2, 0, 3, 1, 4)
    out = torch.zeros(b, h, n, d)
    weights = torch.zeros(b, h, n, n)
    for bi in range(b):
        for hi in range(h):
            for i in range(n):
                logits = []
                for j in range(n):
                    s = float(q[bi, hi, i] @ k[bi, hi, j]) / math.sqrt(d)
                    if bias is not None:
                        s += float(bias[bi if bias.shape[0] > 1 else 0, hi if bias.shape[1] > 1 else 0, i, j])
                    if key_valid is not None and not key_valid[bi, j]:
                        s = -math.inf
                    if causal and j > i:
                        s = -math.inf
                    logits.append(s)
                w = torch.softmax(torch.tensor(logits), dim=0)
                weights[bi, hi, i] = w
                out[bi, hi, i] = w @ v[bi, hi]
    if value_fn is not None:
        out = out + value_fn(weights)
    out = out.transpose(1, 2).reshape(b, n, c)
    return out @ attn.proj.weight.T + attn.proj.bias


class FixedBias(PositionalEncoding):
    def __init__(self, bias):
        super().__init__()
        self.b = bias
        self.calls = 0

    def bias(self, q, k, pos, scale):
        self.calls += 1
        return self.b


class ValueTerm(PositionalEncoding):
    """Adds weights @ table (a toy encoding that needs the attention weights)."""

    def __init__(self, n, d):
        super().__init__()
        self.table = torch.randn(n, d)

    def value(self, attn, pos):
        return attn @ self.table


@pytest.fixture
def x():
    torch.manual_seed(0)
    return torch.randn(2, 5, 8)


def test_plain_matches_naive(x):
    a = Attention(8, 2).eval()
    torch.testing.assert_close(a(x), naive(a, x), atol=1e-5, rtol=1e-5)


def test_bias_goes_to_sdpa_once_per_forward(x):
    bias = torch.randn(1, 2, 5, 5)
    pe = FixedBias(bias)
    a = Attention(8, 2, pe=pe).eval()
    assert not pe.needs_weights and pe.has_bias
    torch.testing.assert_close(a(x), naive(a, x, bias=bias), atol=1e-5, rtol=1e-5)
    assert pe.calls == 1


def test_padding_and_causal_masks(x):
    a = Attention(8, 2).eval()
    valid = torch.tensor([[True] * 5, [True, True, True, False, False]])
    pos = Positions(mask=valid)
    torch.testing.assert_close(a(x, pos), naive(a, x, key_valid=valid), atol=1e-5, rtol=1e-5)
    ac = Attention(8, 2, causal=True).eval()
    torch.testing.assert_close(ac(x), naive(ac, x, causal=True), atol=1e-5, rtol=1e-5)
    # causal + padding + bias all summed into one mask
    bias = torch.randn(2, 1, 5, 5)
    ab = Attention(8, 2, pe=FixedBias(bias), causal=True).eval()
    torch.testing.assert_close(ab(x, Positions(mask=valid)), naive(ab, x, bias=bias, key_valid=valid, causal=True),
                               atol=1e-5, rtol=1e-5)


def test_slow_path_only_when_weights_needed(x, monkeypatch):
    pe = ValueTerm(5, 4)
    assert pe.needs_weights and not FixedBias(None).needs_weights
    a = Attention(8, 2, pe=pe).eval()
    calls = []
    orig = torch.nn.functional.scaled_dot_product_attention
    monkeypatch.setattr(torch.nn.functional, "scaled_dot_product_attention",
                        lambda *a_, **k_: calls.append(1) or orig(*a_, **k_))
    out = a(x)
    assert calls == []  # the slow path ran
    torch.testing.assert_close(out, naive(a, x, value_fn=lambda w: w @ pe.table), atol=1e-5, rtol=1e-5)
    Attention(8, 2).eval()(x)
    assert calls == [1]


def test_block_shapes_and_grad():
    blk = Block(16, 4, pe=FixedBias(torch.zeros(1, 4, 3, 3)))
    x = torch.randn(2, 3, 16, requires_grad=True)
    blk(x).sum().backward()
    assert x.grad is not None and torch.isfinite(x.grad).all()
    assert {"norm1.weight", "attn.qkv.weight", "attn.proj.weight", "mlp.fc1.weight", "mlp.fc2.weight"} <= \
        set(blk.state_dict())


def test_dim_not_divisible():
    with pytest.raises(ValueError, match="not divisible"):
        Attention(10, 3)


def test_positions_grid_checks():
    p = Positions.grid_2d(3, 4, num_prefix=1)
    assert p.grid.shape == (12, 2) and p.grid[5].tolist() == [1, 1]
    with pytest.raises(ValueError, match=r"3x4.*13 tokens.*14 tokens"):
        p.check_tokens(14)
    with pytest.raises(ValueError, match="needs Positions.boxes"):
        p.require("boxes", by="LayoutLM")


# ---- KV cache -----------------------------------------------------------------------------------------------------

def _cached(module, x, pos_all, chunks):
    """Run ``module`` over ``x`` chunk by chunk with a KV cache; ``pos_all(m)`` gives Positions of the first m."""
    cache, outs, start = KVCache(), [], 0
    for c in chunks:
        outs.append(module(x[:, start:start + c], pos_all(start + c), cache))
        start += c
    assert cache.length == x.shape[1]
    return torch.cat(outs, dim=1)


@pytest.mark.parametrize("pe_kind", ["none", "rope", "alibi", "alibi_ids"])
def test_kv_cache_matches_full_forward(pe_kind):
    torch.manual_seed(0)
    pe = {"none": None, "rope": RoPE(4), "alibi": ALiBi(2, causal=True), "alibi_ids": ALiBi(2, causal=True)}[pe_kind]
    a = Attention(8, 2, pe=pe, causal=True).eval()
    x = torch.randn(2, 7, 8)
    ids = torch.tensor([[0, 1, 2, 4, 5, 9, 10], [3, 4, 5, 6, 7, 8, 9]])     # gaps: positions are data
    pos_all = (lambda m: Positions(ids=ids[:, :m])) if pe_kind in ("rope", "alibi_ids") else (lambda m: None)
    with torch.no_grad():
        full = a(x, pos_all(7))
        torch.testing.assert_close(_cached(a, x, pos_all, [3, 1, 2, 1]), full, atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(_cached(a, x, pos_all, [7]), full, atol=1e-6, rtol=1e-6)


def test_kv_cache_with_padding_mask_and_block():
    torch.manual_seed(1)
    blk = Block(8, 2, pe=RoPE(4), causal=True).eval()
    x = torch.randn(2, 6, 8)
    valid = torch.tensor([[False, False, True, True, True, True], [True] * 6])   # left padding in row 0
    ids = torch.tensor([[0, 0, 0, 1, 2, 3], [0, 1, 2, 3, 4, 5]])
    pos_all = lambda m: Positions(ids=ids[:, :m], mask=valid[:, :m])              # noqa: E731
    with torch.no_grad():
        full = blk(x, pos_all(6))
        torch.testing.assert_close(_cached(blk, x, pos_all, [4, 1, 1])[:, 2:], full[:, 2:], atol=1e-5, rtol=1e-5)


def test_kv_cache_keeps_the_fast_path(monkeypatch):
    calls = []
    orig = torch.nn.functional.scaled_dot_product_attention

    def spy(q, k, v, attn_mask=None, dropout_p=0.0, is_causal=False, **kw):
        calls.append((q.shape[-2], k.shape[-2], attn_mask is None, is_causal))
        return orig(q, k, v, attn_mask=attn_mask, dropout_p=dropout_p, is_causal=is_causal, **kw)

    monkeypatch.setattr(torch.nn.functional, "scaled_dot_product_attention", spy)
    a = Attention(8, 2, pe=RoPE(4), causal=True).eval()
    x = torch.randn(1, 4, 8)
    a(x)
    assert calls == [(4, 4, True, True)]                                    # no cache: fused causal, no mask
    cache = KVCache()
    a(x[:, :3], None, cache)
    a(x[:, 3:], None, cache)
    assert calls[1:] == [(3, 3, True, True), (1, 4, True, False)]           # one new query sees every key


def test_kv_cache_errors():
    a = Attention(8, 2, pe=RoPE(4), causal=True)
    cache = KVCache()
    a(torch.randn(1, 3, 8), Positions(ids=torch.arange(3)), cache)
    with pytest.raises(ValueError, match=r"pos describes 1 tokens.*4 keys \(3 cached \+ 1 new\)"):
        a(torch.randn(1, 1, 8), Positions(ids=torch.arange(1)), cache)
    with pytest.raises(ValueError, match="batch, heads and head dim must match"):
        a(torch.randn(2, 1, 8), None, cache)
    assert repr(cache) == "KVCache(length=3, k=(1, 2, 3, 4))"
    cache.reset()
    assert len(cache) == 0


def test_positions_tail_and_num_tokens():
    p = Positions(ids=torch.arange(6).expand(2, 6), levels=torch.arange(30).view(1, 6, 5).expand(2, 6, 5),
                  segments=torch.tensor([0, 0, 1, 1, 2, 2]), mask=torch.ones(2, 6, dtype=torch.bool), causal=True)
    assert p.num_tokens == 6 and Positions().num_tokens is None
    t = p.tail(2)
    assert t.ids.tolist() == [[4, 5]] * 2 and t.segments.tolist() == [2, 2] and t.causal
    assert t.levels.shape == (2, 2, 5) and t.levels[0, 0].tolist() == [20, 21, 22, 23, 24]
    assert t.mask.shape == (2, 2) and t.num_tokens == 2
    assert p.tail(0).num_tokens == 0
    with pytest.raises(ValueError, match="describes only 6 tokens"):
        p.tail(7)
    with pytest.raises(ValueError, match="grid positions"):
        Positions.grid_2d(2, 2).tail(1)


def test_keys_and_values_from_other_inputs_match_multihead_attention():
    # reference: torch's nn.MultiheadAttention, whose in_proj_weight has the fused qkv's row order (q | k | v)
    torch.manual_seed(0)
    c, h = 16, 4
    attn = Attention(c, h).eval()
    mha = torch.nn.MultiheadAttention(c, h, batch_first=True).eval()
    with torch.no_grad():
        mha.in_proj_weight.copy_(attn.qkv.weight)
        mha.in_proj_bias.copy_(attn.qkv.bias)
        mha.out_proj.weight.copy_(attn.proj.weight)
        mha.out_proj.bias.copy_(attn.proj.bias)
    query, key, value = torch.randn(2, 5, c), torch.randn(2, 7, c), torch.randn(2, 7, c)
    keep = torch.ones(2, 7, dtype=torch.bool)
    keep[1, -3:] = False
    with torch.no_grad():
        ours = attn(query, Positions(mask=keep), key=key, value=value)
        ref = mha(query, key, value, key_padding_mask=~keep, need_weights=False)[0]
        torch.testing.assert_close(ours, ref, rtol=1e-5, atol=1e-5)
        # value defaults to key; key and value given as x equal the fused projection
        torch.testing.assert_close(attn(query, key=key), mha(query, key, key, need_weights=False)[0],
                                   rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(attn(query, key=query, value=query), attn(query), rtol=1e-5, atol=1e-5)
    with pytest.raises(ValueError, match="key and value must be"):
        attn(query, key=key, value=value[:, :3])
    with pytest.raises(ValueError, match="cannot be used with a KV cache or a causal"):
        Attention(c, h, causal=True)(query, key=key)


def test_separate_query_positions_rotate_queries_and_keys_apart():
    # RoPE scores depend on query position - key position only: shifting both by the same offset changes nothing,
    # shifting the queries alone does; query_pos equal to the key positions is ordinary self-attention
    torch.manual_seed(0)
    c, h = 16, 2
    attn = Attention(c, h, pe=RoPE(c // h)).eval()
    query, key = torch.randn(1, 4, c), torch.randn(1, 6, c)
    qp, kp = torch.tensor([3, 7, 8, 20]), torch.arange(6)
    with torch.no_grad():
        a = attn(query, Positions(ids=kp), key=key, query_pos=Positions(ids=qp))
        b = attn(query, Positions(ids=kp + 11), key=key, query_pos=Positions(ids=qp + 11))
        shifted = attn(query, Positions(ids=kp), key=key, query_pos=Positions(ids=qp + 1))
        x = torch.randn(1, 6, c)
        self_attn = attn(x, Positions(ids=kp), query_pos=Positions(ids=kp))
    torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)
    assert not torch.allclose(a, shifted, atol=1e-4)
    torch.testing.assert_close(self_attn, attn(x, Positions(ids=kp)), rtol=1e-5, atol=1e-5)
    with pytest.raises(ValueError, match="query_pos: ALiBi adds a bias"):
        Attention(c, h, pe=ALiBi(h))(query, Positions(ids=kp), key=key, query_pos=Positions(ids=qp))
