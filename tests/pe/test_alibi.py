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


# ---- official get_slopes recursion, ALiBi with position interpolation -----------------------------------------------

def slopes_official_recursion(n):
    # ofirpress/attention_with_linear_biases get_slopes, re-typed: power of two -> geometric from 2^(-8/n);
    # else the closest power of two P, then every other slope of 2P
    def pow2(m):
        start = 2 ** (-(2 ** -(math.log2(m) - 3)))
        return [start * start ** i for i in range(m)]
    if math.log2(n).is_integer():
        return pow2(n)
    p = 2 ** math.floor(math.log2(n))
    return pow2(p) + slopes_official_recursion(2 * p)[0::2][: n - p]


@pytest.mark.parametrize("h", [1, 2, 3, 5, 6, 7, 8, 12, 16, 20, 24, 32, 40, 64])
def test_slopes_match_official_recursion(h):
    want = torch.tensor(slopes_official_recursion(h), dtype=torch.float64)
    torch.testing.assert_close(alibi_slopes(h).double(), want, atol=0, rtol=1e-6)


from zoo.pe.alibi import InterpolatedALiBi, alibi_interpolation_scale, query_key_positions  # noqa: E402


@pytest.mark.parametrize("causal", [False, True])
def test_interpolated_fixed_factor_pinned(causal):
    pe = InterpolatedALiBi(4, causal=causal, factor=2.5)
    q, k = torch.randn(1, 4, 3, 2), torch.randn(1, 4, 8, 2)
    got = pe.bias(q, k, None, 1.0)
    s = slopes_closed_form(4)
    for hh in range(4):
        for qi in range(3):
            i = qi + 5
            for j in range(8):
                dist = (i - j if j <= i else 0) if causal else abs(i - j)
                assert got[0, hh, qi, j].item() == pytest.approx(-s[hh] * dist / 2.5, rel=1e-6, abs=1e-7)
    # = plain ALiBi at positions divided by the factor (linear position interpolation)
    ids = torch.arange(8.0) / 2.5
    torch.testing.assert_close(got, ALiBi(4, causal=causal).bias(q, k, Positions(ids=ids), 1.0))


def test_interpolated_dynamic_train_len():
    pe = InterpolatedALiBi(2, train_len=6).eval()
    plain = ALiBi(2).eval()
    q = torch.randn(1, 2, 6, 2)
    torch.testing.assert_close(pe.bias(q, q, None, 1.0), plain.bias(q, q, None, 1.0), atol=0, rtol=0)  # <= L: same
    q10 = torch.randn(1, 2, 10, 2)
    got = pe.bias(q10, q10, None, 1.0)
    torch.testing.assert_close(got, alibi_bias(10, 10, alibi_slopes(2)) * (6 / 10))
    assert got[0, 0, 9, 0].item() == pytest.approx(-0.5 ** 4 * 9 * 0.6, rel=1e-6)  # slope 2^-4 for 2 heads
    # the eval cache of the base class is not modified by the division
    torch.testing.assert_close(pe.bias(q10, q10, None, 1.0), got)
    # KV cache: one query over 10 keys is the last row, scaled by the key count
    torch.testing.assert_close(pe.bias(q10[:, :, -1:], q10, None, 1.0), got[:, :, -1:])
    assert alibi_interpolation_scale(20, train_len=8) == 2.5 and alibi_interpolation_scale(5, train_len=8) == 1.0
    assert alibi_interpolation_scale(5, factor=3.0) == 3.0


@pytest.mark.parametrize("causal", [False, True])
def test_interpolated_shift_invariance_with_ids(causal):
    pe = InterpolatedALiBi(3, causal=causal, factor=4.0)
    q, k = torch.randn(2, 3, 5, 2), torch.randn(2, 3, 5, 2)
    ids = torch.tensor([[0.0, 3.0, 4.0, 9.0, 10.0], [1.0, 2.0, 3.0, 4.0, 5.0]])
    got = pe.bias(q, k, Positions(ids=ids), 1.0)
    torch.testing.assert_close(pe.bias(q, k, Positions(ids=ids + 50), 1.0), got)
    torch.testing.assert_close(pe.bias(q, k, Positions.sequence(5, 2, offset=7), 1.0), pe.bias(q, k, None, 1.0))
    assert got[0, 1, 3, 1].item() == pytest.approx(-slopes_closed_form(3)[1] * 6.0 / 4.0, rel=1e-6)


def test_query_key_positions_and_interp_bad_input():
    pi, pj = query_key_positions(None, 2, 5)
    assert pi.flatten().tolist() == [3, 4] and pj.flatten().tolist() == [0, 1, 2, 3, 4]
    pi, pj = query_key_positions(Positions.sequence(4, batch=3, offset=2), 1, 4)
    assert pi.shape == (1, 1) and pi.item() == 5                               # expanded batch -> one row
    with pytest.raises(ValueError, match="exactly one"):
        InterpolatedALiBi(4)
    with pytest.raises(ValueError, match="exactly one"):
        InterpolatedALiBi(4, factor=2.0, train_len=8)
    with pytest.raises(ValueError, match="factor"):
        InterpolatedALiBi(4, factor=0)
    with pytest.raises(ValueError, match="train_len"):
        InterpolatedALiBi(4, train_len=1.5)
    with pytest.raises(ValueError, match="pos.ids"):
        query_key_positions(Positions(ids=torch.zeros(2, 2, 2)), 2, 2)
