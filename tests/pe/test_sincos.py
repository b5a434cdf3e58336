"""Sinusoidal APE: Vaswani et al. 2017 (1D, interleaved) and MAE (2D) tables, plus the zoo.pe string factory."""
import math

import pytest
import torch

import zoo.pe as pe
from zoo import Positions
from zoo.pe import SinCosAPE, sincos_1d, sincos_2d


def vaswani(p: float, dim: int, base: float = 10000.0):
    # PE[p, 2i] = sin(p / base^(2i/dim)), PE[p, 2i+1] = cos(p / base^(2i/dim))
    out = []
    for i in range(dim // 2):
        a = p / base ** (2 * i / dim)
        out += [math.sin(a), math.cos(a)]
    return out


def mae_2d(h: int, w: int, dim: int, base: float = 10000.0):
    # MAE get_2d_sincos_pos_embed: first half encodes the column, second the row, each [sin | cos]
    q = dim // 4
    omega = [1.0 / base ** (k / q) for k in range(q)]
    rows = []
    for r in range(h):
        for c in range(w):
            rows.append([math.sin(c * o) for o in omega] + [math.cos(c * o) for o in omega]
                        + [math.sin(r * o) for o in omega] + [math.cos(r * o) for o in omega])
    return torch.tensor(rows, dtype=torch.float64)


def test_sincos_1d_pinned_values():
    # hand-checkable: p = 1, dim = 4 -> sin 1, cos 1, sin 0.01, cos 0.01
    got = sincos_1d(torch.tensor([0, 1]), 4)
    assert got.dtype == torch.float32 and got.shape == (2, 4)
    torch.testing.assert_close(got[0], torch.tensor([0.0, 1.0, 0.0, 1.0]))
    torch.testing.assert_close(got[1], torch.tensor([math.sin(1), math.cos(1), math.sin(0.01), math.cos(0.01)]))


@pytest.mark.parametrize("dim,base", [(6, 10000.0), (16, 10000.0), (8, 100.0)])
def test_sincos_1d_matches_formula(dim, base):
    positions = torch.tensor([[0.0, 1.0, 2.5], [7.0, 31.0, 100.25]])           # floats allowed
    got = sincos_1d(positions, dim, base)
    assert got.shape == (2, 3, dim)
    want = torch.tensor([[vaswani(p, dim, base) for p in row] for row in positions.tolist()])
    torch.testing.assert_close(got, want, atol=2e-6, rtol=0)


@pytest.mark.parametrize("h,w,dim", [(3, 5, 8), (4, 4, 16), (7, 2, 12)])
def test_sincos_2d_matches_mae_formula(h, w, dim):
    got = sincos_2d(h, w, dim)
    assert got.shape == (h * w, dim) and got.dtype == torch.float32
    torch.testing.assert_close(got.double(), mae_2d(h, w, dim), atol=2e-6, rtol=0)


def test_sincos_2d_matches_timm_up_to_block_order():
    from timm.layers.pos_embed_sincos import build_sincos2d_pos_embed
    h, w, dim = 5, 7, 32
    ref = build_sincos2d_pos_embed([h, w], dim)                                # [sin r | sin c | cos r | cos c]
    q = dim // 4
    ref = torch.cat([ref[:, q:2 * q], ref[:, 3 * q:], ref[:, 0:q], ref[:, 2 * q:3 * q]], dim=1)
    torch.testing.assert_close(sincos_2d(h, w, dim), ref, atol=1e-6, rtol=0)


def test_ape_1d_default_and_ids():
    ape = SinCosAPE(8)
    x = torch.randn(2, 5, 8)
    torch.testing.assert_close(ape.embed(x, None), x + sincos_1d(torch.arange(5), 8))
    ids = torch.tensor([[3, 4, 5, 6, 7], [0.5, 1.0, 1.5, 2.0, 9.0]])           # per-sample, fractional
    got = ape.embed(x, Positions(ids=ids))
    want = x + torch.tensor([[vaswani(p, 8) for p in row] for row in ids.tolist()])
    torch.testing.assert_close(got, want, atol=2e-6, rtol=0)


def test_ape_2d_prefix_zero_and_grid():
    ape = SinCosAPE(16)
    pos = Positions.grid_2d(3, 4, num_prefix=2)
    x = torch.randn(2, 2 + 12, 16)
    got = ape.embed(x, pos)
    torch.testing.assert_close(got[:, :2], x[:, :2])                            # cls/registers untouched
    torch.testing.assert_close(got[:, 2:] - x[:, 2:], mae_2d(3, 4, 16).float().expand(2, -1, -1), atol=2e-6,
                               rtol=0)
    # explicit (row, col) per token: a permuted grid permutes the table rows
    perm = torch.randperm(12)
    pos_p = Positions(grid=pos.grid[perm], grid_size=(3, 4), num_prefix=2)
    torch.testing.assert_close(ape.embed(x, pos_p)[:, 2:] - x[:, 2:], sincos_2d(3, 4, 16)[perm].expand(2, -1, -1))


def test_ape_casts_at_add_and_is_stateless():
    ape = SinCosAPE(8)
    assert len(ape.state_dict()) == 0
    x = torch.randn(1, 6, 8).bfloat16()
    out = ape.embed(x, None)
    assert out.dtype == torch.bfloat16
    torch.testing.assert_close(out, x + sincos_1d(torch.arange(6), 8).bfloat16())
    assert ape.has_embed and not ape.has_rotate and not ape.has_bias


def test_sincos_bad_input():
    with pytest.raises(ValueError, match="dim"):
        sincos_1d(torch.arange(3), 5)
    with pytest.raises(ValueError, match="dim"):
        sincos_2d(2, 2, 6)
    with pytest.raises(ValueError, match="height"):
        sincos_2d(0, 2, 8)
    with pytest.raises(ValueError, match="dim"):
        SinCosAPE(7)
    with pytest.raises(ValueError, match="tokens"):
        SinCosAPE(8).embed(torch.zeros(1, 5, 8), Positions.grid_2d(2, 2))
    with pytest.raises(ValueError, match="channels"):
        SinCosAPE(8).embed(torch.zeros(1, 4, 6), None)
    with pytest.raises(ValueError, match="ids"):
        SinCosAPE(8).embed(torch.zeros(1, 4, 8), Positions.sequence(3))


# ---- zoo.pe string factory ---------------------------------------------------------------------------------

def test_factory_builds_each_kind():
    assert isinstance(pe.create("sincos", dim=8), SinCosAPE)
    assert isinstance(pe.create("learned", num_tokens_or_grid=(2, 3), dim=8), pe.LearnedAPE)
    r = pe.create("rope", head_dim=8, layout="interleaved")
    assert isinstance(r, pe.RoPE) and r.layout == "interleaved"
    assert isinstance(pe.create("alibi", num_heads=4), pe.ALiBi)
    assert {"sincos", "learned", "rope", "alibi"} <= set(pe.list_pe())


def test_factory_unknown_kind_suggests_closest():
    with pytest.raises(ValueError) as e:
        pe.create("rop", head_dim=8)
    msg = str(e.value)
    assert "'rope'" in msg and "alibi" in msg and "sincos" in msg


def test_register_pe():
    class Dummy(pe.PositionalEncoding):
        pass

    try:
        pe.register_pe("dummy_test_kind", Dummy)
        assert isinstance(pe.create("dummy_test_kind"), Dummy)
        with pytest.raises(ValueError, match="already registered"):
            pe.register_pe("dummy_test_kind", SinCosAPE)
    finally:
        pe.unregister_pe("dummy_test_kind")
