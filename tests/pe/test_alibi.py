"""ALiBi (Press et al., ICLR 2022): slopes, bias, shift invariance, partial heads, attention."""
import math

import pytest
import torch

from zoo import Positions
from zoo.nn import Attention
from zoo.pe import ALiBi, alibi_bias, alibi_slopes


def slopes_closed_form(h):
    # P = 2^floor(log2 h) slopes 2^(-8k/P), then the odd-indexed slopes of 2P: 2^(-8(2k-1)/(2P)), k = 1..h-P
    p = 1
    while p * 2 <= h:
        p *= 2
    out = [2.0 ** (-8.0 * k / p) for k in range(1, p + 1)]
    out += [2.0 ** (-8.0 * (2 * k - 1) / (2 * p)) for k in range(1, h - p + 1)]
    return out


@pytest.mark.parametrize("h", [1, 2, 3, 5, 6, 8, 12, 16, 20, 24, 32])
def test_slopes_match_closed_form(h):
    got = alibi_slopes(h)
    assert got.dtype == torch.float32 and got.shape == (h,)
    torch.testing.assert_close(got.double(), torch.tensor(slopes_closed_form(h), dtype=torch.float64),
                               atol=0, rtol=1e-6)


def test_slopes_pinned_8_and_12_heads():
    eight = [2.0 ** -k for k in range(1, 9)]
    assert alibi_slopes(8).tolist() == eight                                   # powers of two are exact
    twelve = eight + [2 ** -0.5, 2 ** -1.5, 2 ** -2.5, 2 ** -3.5]
    torch.testing.assert_close(alibi_slopes(12), torch.tensor(twelve), atol=0, rtol=1e-6)
    assert alibi_slopes(1).tolist() == [2.0 ** -8]


def test_bias_pinned_loop():
    slopes = alibi_slopes(4)
    got = alibi_bias(9, 12, slopes, causal=False)
    assert got.shape == (1, 4, 9, 12) and got.dtype == torch.float32
    for hh in range(4):
        for qi in range(9):
            i = qi + 3                                                         # queries are the last 9 keys
            for j in range(12):
                assert got[0, hh, qi, j].item() == pytest.approx(-abs(j - i) * slopes[hh].item())
    # REFERENCES test: i = 7, j = 10 -> -3 m
    full = alibi_bias(12, 12, slopes)
    torch.testing.assert_close(full[0, :, 7, 10], -3 * slopes)


def test_causal_bias():
    slopes = alibi_slopes(2)
    got = alibi_bias(5, 5, slopes, causal=True)
    for i in range(5):
        for j in range(5):
            want = -(i - j) * slopes if j <= i else torch.zeros(2)
            torch.testing.assert_close(got[0, :, i, j], want)
    # KV-cache alignment: one query over 5 keys equals the last row
    torch.testing.assert_close(alibi_bias(1, 5, slopes, causal=True), got[:, :, -1:])


@pytest.mark.parametrize("causal", [False, True])
def test_shift_invariance_with_ids(causal):
    alibi = ALiBi(6, causal=causal)
    q, k = torch.randn(1, 6, 5, 4), torch.randn(1, 6, 5, 4)
    plain = alibi.bias(q, k, None, 0.5)
    shifted = alibi.bias(q, k, Positions.sequence(5, batch=3, offset=100), 0.5)
    assert shifted.shape == (1, 6, 5, 5)                                        # an expanded batch gives one bias
    torch.testing.assert_close(shifted, plain)
    # arbitrary positions: bias depends on pos_j - pos_i
    ids = torch.tensor([[0.0, 2.0, 3.5, 7.0, 8.0]])
    got = alibi.bias(q, k, Positions(ids=ids), 0.5)
    got2 = alibi.bias(q, k, Positions(ids=ids + 41.0), 0.5)
    torch.testing.assert_close(got, got2)
    s = alibi_slopes(6)
    i, j = 3, 1                                                                # positions 7.0 and 2.0
    assert got[0, 4, i, j].item() == pytest.approx(-(7.0 - 2.0) * s[4].item())


def test_partial_heads_zero_bias():
    alibi = ALiBi(8, num_alibi_heads=3)
    q = torch.randn(1, 8, 4, 2)
    got = alibi.bias(q, q, None, 1.0)
    torch.testing.assert_close(got[:, :3], alibi_bias(4, 4, alibi_slopes(3)))
    assert torch.count_nonzero(got[:, 3:]) == 0
    with pytest.raises(ValueError, match="num_alibi_heads"):
        ALiBi(4, num_alibi_heads=5)


def test_cache_in_eval_only():
    alibi = ALiBi(4).eval()
    q, k = torch.randn(1, 4, 3, 2), torch.randn(1, 4, 5, 2)
    assert alibi.bias(q, k, None, 1.0) is alibi.bias(q, k, None, 1.0)
    assert alibi.bias(q, q, None, 1.0) is not alibi.bias(q, k, None, 1.0)
    alibi.train()
    assert alibi.bias(q, k, None, 1.0) is not alibi.bias(q, k, None, 1.0)
    torch.testing.assert_close(alibi.bias(q, k, None, 1.0), alibi_bias(3, 5, alibi_slopes(4)))


def test_slopes_survive_half():
    alibi = ALiBi(12).half()
    assert alibi.slopes().dtype == torch.float32
    torch.testing.assert_close(alibi.slopes(), alibi_slopes(12), atol=0, rtol=0)


def test_alibi_bad_input():
    with pytest.raises(ValueError, match="num_heads"):
        alibi_slopes(0)
    with pytest.raises(ValueError, match="num_heads"):
        ALiBi(4).bias(torch.randn(1, 3, 2, 2), torch.randn(1, 3, 2, 2), None, 1.0)
    with pytest.raises(ValueError, match="nq"):
        alibi_bias(4, 3, alibi_slopes(2))
    with pytest.raises(ValueError, match="pos.ids"):
        ALiBi(2).bias(torch.randn(1, 2, 3, 2), torch.randn(1, 2, 3, 2), Positions.sequence(4), 1.0)


@pytest.mark.parametrize("causal", [False, True])
def test_attention_with_alibi_matches_naive(causal):
    torch.manual_seed(4)
    b, n, c, h = 2, 7, 24, 6
    d = c // h
    attn = Attention(c, h, pe=ALiBi(h, causal=causal), causal=causal).eval()
    x = torch.randn(b, n, c)
    slopes = slopes_closed_form(h)
    bias = torch.zeros(h, n, n)
    for hh in range(h):
        for i in range(n):
            for j in range(n):
                if causal and j > i:
                    bias[hh, i, j] = float("-inf")
                else:
                    bias[hh, i, j] = -abs(i - j) * slopes[hh]
    with torch.no_grad():
        out = attn(x)
        q, k, v = (x @ attn.qkv.weight.T + attn.qkv.bias).reshape(b, n, 3, h, d).permute(2, 0, 3, 1, 4)
        logits = q @ k.transpose(-2, -1) * (1 / math.sqrt(d)) + bias
        ref = (logits.softmax(-1) @ v).transpose(1, 2).reshape(b, n, c)
        ref = ref @ attn.proj.weight.T + attn.proj.bias
    torch.testing.assert_close(out, ref, atol=1e-5, rtol=1e-4)
