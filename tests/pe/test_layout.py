"""LayoutLM 2D tables, LayoutLMv3 spatial embedding, buckets and spatial bias (HF transformers as the reference)."""
import math

import pytest
import torch

from zoo.pe.layout import (ForwardMemo, LayoutLM2DEmbedding, LayoutLMv3SpatialBias, LayoutLMv3SpatialEmbedding,
                           check_boxes, layoutlmv3_bucket, roberta_position_ids)
from zoo.positions import Positions

import transformers
from transformers.models.layoutlmv3 import modeling_layoutlmv3 as hf_v3  # noqa: E402


def _boxes(b=2, n=9, seed=0):
    g = torch.Generator().manual_seed(seed)
    x0 = torch.randint(0, 800, (b, n), generator=g)
    y0 = torch.randint(0, 800, (b, n), generator=g)
    return torch.stack([x0, y0, x0 + torch.randint(0, 200, (b, n), generator=g),
                        y0 + torch.randint(0, 200, (b, n), generator=g)], -1)


def test_layoutlm_2d_is_the_sum_of_shared_tables():
    pe = LayoutLM2DEmbedding(8)
    bx = torch.tensor([[[10, 20, 10, 700]]])
    W = {t: getattr(pe, f"{t}_position_embeddings").weight for t in "xyhw"}
    want = W["x"][10] * 2 + W["y"][20] + W["y"][700] + W["h"][680] + W["w"][0]   # x0 == x1 share the x table
    x = torch.zeros(1, 1, 8)
    assert torch.allclose(pe.embed(x, Positions(boxes=bx))[0, 0], want, atol=1e-6)


def test_layoutlmv3_embedding_matches_hf():
    cfg = transformers.LayoutLMv3Config(hidden_size=48, coordinate_size=8, shape_size=8, num_attention_heads=4)
    ref = hf_v3.LayoutLMv3TextEmbeddings(cfg)
    pe = LayoutLMv3SpatialEmbedding(8, 8)
    for t in "xyhw":
        getattr(pe, f"{t}_position_embeddings").weight.data.copy_(getattr(ref, f"{t}_position_embeddings").weight)
    bx = _boxes()
    bx[0, 0] = torch.tensor([500, 600, 400, 300])       # inverted box: h, w clipped to 0 as HF does
    assert torch.equal(pe.layout(bx), ref.calculate_spatial_position_embeddings(bx))


def test_roberta_positions_match_hf():
    ids = torch.tensor([[0, 5, 6, 2, 1, 1], [0, 7, 1, 8, 2, 1]])
    cfg = transformers.LayoutLMv3Config(hidden_size=48, coordinate_size=8, shape_size=8, num_attention_heads=4)
    ref = hf_v3.LayoutLMv3TextEmbeddings(cfg).create_position_ids_from_input_ids(ids, 1)
    assert torch.equal(roberta_position_ids(ids, 1), ref)


@pytest.mark.parametrize("bins,dist", [(32, 128), (64, 256)])
def test_buckets_match_hf(bins, dist):
    rel = torch.arange(-600, 601)
    cfg = transformers.LayoutLMv3Config(hidden_size=48, coordinate_size=8, shape_size=8, num_attention_heads=4,
                                        num_hidden_layers=1)
    enc = hf_v3.LayoutLMv3Encoder(cfg)
    assert torch.equal(layoutlmv3_bucket(rel, bins, dist), enc.relative_position_bucket(rel, num_buckets=bins,
                                                                                          max_distance=dist))


