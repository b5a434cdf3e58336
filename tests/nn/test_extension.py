"""Context-extension attention (SelfExtend, STRING, LM-Infinite, Ms-PoE) against references written as Python loops
over (query i, key j) from each method's definition, with the rotation written out from RoPE's formula; properties
(group 1 / a window covering everything / shift 0 equal plain causal RoPE attention, computed by SDPA); KV-cache and
chunk rows against rows of the full form; gradients; bf16 autocast with float32 angles; clear errors."""
import math

import pytest
import torch
import torch.nn.functional as F

from zoo.errors import ConfigError
from zoo.nn.extension import (STRING_ATTENTION_FACTOR, lm_infinite_attention, ms_poe_head_order, ms_poe_ratios,
                              ms_poe_rotate, self_extend_attention, string_attention)
from zoo.nn.masks import AttentionMask
from zoo.pe.rope import RoPE

BASE = 10000.0
N, D, H = 16, 8, 2


def rot_ref(x: torch.Tensor, p: float, layout: str = "half") -> torch.Tensor:
    """RoPE from its definition: pair t rotated by p * BASE^(-2t/d), float64."""
    d = x.shape[-1]
    theta = BASE ** (-torch.arange(0, d, 2, dtype=torch.float64) / d)            # [d/2]
    c, s = torch.cos(p * theta), torch.sin(p * theta)
    if layout == "half":
        x1, x2 = x[: d // 2], x[d // 2:]
        return torch.cat([x1 * c - x2 * s, x2 * c + x1 * s])
    x1, x2 = x[0::2], x[1::2]
    return torch.stack([x1 * c - x2 * s, x2 * c + x1 * s], dim=-1).flatten()


def loop_attention(q, k, v, pairs, q_idx, k_idx, layout="half"):
    """Softmax attention one (i, j) at a time.  ``pairs(i, j)`` lists the terms key j contributes to query i's softmax:
    ``(query position, key position or None = key unrotated, logit multiplier)``; an empty list masks the key."""
    q, k, v = q.double(), k.double(), v.double()
    b, h, nq, d = q.shape
    out = torch.zeros(b, h, nq, v.shape[-1], dtype=torch.float64)
    for bi in range(b):
        for hi in range(h):
            for r, i in enumerate(q_idx):
                logits, values = [], []
                for c, j in enumerate(k_idx):
                    for pq, pk, mult in pairs(i, j):
                        kk = k[bi, hi, c] if pk is None else rot_ref(k[bi, hi, c], pk, layout)
                        logits.append(mult * float(rot_ref(q[bi, hi, r], pq, layout) @ kk) / math.sqrt(d))
                        values.append(v[bi, hi, c])
                w = torch.tensor(logits, dtype=torch.float64).softmax(0)
                out[bi, hi, r] = (w[:, None] * torch.stack(values)).sum(0)
    return out


def self_extend_pairs(group, window, q_idx):
    shift = window if max(q_idx) >= window else 0                               # as REFERENCES.md / official code

    def pairs(i, j):
        if j > i:
            return []
        if i - j < window:
            return [(i, j, 1.0)]
        return [(i // group + shift - shift / group, j // group, 1.0)]
    return pairs


def string_pairs(shift, window, factor, twice=False):
    def pairs(i, j):
        d = i - j
        if d < 0:
            return []
        if shift == 0:
            return [(i, j, 1.0)]
        exact, shifted = (i, j, factor ** 2), (i - shift + window, j, factor ** 2)
        if twice:                                                    # official prefill: [i-S, i] and j <= i-S
            return ([exact] if d <= shift else []) + ([shifted] if d >= shift else [])
        return [exact] if d < shift else [shifted]
    return pairs


def lm_infinite_pairs(window, n_global, nk, limit=None):
    cap = min(window if limit is None else limit, nk - 1)

    def pairs(i, j):
        d = i - j
        if 0 <= d < window:
            return [(i, j, 1.0)]
        if d >= window and j < n_global:
            return [(cap, None, 1.0)]
        return []
    return pairs


def qkv(n=N, b=1, h=H, d=D, dtype=torch.float64, seed=0, h_kv=None):
    g = torch.Generator().manual_seed(seed)
    q = torch.randn(b, h, n, d, generator=g, dtype=dtype)
    k = torch.randn(b, h_kv or h, n, d, generator=g, dtype=dtype)
    v = torch.randn(b, h_kv or h, n, d, generator=g, dtype=dtype)
    return q, k, v


def plain(q, k, v, rope):
    """Causal RoPE attention through SDPA (an independent path)."""
    qr, kr = rope.rotate(q, k, None)
    return F.scaled_dot_product_attention(qr, kr, v, is_causal=True)


# ---- SelfExtend ------------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("group,window,layout", [(2, 4, "half"), (3, 5, "half"), (2, 5, "interleaved"),
                                                 (4, 6, "half")])
def test_self_extend_matches_loop_reference(group, window, layout):
    q, k, v = qkv(b=2)
    rope = RoPE(D, layout=layout)
    out = self_extend_attention(q, k, v, rope, group, window)
    idx = list(range(N))
    ref = loop_attention(q, k, v, self_extend_pairs(group, window, idx), idx, idx, layout)
    torch.testing.assert_close(out, ref, rtol=1e-5, atol=1e-5)


def test_self_extend_group_one_or_wide_window_is_plain_rope():
    q, k, v = qkv()
    rope = RoPE(D)
    ref = plain(q, k, v, rope)
    torch.testing.assert_close(self_extend_attention(q, k, v, rope, 1, 3), ref, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(self_extend_attention(q, k, v, rope, 4, N), ref, rtol=1e-5, atol=1e-6)
    # and a real group with a short window is not plain attention
    assert not torch.allclose(self_extend_attention(q, k, v, rope, 4, 3), ref, atol=1e-3)


def test_self_extend_takes_a_cos_sin_function_and_grouped_keys():
    q, k, v = qkv(h=4, h_kv=2)
    rope = RoPE(D, layout="interleaved")
    out = self_extend_attention(q, k, v, rope.cos_sin, 2, 4, layout="interleaved")
    rep = dict(k=k.repeat_interleave(2, dim=1), v=v.repeat_interleave(2, dim=1))
    torch.testing.assert_close(out, self_extend_attention(q, rep["k"], rep["v"], rope, 2, 4))


# ---- STRING ----------------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("shift,window,twice", [(6, 2, False), (5, 0, False), (8, 3, False), (6, 2, True),
                                                (4, 4, True)])
