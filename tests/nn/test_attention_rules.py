"""Masks (window, sinks, block-causal, per document) and logit temperature inside `zoo.nn.Attention`: every path
(SDPA, needs-weights, chunked rows, KV-cache decoding) equals a dense reference written from the rules' definitions
with Python loops over (i, j), values and gradients."""
import math

import pytest
import torch

from zoo import Positions
from zoo.errors import ConfigError
from zoo.nn import Attention
from zoo.nn.attention import KVCache
from zoo.nn.masks import AttentionMask
from zoo.nn.temperature import ConstantTemperature, HeadTemperature, LogLengthScale
from zoo.pe import build

C, H = 32, 4
D = C // H
N = 13


def allowed_loops(n, causal=False, window=None, sinks=0, block=None, docs=None):
    """[b|1, n, n] booleans from the rules' definitions (masks.py docstring), one (i, j) at a time."""
    b = 1 if docs is None else len(docs)
    out = torch.zeros(b, n, n, dtype=torch.bool)
    for r in range(b):
        for i in range(n):
            for j in range(n):
                ok = True
                if causal and j > i:
                    ok = False
                if window is not None:
                    near = (0 <= i - j < window) if causal else abs(i - j) < window
                    if not (near or j < sinks):
                        ok = False
                if block is not None and j // block > i // block:
                    ok = False
                if docs is not None and docs[r][i] != docs[r][j]:
                    ok = False
                out[r, i, j] = ok
    return out


def reference(attn, x, pos, allowed, mult=None):
    """softmax((m q) k^T * scale + bias, -inf where not allowed or padded) @ v, then proj; plain tensor algebra."""
    b, n, _ = x.shape
    q, k, v = attn.qkv(x).reshape(b, n, 3, H, D).permute(2, 0, 3, 1, 4)
    bias = None
    if attn.pe is not None:
        q, k = attn.pe.rotate(q, k, pos)
        bias = attn.pe.bias(q, k, pos, attn.scale) if attn.pe.has_bias else None
    if mult is not None:
        q = q * mult
    logits = (q @ k.transpose(-2, -1)) * attn.scale
    if bias is not None:
        logits = logits + bias
    keep = allowed[:, None]                                                     # [b|1, 1, n, n]
    if pos is not None and pos.mask is not None:
        keep = keep & pos.mask[:, None, None, :]
    logits = logits.masked_fill(~keep, float("-inf"))
    weights = logits.softmax(-1)
    out = weights @ v
    if attn.pe is not None and attn.pe.needs_weights:                          # Shaw's value term
        out = out + attn.pe.value(weights, pos)
    return attn.proj(out.transpose(1, 2).reshape(b, n, C))


def make(pe_name=None, causal=True, **kw):
    torch.manual_seed(0)
    pe = None if pe_name is None else build(pe_name, dim=C, head_dim=D, num_heads=H, causal=causal, max_len=64)
    return Attention(C, H, pe=pe, causal=causal, **kw)


RULES = {
    "window": dict(window=4),
    "window_sinks": dict(window=3, sinks=2),
    "docs": dict(docs=True),
    "docs_window": dict(window=3, docs=True),
}
DOCS = [[0, 0, 0, 0, 1, 1, 1, 2, 2, 2, 2, 2, 2], [0, 0, 1, 1, 1, 1, 1, 1, 1, 3, 3, 3, 3]]


def setup(rule, causal):
    kw = dict(RULES[rule])
    docs = kw.pop("docs", False)
    mask = AttentionMask(**kw) if kw else None
    pos = Positions.packed(torch.tensor(DOCS), causal=False) if docs else \
        Positions(ids=torch.arange(N).expand(2, N))
    allowed = allowed_loops(N, causal=causal, docs=DOCS if docs else None, **kw)
    return mask, pos, allowed