def test_spatial_bias_matches_hf_on_the_bias_hook():
    H, D, n = 4, 12, 30
    cfg = transformers.LayoutLMv3Config(hidden_size=H * D, coordinate_size=8, shape_size=8, num_attention_heads=H,
                                        num_hidden_layers=1)
    enc = hf_v3.LayoutLMv3Encoder(cfg)
    for t in (enc.rel_pos_bias, enc.rel_pos_x_bias, enc.rel_pos_y_bias):
        torch.nn.init.normal_(t.weight)
    pe = LayoutLMv3SpatialBias(H)
    pe.load_state_dict({f"{t}.weight": getattr(enc, t).weight for t in ("rel_pos_bias", "rel_pos_x_bias",
                                                                        "rel_pos_y_bias")})
    bx = _boxes(2, n, seed=3)
    ids = torch.arange(n).expand(2, n)
    want = enc._compute_position_bias(ids, bx)                                   # already / sqrt(D)
    q = torch.randn(2, H, n, D)
    got = pe.bias(q, q, Positions(ids=ids, boxes=bx), D ** -0.5)
    assert got.shape == (2, H, n, n)
    assert torch.allclose(got, want, atol=1e-6)
    # y1 (bottom) is used, y0 is not
    moved = bx.clone()
    moved[..., 1] = (moved[..., 1] // 2)
    assert torch.equal(pe.bias(q, q, Positions(ids=ids, boxes=moved), D ** -0.5), got)
    moved[..., 3] = moved[..., 3] // 3
    assert not torch.allclose(pe.bias(q, q, Positions(ids=ids, boxes=moved), D ** -0.5), got)


def test_spatial_bias_translation_invariant_and_memoised():
    pe = LayoutLMv3SpatialBias(2)
    bx = _boxes(1, 7)
    q = torch.randn(1, 2, 7, 4)
    a = pe.bias(q, q, Positions(boxes=bx), 0.5)
    b = pe.bias(q, q, Positions(ids=torch.arange(7) + 40, boxes=bx + 17), 0.5)
    assert torch.allclose(a, b)
    calls = []
    orig = pe.full_bias
    pe.full_bias = lambda *a: calls.append(1) or orig(*a)
    pos = Positions(boxes=bx)
    with pe.shared(pos):
        pe.bias(q, q, pos, 0.5)
        pe.bias(q, q, pos, 0.5)
    pe.bias(q, q, pos, 0.5)
    assert len(calls) == 2                              # once inside the scope, once outside


@pytest.mark.parametrize("bad,msg", [(torch.tensor([[[0, 0, 1001, 5]]]), "0..1000"),
                                     (torch.tensor([[[-1, 0, 10, 5]]]), "0..1000"),
                                     (torch.zeros(1, 3, 5), "shape"),
                                     (torch.tensor([[[0.0, float("nan"), 1.0, 2.0]]]), "NaN")])
def test_check_boxes_errors(bad, msg):
    with pytest.raises(ValueError, match=msg):
        check_boxes(bad)
    with pytest.raises(ValueError, match="boxes"):
        LayoutLM2DEmbedding(4).embed(torch.zeros(1, bad.shape[1], 4), Positions(boxes=bad))


def test_missing_boxes_and_memo_scope_restores():
    with pytest.raises(ValueError, match="Positions.boxes"):
        LayoutLMv3SpatialBias(2).bias(torch.zeros(1, 2, 3, 4), torch.zeros(1, 2, 3, 4), None, 1.0)
    memo = ForwardMemo()
    with memo.scope():
        assert memo.get(1, lambda: "a") == "a" and memo.get(1, lambda: "b") == "a"
    assert memo.get(1, lambda: "c") == "c"
    assert math.isclose(check_boxes(torch.tensor([[[0.4, 1.6, 2.0, 999.5]]])).sum().item(), 0 + 2 + 2 + 1000)


def test_check_boxes_refuses_unit_normalised_boxes():
    # 0..1 boxes (HF BROS's convention) rounded onto the 0..1000 grid would all be 0 or 1: refused, naming 0..1000
    unit = torch.tensor([[[0.084, 0.109, 0.136, 0.119], [0.0, 0.0, 1.0, 1.0]]])
    for bx in (unit, unit.double(), unit.half()):
        with pytest.raises(ValueError, match=r"boxes .*0\.\.1\b.*0\.\.1000.*\* 1000"):
            check_boxes(bx)
    with pytest.raises(ValueError, match=r"0\.\.1000"):
        LayoutLMv3SpatialEmbedding(4, 4).embed(torch.zeros(1, 2, 24), Positions(boxes=unit))
    # integer boxes in 0..1 are tiny boxes on the 0..1000 grid; float boxes on the 0..1000 scale and all-zero
    # (padding) boxes stay as they are
    assert torch.equal(check_boxes(torch.tensor([[[0, 0, 1, 1]]])), torch.tensor([[[0, 0, 1, 1]]]))
    assert torch.equal(check_boxes(torch.tensor([[[84.0, 109.0, 136.4, 119.0]]])),
                       torch.tensor([[[84, 109, 136, 119]]]))
    assert torch.equal(check_boxes(torch.zeros(1, 3, 4)), torch.zeros(1, 3, 4, dtype=torch.long))