def test_string_matches_loop_reference(shift, window, twice):
    q, k, v = qkv(b=2)
    rope = RoPE(D)
    out = string_attention(q, k, v, rope, shift, window, count_boundary_twice=twice)
    idx = list(range(N))
    ref = loop_attention(q, k, v, string_pairs(shift, window, STRING_ATTENTION_FACTOR, twice), idx, idx)
    torch.testing.assert_close(out, ref, rtol=1e-5, atol=1e-5)


def test_string_properties():
    q, k, v = qkv()
    rope = RoPE(D)
    ref = plain(q, k, v, rope)
    # shift 0: the official scripts leave the model unpatched
    torch.testing.assert_close(string_attention(q, k, v, rope, 0, 0), ref, rtol=1e-5, atol=1e-6)
    # no key as far as the shift, or a shift that lands where it started: plain RoPE (without the factor)
    torch.testing.assert_close(string_attention(q, k, v, rope, N, 3, attention_factor=1.0), ref, rtol=1e-5,
                               atol=1e-6)
    torch.testing.assert_close(string_attention(q, k, v, rope, 5, 5, attention_factor=1.0), ref, rtol=1e-5,
                               atol=1e-6)
    # the factor multiplies every logit by its square
    torch.testing.assert_close(string_attention(q, k, v, rope, N, 3, attention_factor=2.0),
                               plain(q * 4.0, k, v, rope), rtol=1e-5, atol=1e-6)
    assert not torch.allclose(string_attention(q, k, v, rope, 6, 2, attention_factor=1.0), ref, atol=1e-3)
    assert STRING_ATTENTION_FACTOR == pytest.approx(1.0693147, abs=1e-6)


