"""BiPE (He et al., ICML 2024; official zhenyuhe00/BiPE): bilevel ids, intra APE, BiPE-RoPE, BiPE-ALiBi (x96)."""
import math
import random

import pytest
import torch

from zoo import Positions
from zoo.nn import Attention
from zoo.pe.alibi import alibi_slopes
from zoo.pe.bipe import (LLAMA2_SEPARATORS, BiPEALiBi, BiPEIntraEmbedding, BiPERoPE, bipe_ids,
                         bipe_positions)


def bilevel_loop(ids, seps, train_scale=1024):
    """Official semantics, token by token: the separator closes its segment, intra restarts after it."""
    intra, inter, i, s = [], [], 0, 0
    for t in ids:
        intra.append(min(i, train_scale - 1))
        inter.append(s)
        if t in seps:
            i, s = 0, s + 1
        else:
            i += 1
    return intra, inter


def rotate_loop(x, positions, base=10000.0):
    """Rotate-half RoPE (Llama) by explicit 2x2 rotations, float64."""
    x = x.double()
    d = x.shape[-1]
    out = x.clone()
    for n, p in enumerate(positions):
        for t in range(d // 2):
            a = float(p) * base ** (-2 * t / d)
            xi, xj = x[..., n, t], x[..., n, t + d // 2]
            out[..., n, t] = xi * math.cos(a) - xj * math.sin(a)
            out[..., n, t + d // 2] = xj * math.cos(a) + xi * math.sin(a)
    return out


EXAMPLE = [1, 5, 6, 869, 7, 8, 13, 9, 869, 10, 11]


# ---- ids ----------------------------------------------------------------------------------------------------------
def test_official_example():
    intra, inter = bipe_ids(torch.tensor(EXAMPLE), (869, 13))
    assert intra.tolist() == [0, 1, 2, 3, 0, 1, 2, 0, 1, 0, 1]
    assert inter.tolist() == [0, 0, 0, 0, 1, 1, 1, 2, 2, 3, 3]
    assert intra.dtype == inter.dtype == torch.int64
    assert LLAMA2_SEPARATORS == (869, 13)
    # the attached period 29889 is not a separator
    intra, inter = bipe_ids(torch.tensor([1, 29889, 2]))
    assert intra.tolist() == [0, 1, 2] and inter.tolist() == [0, 0, 0]


def test_long_single_segment_clips_to_1023():
    ids = torch.randint(14, 800, (1500,))                                      # no 13, no 869
    intra, inter = bipe_ids(ids, (869, 13))
    assert intra.tolist() == [min(i, 1023) for i in range(1500)]
    assert inter.tolist() == [0] * 1500
    intra, _ = bipe_ids(ids, (869, 13), max_intra=100)
    assert intra.max().item() == 99 and intra[:100].tolist() == list(range(100))


def test_batch_matches_loop_reference():
    rng = random.Random(0)
    seps = (869, 13)
    rows = [[rng.choice([869, 13, 3, 4, 5, 6, 7, 8]) for _ in range(40)] for _ in range(4)]
    rows[0][:3] = [869, 869, 13]                                               # leading / consecutive separators
    intra, inter = bipe_ids(torch.tensor(rows), seps, max_intra=4)
    assert intra.shape == inter.shape == (4, 40)
    for b, row in enumerate(rows):
        want_intra, want_inter = bilevel_loop(row, seps, train_scale=4)
        assert intra[b].tolist() == want_intra
        assert inter[b].tolist() == want_inter
    assert intra[0, :4].tolist() == [0, 0, 0, 0] and inter[0, :4].tolist() == [0, 1, 2, 3]


def test_positions_helper():
    pos = bipe_positions(torch.tensor([EXAMPLE]), causal=True)
    assert pos.ids.tolist() == [[0, 1, 2, 3, 0, 1, 2, 0, 1, 0, 1]]
    assert pos.segments.tolist() == [[0, 0, 0, 0, 1, 1, 1, 2, 2, 3, 3]]
    assert pos.causal


def test_ids_errors():
    with pytest.raises(ValueError, match="input_ids"):
        bipe_ids(torch.tensor([1.0, 2.0]), (13,))
    with pytest.raises(ValueError, match="input_ids"):
        bipe_ids(torch.zeros(2, 2, 2, dtype=torch.long), (13,))
    with pytest.raises(ValueError, match="max_intra"):
        bipe_ids(torch.tensor([1, 2]), (13,), max_intra=0)
    with pytest.raises(ValueError, match="separator_ids"):
        bipe_ids(torch.tensor([1, 2]), ())


# ---- intra-segment APE --------------------------------------------------------------------------------------------
def test_intra_embedding_adds_table_rows():
    torch.manual_seed(0)
    ape = BiPEIntraEmbedding(16, 8)
    intra, inter = bipe_ids(torch.tensor([EXAMPLE, EXAMPLE[::-1]]), (869, 13))
    x = torch.randn(2, 11, 8)
    got = ape.embed(x, Positions(ids=intra, segments=inter))
    for b in range(2):
        for n in range(11):
            torch.testing.assert_close(got[b, n], x[b, n] + ape.weight[intra[b, n]])
    assert ape.weight.shape == (16, 8)                                         # official embeds.0.weight layout


def test_intra_embedding_official_padding_row():
    # official pad_token_id = -1 -> padding row 1023 = the clip value: zero and no gradient
    ape = BiPEIntraEmbedding(1024, 4, padding_idx=-1)
    assert ape.padding_idx == 1023 and ape.weight[1023].abs().sum().item() == 0.0
    intra, _ = bipe_ids(torch.randint(14, 800, (1, 1100)), (869, 13))
    x = torch.zeros(1, 1100, 4)
    out = ape.embed(x, Positions(ids=intra))
    assert out[0, 1023:].abs().sum().item() == 0.0 and out[0, :1023].abs().sum().item() > 0
    out.sum().backward()
    assert ape.weight.grad[1023].abs().sum().item() == 0.0 and ape.weight.grad[0].abs().sum().item() > 0


def test_intra_embedding_errors():
    ape = BiPEIntraEmbedding(8, 4)
    x = torch.zeros(1, 5, 4)
    with pytest.raises(ValueError, match="Positions.ids"):
        ape.embed(x, Positions(segments=torch.zeros(1, 5, dtype=torch.long)))
    with pytest.raises(ValueError, match="0..7"):
        ape.embed(x, Positions(ids=torch.tensor([[0, 1, 2, 3, 8]])))
    with pytest.raises(ValueError, match="integer"):
        ape.embed(x, Positions(ids=torch.zeros(1, 5)))
    with pytest.raises(ValueError, match="channels"):
        ape.embed(torch.zeros(1, 5, 3), Positions(ids=torch.zeros(1, 5, dtype=torch.long)))
    with pytest.raises(ValueError, match="max_intra"):
        BiPEIntraEmbedding(0, 4)
    with pytest.raises(ValueError, match="padding_idx"):
        BiPEIntraEmbedding(8, 4, padding_idx=8)


# ---- BiPE-RoPE ----------------------------------------------------------------------------------------------------
def test_bipe_rope_rotates_by_segment_index():
    torch.manual_seed(1)
    pe = BiPERoPE(8)
    intra, inter = bipe_ids(torch.tensor(EXAMPLE), (869, 13))
    q, k = torch.randn(1, 2, 11, 8), torch.randn(1, 2, 11, 8)
    qr, kr = pe.rotate(q, k, Positions(ids=intra, segments=inter))
    torch.testing.assert_close(qr.double(), rotate_loop(q, inter.tolist()), atol=1e-5, rtol=0)
    torch.testing.assert_close(kr.double(), rotate_loop(k, inter.tolist()), atol=1e-5, rtol=0)
    # tokens of one segment share a rotation: their scores equal the unrotated dot products
    s, raw = qr @ kr.transpose(-2, -1), q @ k.transpose(-2, -1)
    same = inter[:, None] == inter[None, :]
    torch.testing.assert_close(s[..., same], raw[..., same], atol=1e-5, rtol=1e-5)
    assert not torch.allclose(s[..., ~same], raw[..., ~same], atol=1e-2)


def test_bipe_rope_shift_invariance_and_kv_cache():
    torch.manual_seed(2)
    pe = BiPERoPE(16)
    seg = torch.tensor([[0, 0, 1, 1, 1, 2, 3, 3], [0, 1, 1, 2, 2, 2, 2, 5]])
    q, k = torch.randn(2, 2, 8, 16), torch.randn(2, 2, 8, 16)
    q1, k1 = pe.rotate(q, k, Positions(segments=seg))
    q2, k2 = pe.rotate(q, k, Positions(segments=seg + 37))
    torch.testing.assert_close(q1 @ k1.transpose(-2, -1), q2 @ k2.transpose(-2, -1), atol=1e-4, rtol=1e-5)
    q3, k3 = pe.rotate(q[:, :, -3:], k, Positions(segments=seg))                # queries = last 3 keys
    torch.testing.assert_close(q3, q1[:, :, -3:])
    torch.testing.assert_close(k3, k1)


def test_bipe_rope_needs_segments():
    q = k = torch.randn(1, 1, 4, 8)
    with pytest.raises(ValueError, match="Positions.segments"):
        BiPERoPE(8).rotate(q, k, Positions(ids=torch.arange(4)))
    with pytest.raises(ValueError, match="Positions.segments"):
        BiPERoPE(8).rotate(q, k, None)
    with pytest.raises(ValueError, match="segments has 5"):
        BiPERoPE(8).rotate(q, k, Positions(segments=torch.arange(5)))


# ---- BiPE-ALiBi ---------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("h", [1, 8, 12])
def test_slopes_are_96_times_alibi(h):
    pe = BiPEALiBi(h)
    torch.testing.assert_close(pe.slopes(), 96 * alibi_slopes(h), atol=0, rtol=1e-6)
    if h == 8:
        # 96 * 2^-k, Press et al. section 3
        assert pe.slopes().tolist() == [96 * 2.0 ** -k for k in range(1, 9)]


@pytest.mark.parametrize("causal", [False, True])
def test_alibi_bias_pinned_from_formula(causal):
    pe = BiPEALiBi(4, causal=causal)
    seg = [0, 0, 0, 0, 1, 1, 1, 2, 2, 3, 3]
    q = k = torch.zeros(1, 4, 11, 8)
    got = pe.bias(q, k, Positions(segments=torch.tensor([seg])), 8 ** -0.5)
    assert got.shape == (1, 4, 11, 11) and got.dtype == torch.float32
    m = [96 * 2.0 ** (-8 * (hh + 1) / 4) for hh in range(4)]                    # 96 * 2^(-8k/h)
    for hh in range(4):
        for i in range(11):
            for j in range(11):
                d = seg[i] - seg[j]
                want = -m[hh] * (max(d, 0) if causal else abs(d))
                assert got[0, hh, i, j].item() == pytest.approx(want, rel=1e-6, abs=1e-9)
    # same segment -> zero bias; e.g. tokens 4..6 of segment 1
    assert got[0, :, 4:7, 4:7].abs().max().item() == 0.0
    # REFERENCES: token 10 (segment 3) to token 0 (segment 0) = -3 * 96 * m_h
    torch.testing.assert_close(got[0, :, 10, 0], -3 * 96 * alibi_slopes(4))


def test_alibi_shift_invariance_batch_and_kv_cache():
    pe = BiPEALiBi(3)
    seg = torch.tensor([[0, 1, 1, 2, 4], [0, 0, 0, 1, 1]])
    q = k = torch.zeros(2, 3, 5, 4)
    b1 = pe.bias(q, k, Positions(segments=seg), 0.5)
    b2 = pe.bias(q, k, Positions(segments=seg + 1000), 0.5)
    torch.testing.assert_close(b1, b2)
    assert b1.shape == (2, 3, 5, 5)
    torch.testing.assert_close(b1[1], pe.bias(q[:1], k[:1], Positions(segments=seg[1]), 0.5)[0])
    cached = pe.bias(q[:, :, -2:], k, Positions(segments=seg), 0.5)
    torch.testing.assert_close(cached, b1[:, :, -2:])


def test_alibi_in_attention_matches_manual():
    torch.manual_seed(3)
    pe = BiPEALiBi(2, causal=True)
    attn = Attention(16, num_heads=2, pe=pe, causal=True).eval()
    q, k, v = torch.randn(3, 1, 2, 6, 8).unbind(0)
    seg = torch.tensor([[0, 0, 1, 1, 1, 2]])
    got = attn.attend(q, k, v, Positions(segments=seg, causal=True))
    m = 96 * alibi_slopes(2).double()
    d = (seg[0, :, None] - seg[0, None, :]).double()                            # seg_i - seg_j
    logits = (q.double() @ k.double().transpose(-2, -1)) / math.sqrt(8) - m[:, None, None] * d
    logits = logits.masked_fill(torch.ones(6, 6, dtype=torch.bool).triu(1), float("-inf"))
    torch.testing.assert_close(got.double(), logits.softmax(-1) @ v.double(), atol=1e-5, rtol=1e-4)


def test_alibi_errors():
    q = k = torch.zeros(1, 2, 4, 8)
    with pytest.raises(ValueError, match="Positions.segments"):
        BiPEALiBi(2).bias(q, k, Positions(ids=torch.arange(4)), 1.0)
    with pytest.raises(ValueError, match="num_heads"):
        BiPEALiBi(3).bias(q, k, Positions(segments=torch.arange(4)), 1.0)
    with pytest.raises(ValueError, match="num_heads"):
        BiPEALiBi(0)
    with pytest.raises(ValueError, match="slope_multiplier"):
        BiPEALiBi(2, slope_multiplier=-1.0)


def test_empty_sequence_gives_empty_outputs():
    # n == 0: every helper returns empty tensors of the documented shapes instead of failing inside torch
    for shape in ((0,), (2, 0)):
        x = torch.zeros(shape, dtype=torch.long)
        intra, inter = bipe_ids(x)
        assert intra.shape == inter.shape == shape and intra.dtype == inter.dtype == torch.long
        pos = bipe_positions(x)
        assert pos.ids.shape == pos.segments.shape == shape
    emb = BiPEIntraEmbedding(16, 8)
    out = emb.embed(torch.zeros(2, 0, 8), bipe_positions(torch.zeros(2, 0, dtype=torch.long)))
    assert out.shape == (2, 0, 8)
    q = torch.randn(2, 4, 0, 8)
    pos = Positions(segments=torch.zeros(2, 0, dtype=torch.long))
    rq, rk = BiPERoPE(8).rotate(q, q, pos)
    assert rq.shape == rk.shape == q.shape
    assert BiPEALiBi(4, causal=True).bias(q, q, pos, 1.0).shape == (2, 4, 0, 0)


def test_length_one_sequence():
    x = torch.tensor([[LLAMA2_SEPARATORS[0]]])
    intra, inter = bipe_ids(x)
    assert intra.tolist() == [[0]] and inter.tolist() == [[0]]             # a separator closes its own segment
    emb = BiPEIntraEmbedding(16, 8)
    out = emb.embed(torch.zeros(1, 1, 8), bipe_positions(x))
    torch.testing.assert_close(out[0, 0], emb.weight[0])