@pytest.mark.parametrize("pe_name", [None, "rope", "alibi", "kerple_log", "t5", "shaw"])
@pytest.mark.parametrize("rule", sorted(RULES))
@pytest.mark.parametrize("causal", [True, False])
def test_every_path_equals_the_dense_reference(pe_name, rule, causal, one_thread):
    mask, pos, allowed = setup(rule, causal)
    attn = make(pe_name, causal=causal, mask=mask)
    x = torch.randn(2, N, C, requires_grad=True)
    want = reference(attn, x, pos, allowed)
    ref_grads = torch.autograd.grad(want.square().sum(), [x] + [p for p in attn.parameters()])
    for chunk in (0, 4):                                                        # dense, chunked rows
        attn.chunk_size = chunk
        got = attn(x, pos)
        torch.testing.assert_close(got, want, atol=2e-6, rtol=1e-5)
        grads = torch.autograd.grad(got.square().sum(), [x] + [p for p in attn.parameters()])
        for g, r in zip(grads, ref_grads):
            torch.testing.assert_close(g, r, atol=1e-5, rtol=1e-4)


@pytest.mark.parametrize("pe_name", [None, "rope", "alibi", "fire"])
@pytest.mark.parametrize("rule", sorted(RULES))
def test_kv_cache_decoding_equals_the_full_forward(pe_name, rule, one_thread):
    mask, pos, allowed = setup(rule, True)
    attn = make(pe_name, causal=True, mask=mask).eval()
    x = torch.randn(2, N, C)
    with torch.no_grad():
        full = attn(x, pos)
        cache, outs, start = KVCache(), [], 0
        for step in (5, 1, 1, 3, 1, 2):                                         # prompt, then mixed steps
            end = start + step
            p = Positions(ids=pos.ids[:, :end], doc_ids=None if pos.doc_ids is None else pos.doc_ids[:, :end])
            outs.append(attn(x[:, start:end], p, cache))
            start = end
    torch.testing.assert_close(torch.cat(outs, 1), full, atol=2e-6, rtol=1e-5)
    torch.testing.assert_close(full, reference(attn, x, pos, allowed), atol=2e-6, rtol=1e-5)


def test_block_causal_encoder_and_padding(one_thread):
    attn = make("alibi", causal=False, mask=AttentionMask(block=3))
    x = torch.randn(2, N, C)
    pad = torch.ones(2, N, dtype=torch.bool)
    pad[1, -4:] = False
    pos = Positions(ids=torch.arange(N).expand(2, N), mask=pad)
    want = reference(attn, x, pos, allowed_loops(N, block=3))
    for chunk in (0, 5):
        attn.chunk_size = chunk
        torch.testing.assert_close(attn(x, pos)[0], want[0], atol=2e-6, rtol=1e-5)
        # padded rows see the block's real keys only; compare the real rows
        torch.testing.assert_close(attn(x, pos)[1, :-4], want[1, :-4], atol=2e-6, rtol=1e-5)


def test_needs_weights_path_takes_the_rule(one_thread):
    # an encoding with a value hook reads the attention weights: the unfused path must apply the same mask
    attn = make(None, causal=True, mask=AttentionMask(window=3, sinks=1))
    attn.pe = build("cope", dim=C, head_dim=D, num_heads=H, causal=True, max_len=64)
    assert attn.pe.needs_weights or attn.pe.has_bias
    x = torch.randn(1, N, C)
    pos = Positions(ids=torch.arange(N)[None])
    torch.testing.assert_close(attn(x, pos), reference(attn, x, pos, allowed_loops(N, True, 3, 1)),
                               atol=2e-6, rtol=1e-5)


TEMPS = {
    "constant": lambda: (ConstantTemperature(0.5), lambda i, layer: torch.full((1, 1, len(i), 1), 2.0)),
    "log_length": lambda: (LogLengthScale(4), lambda i, layer: torch.tensor(
        [max(1.0, math.log(t + 1) / math.log(4)) for t in i.tolist()]).view(1, 1, -1, 1)),
    "log_length_skipped": lambda: (LogLengthScale(4, skip_layers=2), lambda i, layer: torch.ones(1, 1, 1, 1)),
    "head": lambda: (HeadTemperature(H, init=1.0), None),
}