# ---- LM-Infinite -----------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("window,n_global,limit", [(4, 2, None), (5, 1, None), (3, 0, None), (4, 3, 2), (6, 7, None)])
def test_lm_infinite_matches_loop_reference(window, n_global, limit):
    q, k, v = qkv(b=2)
    rope = RoPE(D)
    out = lm_infinite_attention(q, k, v, rope, window, n_global, limit_distance=limit)
    idx = list(range(N))
    ref = loop_attention(q, k, v, lm_infinite_pairs(window, n_global, N, limit), idx, idx)
    torch.testing.assert_close(out, ref, rtol=1e-5, atol=1e-5)


def test_lm_infinite_properties():
    q, k, v = qkv()
    rope = RoPE(D)
    # a window covering the sequence is plain causal RoPE attention
    torch.testing.assert_close(lm_infinite_attention(q, k, v, rope, N, 2), plain(q, k, v, rope), rtol=1e-5,
                               atol=1e-6)
    # no starting tokens: a sliding window (AttentionMask's rule, through SDPA)
    qr, kr = rope.rotate(q, k, None)
    idx = torch.arange(N)
    mask = AttentionMask(causal=True, window=4).additive(idx, idx, dtype=q.dtype)
    torch.testing.assert_close(lm_infinite_attention(q, k, v, rope, 4, 0),
                               F.scaled_dot_product_attention(qr, kr, v, attn_mask=mask), rtol=1e-5, atol=1e-6)


# ---- all three: KV cache, chunks, gradients, dtypes ------------------------------------------------------------------

METHODS = {
    "self_extend": lambda q, k, v, rope, **kw: self_extend_attention(q, k, v, rope, 3, 4, **kw),
    "string": lambda q, k, v, rope, **kw: string_attention(q, k, v, rope, 6, 2, **kw),
    "string_twice": lambda q, k, v, rope, **kw: string_attention(q, k, v, rope, 6, 2, count_boundary_twice=True,
                                                                 **kw),
    "lm_infinite": lambda q, k, v, rope, **kw: lm_infinite_attention(q, k, v, rope, 4, 2, **kw),
}


@pytest.mark.parametrize("name", sorted(METHODS))
def test_kv_cache_and_chunk_rows_equal_rows_of_the_full_form(name):
    fn = METHODS[name]
    q, k, v = qkv(n=20, dtype=torch.float32)
    rope = RoPE(D)
    full = fn(q, k, v, rope)
    for nq in (1, 3):                                                           # decoding, a few queries at once
        torch.testing.assert_close(fn(q[:, :, -nq:], k, v, rope), full[:, :, -nq:], rtol=1e-5, atol=1e-6)
    rows = torch.arange(7, 12)                                                  # a chunk of query rows
    torch.testing.assert_close(fn(q[:, :, 7:12], k, v, rope, q_idx=rows), full[:, :, 7:12], rtol=1e-5, atol=1e-6)
    # absolute indices: the keys of a shorter prefix see the same rows
    torch.testing.assert_close(fn(q[:, :, 9:12], k[:, :, :12], v[:, :, :12], rope), full[:, :, 9:12], rtol=1e-5,
                               atol=1e-6)


@pytest.mark.parametrize("name", sorted(METHODS))
def test_gradients_reach_q_k_v(name):
    q, k, v = (t.float().requires_grad_() for t in qkv())
    METHODS[name](q, k, v, RoPE(D)).pow(2).sum().backward()
    for t in (q, k, v):
        assert t.grad is not None and torch.isfinite(t.grad).all() and t.grad.abs().sum() > 0


