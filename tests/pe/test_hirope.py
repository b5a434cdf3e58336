"""HiRoPE (Zhang et al., ACL 2024): dimension split, window rule, level-wise relativity, reduction to RoPE, errors.

References here are explicit 2x2 rotations in float64 written from the paper's formula (pair t of the first
``token_pairs`` pairs at the token-level position, the remaining pairs at the higher-level position), never our
own rotation code.
"""
import math

import pytest
import torch

from zoo import Positions
from zoo.nn import Attention
from zoo.pe.hirope import HiRoPE, hierarchical_positions, hirope_angles, hirope_split
from zoo.pe.rope import rope_inv_freq


def rotate_pairs(x, pair_pos, layout, base=10000.0):
    """x [..., n, d]; pair_pos[n][t] = position that rotates pair t of token n; float64 loop."""
    x = x.double()
    d = x.shape[-1]
    out = x.clone()
    for n in range(x.shape[-2]):
        for t in range(d // 2):
            a = float(pair_pos[n][t]) * base ** (-2 * t / d)
            i, j = (2 * t, 2 * t + 1) if layout == "interleaved" else (t, t + d // 2)
            xi, xj = x[..., n, i], x[..., n, j]
            out[..., n, i] = xi * math.cos(a) - xj * math.sin(a)
            out[..., n, j] = xj * math.cos(a) + xi * math.sin(a)
    return out


def hier_pair_pos(high, tok, token_pairs, num_pairs):
    """Paper split: high-frequency pairs t < token_pairs use the token position, the rest the high-level one."""
    return [[tok[n] if t < token_pairs else high[n] for t in range(num_pairs)] for n in range(len(tok))]


def ref_logits(q, k, high, tok, token_pairs, layout, window=0):
    """Windowed HiRoPE logits q.k (unscaled), float64, q and k over the same n positions."""
    d = q.shape[-1]
    hp = hier_pair_pos(high, tok, token_pairs, d // 2)
    plain = [[tok[n]] * (d // 2) for n in range(len(tok))]
    s_hier = rotate_pairs(q, hp, layout) @ rotate_pairs(k, hp, layout).transpose(-2, -1)
    s_rope = rotate_pairs(q, plain, layout) @ rotate_pairs(k, plain, layout).transpose(-2, -1)
    t = torch.tensor(tok, dtype=torch.float64)
    inside = (t[:, None] - t[None, :]).abs() < window
    return torch.where(inside, s_rope, s_hier)


def hirope_logits(pe, q, k, pos, scale=1.0):
    """What zoo.nn.Attention computes before softmax: rotate, q.k * scale, + bias."""
    qr, kr = pe.rotate(q, k, pos)
    s = (qr.double() @ kr.double().transpose(-2, -1)) * scale
    b = pe.bias(qr, kr, pos, scale)
    return s if b is None else s + b.double()


# (file, function, token): 3 functions in 2 files over 10 tokens
FILE = [0, 0, 0, 0, 0, 0, 1, 1, 1, 1]
FUNC = [0, 0, 0, 1, 1, 1, 2, 2, 2, 2]
TOK = list(range(10))
LEVELS = torch.tensor([FILE, FUNC, TOK]).T                                    # [n, 3]


def test_split_counts():
    assert hirope_split(32, 0.5, 2) == (16, 16)
    assert hirope_split(32, 0.25, 2) == (24, 8)                                # (coarse, fine)
    assert hirope_split(32, 0.5, 3) == (8, 8, 16)
    assert hirope_split(7, 0.5, 3) == (2, 1, 4)                                # round(3.5) = 4, remainder coarsest
    assert hirope_split(8, [1, 2, 5], 3) == (1, 2, 5)
    with pytest.raises(ValueError, match="split"):
        hirope_split(8, 1.0, 2)
    with pytest.raises(ValueError, match="split"):
        hirope_split(8, [4, 3], 2)                                             # does not sum to 8
    with pytest.raises(ValueError, match="split"):
        hirope_split(2, 0.1, 2)                                                # token level would get 0 pairs


def test_angles_pinned_formula():
    # d = 8: pairs 0, 1 (high frequency) at the token position, pairs 2, 3 at the function position
    pos = torch.tensor([[3, 17], [5, 40]])                                     # [n, (func, tok)]
    got = hirope_angles(pos, rope_inv_freq(8), (2, 2))
    theta = [10000 ** (-2 * t / 8) for t in range(4)]
    want = torch.tensor([[17 * theta[0], 17 * theta[1], 3 * theta[2], 3 * theta[3]],
                         [40 * theta[0], 40 * theta[1], 5 * theta[2], 5 * theta[3]]])
    assert got.dtype == torch.float32
    torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-6)


def test_hierarchical_positions_pinned():
    # running indices used as given
    assert hierarchical_positions(LEVELS, (1, 2)).tolist() == [[f, t] for f, t in zip(FUNC, TOK)]
    # within_parent: the token index restarts in each function, the function index in each file
    tok_in_func = [0, 1, 2, 0, 1, 2, 0, 1, 2, 3]
    func_in_file = [0, 0, 0, 1, 1, 1, 0, 0, 0, 0]
    assert hierarchical_positions(LEVELS, (1, 2), within_parent=True).tolist() == \
        [[f, t] for f, t in zip(FUNC, tok_in_func)]
    assert hierarchical_positions(LEVELS, (0, 1, -1), within_parent=True).tolist() == \
        [[a, f, t] for a, f, t in zip(FILE, func_in_file, tok_in_func)]
    # batch: each row on its own
    batch = torch.stack([LEVELS, LEVELS.flip(0).cummax(0).values])
    got = hierarchical_positions(batch, (1, 2), within_parent=True)
    assert got[0].tolist() == hierarchical_positions(LEVELS, (1, 2), within_parent=True).tolist()
    assert got[1].tolist() == hierarchical_positions(batch[1], (1, 2), within_parent=True).tolist()


@pytest.mark.parametrize("layout", ["half", "interleaved"])
def test_rotation_pinned_against_loop(layout):
    torch.manual_seed(0)
    pe = HiRoPE(8, levels=(1, 2), split=0.5, layout=layout)
    q, k = torch.randn(1, 2, 10, 8), torch.randn(1, 2, 10, 8)
    qr, kr = pe.rotate(q, k, Positions(levels=LEVELS))
    hp = hier_pair_pos(FUNC, TOK, 2, 4)
    torch.testing.assert_close(qr.double(), rotate_pairs(q, hp, layout), atol=1e-5, rtol=0)
    torch.testing.assert_close(kr.double(), rotate_pairs(k, hp, layout), atol=1e-5, rtol=0)


@pytest.mark.parametrize("layout", ["half", "interleaved"])
@pytest.mark.parametrize("window", [0, 1, 3, 6])
def test_window_rule_pinned(layout, window):
    torch.manual_seed(1)
    pe = HiRoPE(16, levels=(1, 2), split=0.25, window=window, layout=layout)  # 2 token pairs of 8
    q, k = torch.randn(2, 2, 10, 16), torch.randn(2, 2, 10, 16)
    got = hirope_logits(pe, q, k, Positions(levels=LEVELS), scale=0.25)
    want = ref_logits(q, k, FUNC, TOK, 2, layout, window) * 0.25
    torch.testing.assert_close(got, want, atol=1e-4, rtol=1e-5)


def test_inside_window_equals_plain_rope():
    torch.manual_seed(2)
    window = 4
    pe = HiRoPE(16, levels=(1, 2), window=window)
    q, k = torch.randn(1, 3, 10, 16), torch.randn(1, 3, 10, 16)
    got = hirope_logits(pe, q, k, Positions(levels=LEVELS))
    plain = [[t] * 8 for t in TOK]
    rope = rotate_pairs(q, plain, "half") @ rotate_pairs(k, plain, "half").transpose(-2, -1)
    t = torch.tensor(TOK)
    inside = (t[:, None] - t[None, :]).abs() < window
    torch.testing.assert_close(got[..., inside], rope[..., inside], atol=1e-4, rtol=1e-5)
    # and outside the window the hierarchy matters: token 9 (function 2) vs token 0 (function 0) differ from RoPE
    assert not torch.allclose(got[..., ~inside], rope[..., ~inside], atol=1e-2)


@pytest.mark.parametrize("within_parent", [False, True])
@pytest.mark.parametrize("window", [0, 3])
def test_scores_depend_only_on_levelwise_differences(within_parent, window):
    torch.manual_seed(3)
    pe = HiRoPE(16, levels=(0, 1, 2), split=0.5, window=window, within_parent=within_parent)
    q, k = torch.randn(2, 2, 10, 16), torch.randn(2, 2, 10, 16)
    s1 = hirope_logits(pe, q, k, Positions(levels=LEVELS))
    shifted = LEVELS + torch.tensor([7, 100, 1234])                             # a constant per level
    s2 = hirope_logits(pe, q, k, Positions(levels=shifted))
    torch.testing.assert_close(s1, s2, atol=1e-3, rtol=1e-5)
    # a different hierarchy (function boundary moved) changes the scores: they do read the levels
    moved = LEVELS.clone()
    moved[3:6, 1] = 0
    s3 = hirope_logits(pe, q, k, Positions(levels=moved))
    assert not torch.allclose(s1, s3, atol=1e-3)


def test_unit_per_token_reduces_to_rope():
    # every token its own unit: all pairs rotate by the token index -> plain RoPE, for any split
    torch.manual_seed(4)
    q, k = torch.randn(1, 2, 10, 16), torch.randn(1, 2, 10, 16)
    levels = torch.tensor([TOK, TOK]).T
    plain = [[t] * 8 for t in TOK]
    for split in (0.25, 0.5, 0.75):
        qr, kr = HiRoPE(16, split=split).rotate(q, k, Positions(levels=levels))
        torch.testing.assert_close(qr.double(), rotate_pairs(q, plain, "half"), atol=1e-5, rtol=0)
        torch.testing.assert_close(kr.double(), rotate_pairs(k, plain, "half"), atol=1e-5, rtol=0)


def test_single_unit_hierarchy():
    torch.manual_seed(5)
    q, k = torch.randn(1, 2, 10, 16), torch.randn(1, 2, 10, 16)
    one = torch.tensor([[0] * 10, TOK]).T                                       # one function over all tokens
    plain = [[t] * 8 for t in TOK]
    rope = rotate_pairs(q, plain, "half") @ rotate_pairs(k, plain, "half").transpose(-2, -1)
    # with a window covering the sequence it is exactly RoPE
    got = hirope_logits(HiRoPE(16, window=10), q, k, Positions(levels=one))
    torch.testing.assert_close(got, rope, atol=1e-4, rtol=1e-5)
    # without a window: token-level pairs carry RoPE, the higher-level pairs carry no position (one unit)
    got = hirope_logits(HiRoPE(16, split=0.5), q, k, Positions(levels=one))
    hp = hier_pair_pos([0] * 10, TOK, 4, 8)
    want = rotate_pairs(q, hp, "half") @ rotate_pairs(k, hp, "half").transpose(-2, -1)
    torch.testing.assert_close(got, want, atol=1e-4, rtol=1e-5)
    low = [4, 5, 6, 7, 12, 13, 14, 15]                                         # "half" layout: pairs 4..7
    torch.testing.assert_close(got - rope, (q[..., low] @ k[..., low].transpose(-2, -1)).double()
                               - (rotate_pairs(q, plain, "half")[..., low]
                                  @ rotate_pairs(k, plain, "half")[..., low].transpose(-2, -1)),
                               atol=1e-4, rtol=1e-5)


def test_batch_rows_independent_and_kv_cache():
    torch.manual_seed(6)
    pe = HiRoPE(16, levels=(1, 2), window=3)
    other = torch.tensor([[0] * 10, [0, 0, 1, 1, 1, 1, 1, 2, 2, 3], TOK]).T
    levels = torch.stack([LEVELS, other])                                       # [2, n, 3]
    q, k = torch.randn(2, 2, 10, 16), torch.randn(2, 2, 10, 16)
    full = hirope_logits(pe, q, k, Positions(levels=levels))
    for b in range(2):
        one = hirope_logits(pe, q[b:b + 1], k[b:b + 1], Positions(levels=levels[b]))
        torch.testing.assert_close(full[b:b + 1], one, atol=1e-4, rtol=1e-5)
    # KV cache: 4 queries = the last 4 keys
    cached = hirope_logits(pe, q[:, :, -4:], k, Positions(levels=levels))
    torch.testing.assert_close(cached, full[:, :, -4:], atol=1e-4, rtol=1e-5)


@pytest.mark.parametrize("causal", [False, True])
def test_attention_uses_windowed_logits(causal):
    torch.manual_seed(7)
    pe = HiRoPE(8, levels=(1, 2), window=3)
    attn = Attention(16, num_heads=2, pe=pe, causal=causal).eval()
    q, k, v = torch.randn(3, 1, 2, 10, 8).unbind(0)
    got = attn.attend(q, k, v, Positions(levels=LEVELS))
    logits = ref_logits(q, k, FUNC, TOK, 2, "half", window=3) * 8 ** -0.5
    if causal:
        logits = logits.masked_fill(torch.ones(10, 10, dtype=torch.bool).triu(1), float("-inf"))
    want = logits.softmax(-1) @ v.double()
    torch.testing.assert_close(got.double(), want, atol=1e-5, rtol=1e-4)


def test_angles_float32_under_bf16_autocast():
    with torch.autocast("cpu", dtype=torch.bfloat16):
        ang = hirope_angles(torch.tensor([[0, 256], [0, 257]]), rope_inv_freq(64), (16, 16))
        pe = HiRoPE(64, window=2)
        q = torch.ones(1, 1, 258, 64).bfloat16()
        levels = torch.stack([torch.arange(258) // 50, torch.arange(258)], -1)
        qr, kr = pe.rotate(q, q, Positions(levels=levels))
    assert ang.dtype == torch.float32
    assert (ang[1, 0] - ang[0, 0]).item() == 1.0                               # highest frequency: exactly 1 rad
    assert qr.dtype == torch.bfloat16
    # rotated rows 256 and 257 differ (in bf16 angles both positions would round to 256)
    assert not torch.equal(qr[0, 0, 256], qr[0, 0, 257])


def test_errors():
    q = k = torch.randn(1, 2, 10, 8)
    pe = HiRoPE(8)
    with pytest.raises(ValueError, match="Positions.levels"):
        pe.rotate(q, k, None)
    with pytest.raises(ValueError, match="Positions.levels"):
        pe.rotate(q, k, Positions(ids=torch.arange(10)))
    with pytest.raises(ValueError, match="at least 2 columns"):
        pe.rotate(q, k, Positions(levels=torch.arange(10)[:, None]))
    with pytest.raises(ValueError, match="at least 5 columns"):
        HiRoPE(8, levels=(2, 4)).rotate(q, k, Positions(levels=LEVELS))
    with pytest.raises(ValueError, match="coarsest to finest"):
        HiRoPE(8, levels=(2, 1)).rotate(q, k, Positions(levels=LEVELS))
    with pytest.raises(ValueError, match="integer"):
        pe.rotate(q, k, Positions(levels=LEVELS.float()))
    with pytest.raises(ValueError, match="10 positions but k has"):
        pe.rotate(q[:, :, :9], k[:, :, :9], Positions(levels=LEVELS))
    with pytest.raises(ValueError, match="last nq"):
        pe.rotate(q, k[:, :, :9], Positions(levels=LEVELS[:9]))
    with pytest.raises(ValueError, match="head dim"):
        pe.rotate(torch.randn(1, 2, 10, 6), torch.randn(1, 2, 10, 6), Positions(levels=LEVELS))
    with pytest.raises(ValueError, match="Positions.levels"):
        HiRoPE(8, window=2).bias(q, k, Positions(), 1.0)
    with pytest.raises(ValueError, match="head_dim"):
        HiRoPE(7)
    with pytest.raises(ValueError, match="levels"):
        HiRoPE(8, levels=(1,))
    with pytest.raises(ValueError, match="window"):
        HiRoPE(8, window=-1)
    with pytest.raises(ValueError, match="split"):
        HiRoPE(8, split=0.0)
    with pytest.raises(ValueError, match="layout"):
        HiRoPE(8, layout="pairs")


def test_no_window_is_a_pure_rotation():
    pe = HiRoPE(8)
    q = k = torch.randn(1, 1, 10, 8)
    assert pe.has_rotate and pe.bias(q, k, Positions(levels=LEVELS), 1.0) is None
    # and the rotation preserves norms (it is orthogonal)
    qr, _ = pe.rotate(q, k, Positions(levels=LEVELS))
    torch.testing.assert_close(qr.norm(dim=-1), q.norm(dim=-1))


def test_windowed_attention_under_bf16_autocast_close_to_float():
    torch.manual_seed(8)
    attn = Attention(32, num_heads=2, pe=HiRoPE(16, levels=(1, 2), window=3)).eval()
    x = torch.randn(2, 10, 32)
    pos = Positions(levels=LEVELS)
    want = attn(x, pos)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        got = attn(x, pos)
    assert got.dtype == torch.bfloat16
    torch.testing.assert_close(got.float(), want, atol=5e-2, rtol=5e-2)


def test_window_gradients_match_reference():
    torch.manual_seed(9)
    pe = HiRoPE(8, levels=(1, 2), window=3)
    q0, k0 = torch.randn(2, 1, 1, 10, 8).unbind(0)
    w = torch.randn(1, 1, 10, 10)
    q, k = q0.clone().requires_grad_(), k0.clone().requires_grad_()
    (hirope_logits(pe, q, k, Positions(levels=LEVELS)) * w).sum().backward()
    qd, kd = q0.double().requires_grad_(), k0.double().requires_grad_()
    (ref_logits(qd, kd, FUNC, TOK, 2, "half", window=3) * w).sum().backward()
    torch.testing.assert_close(q.grad.double(), qd.grad, atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(k.grad.double(), kd.grad, atol=1e-4, rtol=1e-4)
