"""Randomized positional encodings (Ruoss et al., 2023) and NoPE."""
import pytest
import torch

from zoo import Positions
from zoo.nn import Attention
from zoo.pe import ALiBi, RoPE, SinCosAPE, sincos_1d
from zoo.pe.nope import NoPE
from zoo.pe.randomized import RandomizedPE, randomize_ids, randomized_positions
from zoo.pe.shaw import ShawRPE


def test_sorted_subset_in_range():
    g = torch.Generator().manual_seed(0)
    for n, m in [(1, 1), (5, 5), (10, 2048), (100, 128), (0, 3)]:
        ids = randomized_positions(n, m, generator=g)
        assert ids.dtype == torch.long and ids.shape == (n,)
        assert (ids[1:] > ids[:-1]).all()                                       # strictly increasing
        assert n == 0 or (ids.min() >= 0 and ids.max() < m)
    assert randomized_positions(6, 6).tolist() == list(range(6))               # the whole range


def test_deterministic_with_seeded_generator():
    a = randomized_positions(16, 1000, generator=torch.Generator().manual_seed(7))
    b = randomized_positions(16, 1000, generator=torch.Generator().manual_seed(7))
    c = randomized_positions(16, 1000, generator=torch.Generator().manual_seed(8))
    assert torch.equal(a, b) and not torch.equal(a, c)
    g = torch.Generator().manual_seed(7)
    assert not torch.equal(randomized_positions(16, 1000, g), randomized_positions(16, 1000, g))  # a new draw per call


def test_distribution_covers_the_range_uniformly():
    g = torch.Generator().manual_seed(1)
    m, n, draws = 64, 8, 4000
    counts = torch.zeros(m)
    firsts = []
    for _ in range(draws):
        ids = randomized_positions(n, m, g)
        counts[ids] += 1
        firsts.append(ids[0].item())
    assert (counts > 0).all()                                                   # every position is used
    expected = draws * n / m                                                    # uniform subset: 500 per position
    assert (counts - expected).abs().max() < 0.2 * expected
    # the smallest of n uniform picks without replacement has mean (m + 1) / (n + 1) - 1 = 6.22 (0-based)
    assert abs(sum(firsts) / draws - ((m + 1) / (n + 1) - 1)) < 0.3


def test_randomize_ids_keeps_order_of_token_indices():
    g = torch.Generator().manual_seed(2)
    ids = torch.tensor([[0, 1, 4, 9], [2, 3, 5, 6]])
    out = randomize_ids(ids, 4, 50, g)
    table = randomized_positions(10, 50, torch.Generator().manual_seed(2))     # the same draw
    assert torch.equal(out, table[ids])
    assert (out[:, 1:] > out[:, :-1]).all()
    with pytest.raises(ValueError, match="max_length"):
        randomize_ids(torch.tensor([0, 60]), 2, 50)
    with pytest.raises(ValueError, match=">= 0"):
        randomize_ids(torch.tensor([-1, 2]), 2, 50)
    with pytest.raises(ValueError, match="integer"):
        randomize_ids(torch.tensor([0.5, 2.0]), 2, 50)


def test_wrapper_feeds_sincos_rope_and_alibi():
    x = torch.randn(2, 6, 16)
    pe = RandomizedPE(SinCosAPE(16), max_length=100, generator=torch.Generator().manual_seed(3))
    ids = randomized_positions(6, 100, torch.Generator().manual_seed(3))
    torch.testing.assert_close(pe.embed(x, None), x + sincos_1d(ids, 16))
    assert pe.has_embed and not pe.has_rotate and not pe.has_bias and not pe.needs_weights

    rope = RandomizedPE(RoPE(8), max_length=100, generator=torch.Generator().manual_seed(4))
    q, k = torch.randn(1, 2, 6, 8), torch.randn(1, 2, 6, 8)
    ids = randomized_positions(6, 100, torch.Generator().manual_seed(4))
    want = RoPE(8).rotate(q, k, Positions(ids=ids))
    got = rope.rotate(q, k, None)
    torch.testing.assert_close(got[0], want[0])
    torch.testing.assert_close(got[1], want[1])
    assert rope.has_rotate and not rope.has_embed

    alibi = RandomizedPE(ALiBi(2, causal=True), max_length=100, generator=torch.Generator().manual_seed(5))
    pos = Positions.sequence(6, batch=2)
    b1 = alibi.bias(q, k, pos, 1.0)
    ids = randomized_positions(6, 100, torch.Generator().manual_seed(5))
    torch.testing.assert_close(b1, ALiBi(2, causal=True).bias(q, k, Positions(ids=ids), 1.0))
    assert torch.equal(alibi.bias(q, k, pos, 1.0), b1)                          # same Positions: same draw
    assert not torch.equal(alibi.bias(q, k, Positions.sequence(6, batch=2), 1.0), b1)   # new call: new draw


def test_wrapper_in_attention_and_rejects_weight_readers():
    torch.manual_seed(6)
    attn = Attention(16, 2, pe=RandomizedPE(RoPE(8), 64), causal=True)
    out = attn(torch.randn(2, 5, 16))
    assert out.shape == (2, 5, 16) and torch.isfinite(out).all()
    with pytest.raises(ValueError, match="attention weights"):
        RandomizedPE(ShawRPE(8), 64)
    with pytest.raises(ValueError, match="max_length"):
        RandomizedPE(RoPE(8), 0)
    with pytest.raises(ValueError, match="pe must be"):
        RandomizedPE(torch.nn.Linear(2, 2), 10)
    with pytest.raises(ValueError, match="cannot be drawn"):
        randomized_positions(5, 4)


def test_nope_is_identity_and_takes_the_common_arguments():
    pe = NoPE(num_heads=4, head_dim=8)
    assert not (pe.has_embed or pe.has_rotate or pe.has_bias or pe.needs_weights)
    torch.manual_seed(7)
    a, b = Attention(16, 2, pe=pe), Attention(16, 2)
    b.load_state_dict(a.state_dict())
    x = torch.randn(1, 4, 16)
    torch.testing.assert_close(a(x), b(x))
    with pytest.raises(ValueError, match="base"):
        NoPE(base=10000)


def test_wrapper_kv_cache_bias_rows_share_the_draw():
    alibi = RandomizedPE(ALiBi(2), max_length=500, generator=torch.Generator().manual_seed(9))
    pos = Positions.sequence(6)
    k = torch.randn(1, 2, 6, 4)
    full = alibi.bias(k, k, pos, 1.0)                                          # 6 queries over 6 keys
    last = alibi.bias(k[:, :, -2:], k, pos, 1.0)                               # cached step: the last 2 queries
    torch.testing.assert_close(last, full[:, :, -2:])
    ids = randomized_positions(6, 500, torch.Generator().manual_seed(9))
    assert full[0, 1, 4, 1].item() == pytest.approx(-abs(ids[4] - ids[1]).item() * ALiBi(2).slopes()[1].item())