FAR = list(range(4096, 4096 + N))                                                 # bf16 spacing here is 32
FAR_PAIRS = {
    "self_extend": self_extend_pairs(3, 4, FAR),
    "string": string_pairs(6, 2, STRING_ATTENTION_FACTOR),
    "string_twice": string_pairs(6, 2, STRING_ATTENTION_FACTOR, twice=True),
    "lm_infinite": lm_infinite_pairs(4, 2, N),
}


@pytest.mark.parametrize("name", sorted(METHODS))
def test_dtypes_and_bf16_autocast_with_float32_angles(name):
    fn = METHODS[name]
    rope = RoPE(D)
    q, k, v = qkv(dtype=torch.float32, seed=3)
    far = torch.tensor(FAR)
    ref = loop_attention(q, k, v, FAR_PAIRS[name], FAR, FAR).float()
    torch.testing.assert_close(fn(q, k, v, rope, q_idx=far, k_idx=far), ref, rtol=1e-3, atol=1e-3)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = fn(q, k, v, rope, q_idx=far, k_idx=far)
    assert out.dtype == torch.bfloat16
    assert (out.float() - ref).abs().max() < 0.06
    out16 = fn(q.bfloat16(), k.bfloat16(), v.bfloat16(), rope)
    assert out16.dtype == torch.bfloat16 and torch.isfinite(out16).all()


def test_absolute_indices():
    # RoPE is relative: moving every index by the same amount keeps STRING's output; SelfExtend's groups (floor
    # division) and LM-Infinite's starting tokens (indices < n_global) are absolute, so theirs change
    q, k, v = qkv()
    rope = RoPE(D)
    idx = torch.arange(N)
    torch.testing.assert_close(METHODS["string"](q, k, v, rope, q_idx=idx + 5, k_idx=idx + 5),
                               METHODS["string"](q, k, v, rope), rtol=1e-4, atol=1e-5)
    for name in ("self_extend", "lm_infinite"):
        assert not torch.allclose(METHODS[name](q, k, v, rope, q_idx=idx + 1, k_idx=idx + 1),
                                  METHODS[name](q, k, v, rope), atol=1e-4)


# ---- errors ----------------------------------------------------------------------------------------------------------

def test_bad_arguments_raise_naming_the_argument():
    q, k, v = qkv(dtype=torch.float32)
    rope = RoPE(D)
    cases = [
        (lambda: self_extend_attention(q, k, v, rope, 0, 4), ConfigError, "group"),
        (lambda: self_extend_attention(q, k, v, rope, 2, 0), ConfigError, "window"),
        (lambda: self_extend_attention(q, k, v, rope, 2.0, 4), ConfigError, "group"),
        (lambda: string_attention(q, k, v, rope, -1, 0), ConfigError, "shift"),
        (lambda: string_attention(q, k, v, rope, 4, 6), ConfigError, "window"),
        (lambda: string_attention(q, k, v, rope, 4, 2, attention_factor=0.0), ConfigError, "attention_factor"),
        (lambda: lm_infinite_attention(q, k, v, rope, 0, 2), ConfigError, "window"),
        (lambda: lm_infinite_attention(q, k, v, rope, 4, -1), ConfigError, "n_global"),
        (lambda: lm_infinite_attention(q, k, v, rope, 4, 1, limit_distance=-2), ConfigError, "limit_distance"),
        (lambda: self_extend_attention(q, k, v, rope, 2, 4, scale=-1.0), ConfigError, "scale"),
        (lambda: self_extend_attention(q, k[:, :, :5], v, rope, 2, 4), ValueError, "do not match"),
        (lambda: self_extend_attention(q, k[..., :4], v, rope, 2, 4), ValueError, "head dims"),
        (lambda: self_extend_attention(q[0], k, v, rope, 2, 4), ValueError, "q must be a 4-D"),
        (lambda: string_attention(q, k[:, :, :5], v[:, :, :5], rope, 4, 2), ValueError, "last nq"),
        (lambda: lm_infinite_attention(q, k, v, rope, 4, 1, q_idx=torch.arange(N).float()), ValueError, "q_idx"),
        (lambda: lm_infinite_attention(q, k, v, rope, 4, 1, k_idx=torch.arange(N - 1)), ValueError, "k_idx"),
        (lambda: self_extend_attention(q, k, v, "rope", 2, 4), ValueError, "rope"),
        (lambda: self_extend_attention(q, k[:, :1].expand(1, 3, N, D), v[:, :1].expand(1, 3, N, D), rope, 2, 4),
         ValueError, "heads"),
        (lambda: ms_poe_ratios(0), ConfigError, "num_heads"),
        (lambda: ms_poe_ratios(4, 1.8, 1.2), ConfigError, "max_ratio"),
        (lambda: ms_poe_rotate(q, k, rope, torch.ones(3)), ValueError, "head_ratios"),
    ]
    for call, exc, word in cases:
        with pytest.raises(exc, match=word):
            call()


