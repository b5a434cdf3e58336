"""PIE (He et al., ICLR 2025, arXiv 2407.03157): re-rotating cached RoPE keys after an edit equals re-encoding them."""
import pytest
import torch

from zoo import Positions
from zoo.pe.pie import pie_edit_cache, pie_edit_positions, pie_rerotate
from zoo.pe.rope import RoPE, rope_inv_freq
from zoo.pe.rope_scaling import ScaledRoPE


def test_edit_positions_pinned():
    old, new = pie_edit_positions(10, start=3, num_deleted=2, num_inserted=4)
    assert old.tolist() == [0, 1, 2, 5, 6, 7, 8, 9]
    assert new.tolist() == [0, 1, 2, 7, 8, 9, 10, 11]
    old, new = pie_edit_positions(6, start=2, num_deleted=3)                    # deletion only
    assert (old.tolist(), new.tolist()) == ([0, 1, 5], [0, 1, 2])
    old, new = pie_edit_positions(5, start=0, num_inserted=2)                   # insertion at the very start
    assert (old.tolist(), new.tolist()) == ([0, 1, 2, 3, 4], [2, 3, 4, 5, 6])
    old, new = pie_edit_positions(4, start=4, num_inserted=3)                   # append: nothing moves
    assert old.tolist() == new.tolist() == [0, 1, 2, 3]
    assert old.dtype == torch.int64


ROPES = {
    "half": lambda: RoPE(16),
    "interleaved": lambda: RoPE(16, layout="interleaved"),
    "partial-half": lambda: RoPE(16, rot_dim=6),
    "partial-interleaved": lambda: RoPE(16, rot_dim=10, layout="interleaved"),
    "p-rope": lambda: RoPE(16, p=0.5, layout="interleaved"),
    "yarn-partial": lambda: ScaledRoPE(16, max_position_embeddings=64, scaling={
        "rope_type": "yarn", "factor": 4.0, "original_max_position_embeddings": 16, "partial_rotary_factor": 0.5}),
}
EDITS = [(40, 5, 0, 7), (40, 5, 9, 0), (40, 12, 3, 11), (40, 0, 4, 1)]          # (n, start, deleted, inserted)


@pytest.mark.parametrize("edit", EDITS, ids=["insert", "delete", "replace", "at-start"])
@pytest.mark.parametrize("kind", list(ROPES))
def test_rerotate_equals_rotating_at_new_positions(kind, edit):
    n, start, nd, ni = edit
    rope = ROPES[kind]()
    torch.manual_seed(0)
    k = torch.randn(2, 3, n, 16)                                                # unrotated keys [b, h, n, d]
    q0 = torch.zeros(2, 3, 1, 16)
    cached = rope.rotate(q0, k, Positions.sequence(n))[1]                      # the cache, rotated at 0..n-1
    old, new = pie_edit_positions(n, start, nd, ni)
    got = pie_rerotate(cached[..., old, :], old, new, rope)
    ref = rope.rotate(q0, k[..., old, :], Positions(ids=new))[1]               # rotating the raw keys at new positions
    torch.testing.assert_close(got, ref, atol=1e-5, rtol=0)
    if ni != nd:                                                                # without PIE the tail is stale
        assert not torch.allclose(cached[..., old, :], ref, atol=1e-3)


def test_rerotate_with_inv_freq_and_batched_positions():
    torch.manual_seed(1)
    rope = RoPE(8, layout="interleaved")
    k = torch.randn(2, 1, 5, 8)
    old = torch.tensor([[0, 1, 2, 3, 4], [10, 11, 12, 13, 14]])
    new = torch.tensor([[0, 1, 6, 7, 8], [3, 4, 5, 6, 7]])
    cached = rope.rotate(k, k, Positions(ids=old))[1]
    got = pie_rerotate(cached, old, new, rope_inv_freq(8), layout="interleaved")
    torch.testing.assert_close(got, rope.rotate(k, k, Positions(ids=new))[1], atol=1e-5, rtol=0)
    # the wrong layout gives a different answer: the layout matters
    assert not torch.allclose(pie_rerotate(cached, old, new, rope_inv_freq(8), layout="half"), got, atol=1e-3)


@pytest.mark.parametrize("layout", ["half", "interleaved"])
def test_edit_cache_matches_full_recompute(layout):
    """One attention layer (keys do not depend on context): scores of a new query after PIE == re-encoding all."""
    torch.manual_seed(2)
    rope = RoPE(16, layout=layout, rot_dim=12)
    n, start, nd, ni = 30, 9, 4, 6
    k, v = torch.randn(1, 2, n, 16), torch.randn(1, 2, n, 16)
    k_ins, v_ins = torch.randn(1, 2, ni, 16), torch.randn(1, 2, ni, 16)
    cache_k = rope.rotate(k[..., :1, :], k, None)[1]
    ins_k = rope.rotate(k_ins[..., :1, :], k_ins, Positions(ids=torch.arange(start, start + ni)))[1]
    pk, pv = pie_edit_cache(cache_k, v, start, nd, ins_k, v_ins, rope)
    full_k = torch.cat([k[..., :start, :], k_ins, k[..., start + nd:, :]], dim=-2)
    full_v = torch.cat([v[..., :start, :], v_ins, v[..., start + nd:, :]], dim=-2)
    m = full_k.shape[-2]
    q = torch.randn(1, 2, 1, 16)
    rq, rk = rope.rotate(q, full_k, None)                                      # the new query at position m-1
    torch.testing.assert_close(pk, rk, atol=1e-5, rtol=0)
    torch.testing.assert_close(pv, full_v, atol=0, rtol=0)
    torch.testing.assert_close(rq @ pk.transpose(-2, -1), rq @ rk.transpose(-2, -1), atol=1e-4, rtol=0)
    assert pk.shape[-2] == m == n - nd + ni


def test_pie_bad_input():
    with pytest.raises(ValueError, match="start"):
        pie_edit_positions(5, start=6)
    with pytest.raises(ValueError, match="num_deleted"):
        pie_edit_positions(5, start=3, num_deleted=3)
    with pytest.raises(ValueError, match="num_inserted"):
        pie_edit_positions(5, start=1, num_inserted=-1)
    k = torch.randn(1, 1, 4, 8)
    with pytest.raises(ValueError, match="seq_len"):
        pie_rerotate(k, torch.arange(4), torch.arange(4), ScaledRoPE(8, scaling={"rope_type": "dynamic", "factor": 2.0},
                                                                      max_position_embeddings=8))
    with pytest.raises(ValueError, match="layout"):
        pie_rerotate(k, torch.arange(4), torch.arange(4), RoPE(8), layout="interleaved")
    with pytest.raises(ValueError, match="same shape"):
        pie_rerotate(k, torch.arange(4), torch.arange(3), RoPE(8))
    with pytest.raises(ValueError, match="positions"):
        pie_rerotate(k, torch.arange(3), torch.arange(3), RoPE(8))
    with pytest.raises(ValueError, match="rope"):
        pie_rerotate(k, torch.arange(4), torch.arange(4), "rope")
    with pytest.raises(ValueError, match="k_inserted"):
        pie_edit_cache(k, k, 1, 1, torch.randn(1, 2, 1, 8), torch.randn(1, 2, 1, 8), RoPE(8))