@pytest.mark.parametrize("name", sorted(TEMPS))
@pytest.mark.parametrize("pe_name", [None, "rope", "alibi"])
def test_temperature_scales_the_content_term_on_every_path(name, pe_name, one_thread):
    temp, formula = TEMPS[name]()
    if name == "head":
        with torch.no_grad():
            temp.scale.copy_(torch.tensor([0.5, 1.0, 1.5, 3.0]))
        formula = lambda i, layer: torch.tensor([0.5, 1.0, 1.5, 3.0]).view(1, H, 1, 1)
    attn = make(pe_name, causal=True, temperature=temp, layer_idx=1)
    x = torch.randn(2, N, C, requires_grad=True)
    pos = Positions(ids=torch.arange(N).expand(2, N))
    mult = formula(torch.arange(N), 1)
    want = reference(attn, x, pos, allowed_loops(N, causal=True), mult=mult)
    for chunk in (0, 4):
        attn.chunk_size = chunk
        got = attn(x, pos)
        torch.testing.assert_close(got, want, atol=2e-6, rtol=1e-5)
    if name == "head":                                                          # the per-head scale learns
        (g,) = torch.autograd.grad(attn(x, pos).square().sum(), [temp.scale])
        (r,) = torch.autograd.grad(reference(attn, x, pos, allowed_loops(N, causal=True),
                                             mult=temp.scale.view(1, H, 1, 1)).square().sum(), [temp.scale])
        torch.testing.assert_close(g, r, atol=1e-5, rtol=1e-4)
        assert g.abs().sum() > 0
    # KV-cache decoding scales each new query by its own token index
    attn.eval()
    with torch.no_grad():
        full = attn(x, pos)
        cache = KVCache()
        outs = [attn(x[:, :6], Positions(ids=pos.ids[:, :6]), cache)]
        for t in range(6, N):
            outs.append(attn(x[:, t:t + 1], Positions(ids=pos.ids[:, :t + 1]), cache))
    torch.testing.assert_close(torch.cat(outs, 1), full, atol=2e-6, rtol=1e-5)


def test_temperature_one_changes_nothing(one_thread):
    plain, tempered = make("rope"), make("rope", temperature=ConstantTemperature(1.0))
    x = torch.randn(1, N, C)
    assert torch.equal(plain(x), tempered(x))


def test_errors_are_named():
    with pytest.raises(ConfigError, match="block-causal"):
        make(None, causal=True, mask=AttentionMask(block=2))
    with pytest.raises(ConfigError, match="AttentionMask"):
        make(None, mask={"window": 3})
    with pytest.raises(ConfigError, match="Temperature"):
        make(None, temperature=torch.nn.Identity())
    attn = make(None, causal=True, mask=AttentionMask(per_document=True))
    with pytest.raises(ValueError, match="doc_ids"):
        attn(torch.randn(1, 4, C), Positions(ids=torch.arange(4)[None]))
    enc = make(None, causal=False, mask=AttentionMask(window=2))
    with pytest.raises(ValueError, match="cross-attention"):
        enc(torch.randn(1, 3, C), Positions(ids=torch.arange(5)[None]), key=torch.randn(1, 5, C),
            query_pos=Positions(ids=torch.arange(3)[None]))
    with pytest.raises(ValueError, match="layer_idx"):
        make(None, layer_idx=-1)


def test_packed_positions_restart_per_document():
    p = Positions.packed(torch.tensor([[4, 4, 4, 9, 9, 4, 4]]))
    assert p.ids.tolist() == [[0, 1, 2, 0, 1, 0, 1]]                            # a new run of an old id restarts too
    assert p.tail(3).doc_ids.tolist() == [[9, 4, 4]]
    with pytest.raises(ValueError, match="doc_ids"):
        Positions.packed(torch.tensor([0.0, 1.0]))