# ---- Ms-PoE ----------------------------------------------------------------------------------------------------------

def test_ms_poe_ratios_match_the_definition():
    for h in (1, 4, 32):
        expect = torch.tensor([1.2 + 0.6 * s / h for s in range(h)], dtype=torch.float32)
        torch.testing.assert_close(ms_poe_ratios(h), expect)
    assert float(ms_poe_ratios(32).max()) < 1.8


def test_ms_poe_head_order_matches_loop_reference():
    q, k, _ = qkv(h=4, seed=5)
    k = k * 0.1
    # the last query of head h points at h + 1 keys (head 3: none, uniform): h + 1 outliers, head 3 none
    for hi, keys in enumerate(([0], [3, 5], [1, 7, 9], [])):
        q[0, hi, -1] = 0.0
        for j in keys:
            k[0, hi, j] = torch.linspace(1.0, 2.0, D, dtype=k.dtype)
            q[0, hi, -1] = 8.0 * k[0, hi, j]
    scores = []
    for hi in range(4):
        row = torch.tensor([float(q[0, hi, -1] @ k[0, hi, j]) / math.sqrt(D) for j in range(N)]).softmax(0)
        scores.append(-sum(float(p > 3 * row.mean()) for p in row) / N)
    assert scores == [-1 / N, -2 / N, -3 / N, 0.0]
    assert ms_poe_head_order(q, k).tolist() == sorted(range(4), key=lambda hh: scores[hh]) == [2, 1, 0, 3]


def test_ms_poe_rotate_matches_loop_reference_and_ratio_one_is_rope():
    q, k, _ = qkv(h=4)
    rope = RoPE(D)
    ratios = ms_poe_ratios(4)[torch.tensor([2, 0, 3, 1])]
    qr, kr = ms_poe_rotate(q, k, rope, ratios)
    for hi in range(4):
        for t in range(N):
            torch.testing.assert_close(qr[0, hi, t], rot_ref(q[0, hi, t], t / float(ratios[hi])), rtol=1e-5,
                                       atol=1e-6)
            torch.testing.assert_close(kr[0, hi, t], rot_ref(k[0, hi, t], t / float(ratios[hi])), rtol=1e-5,
                                       atol=1e-6)
    # grouped keys: key head g takes query head g * h / h_kv's ratio
    _, kr2 = ms_poe_rotate(q, k[:, ::2], rope, ratios)
    torch.testing.assert_close(kr2, kr[:, ::2])
    # ratio 1 everywhere is RoPE; KV-cache queries take the last positions
    q1, k1 = ms_poe_rotate(q[:, :, -3:], k, rope, torch.ones(4))
    ref_q, ref_k = rope.rotate(q[:, :, -3:], k, None)
    torch.testing.assert_close(q1, ref_q)
    torch.testing.assert_close(k1, ref_k)
