"""BROS crel box encoding against HF transformers' BrosBboxEmbeddings and the attention formula."""
import pytest
import torch

from zoo.pe.bros import BROS_CORNERS, BrosRelativeBias, bros_corners, bros_sinusoid
from zoo.positions import Positions

import transformers
from transformers.models.bros import modeling_bros as hf_bros  # noqa: E402


def _cfg(hidden=128, heads=4):
    return transformers.BrosConfig(hidden_size=hidden, num_attention_heads=heads)


def _boxes(b=2, n=7, seed=0):
    g = torch.Generator().manual_seed(seed)
    x0 = torch.randint(0, 800, (b, n), generator=g)
    y0 = torch.randint(0, 800, (b, n), generator=g)
    return torch.stack([x0, y0, x0 + torch.randint(0, 200, (b, n), generator=g),
                        y0 + torch.randint(0, 200, (b, n), generator=g)], -1)


def test_corner_expansion():
    bx = torch.tensor([1, 2, 3, 4])
    assert bros_corners(bx).tolist() == [1, 2, 3, 2, 3, 4, 1, 4]              # TL, TR, BR, BL
    assert BROS_CORNERS == (0, 1, 2, 1, 2, 3, 0, 3)


def test_sinusoid_matches_hf():
    cfg = _cfg()
    ref = hf_bros.BrosPositionalEmbedding2D(cfg)
    rel = torch.randn(3, 5, 2, 8) * 50
    assert torch.allclose(bros_sinusoid(rel, cfg.dim_bbox_sinusoid_emb_1d), ref(rel), atol=1e-6)


def test_memory_matches_hf_bbox_embeddings():
    cfg = _cfg()
    ref = hf_bros.BrosBboxEmbeddings(cfg)
    torch.nn.init.normal_(ref.bbox_projection.weight)
    pe = BrosRelativeBias(128, 32)
    pe.bbox_projection.weight.data.copy_(ref.bbox_projection.weight)
    bx = _boxes()
    want = ref(bros_corners(bx).float() / 1000.0 * cfg.bbox_scale)              # [i, j, b, d]
    got = pe.memory(bx)                                                          # [b, i, j, d]
    assert torch.allclose(got, want.permute(2, 0, 1, 3), atol=1e-5)


def test_bias_is_scaled_q_dot_p_and_translation_invariant():
    pe = BrosRelativeBias(64, 16)
    torch.nn.init.normal_(pe.bbox_projection.weight)
    bx = _boxes(1, 6)
    q = torch.randn(1, 4, 6, 16)
    got = pe.bias(q, q, Positions(boxes=bx), 0.25)
    P = pe.memory(bx)
    want = torch.stack([torch.stack([torch.stack([q[0, h, i] @ P[0, i, j] for j in range(6)]) for i in range(6)])
                        for h in range(4)])[None] * 0.25
    assert torch.allclose(got, want, atol=1e-5)
    shifted = bx + torch.tensor([30, 40, 30, 40])
    assert torch.allclose(pe.bias(q, q, Positions(boxes=shifted), 0.25), got, atol=1e-4)
    assert not torch.allclose(pe.bias(q, q, Positions(boxes=bx.flip(1)), 0.25), got, atol=1e-3)


def test_errors():
    pe = BrosRelativeBias(64, 16)
    q = torch.randn(1, 4, 3, 16)
    with pytest.raises(ValueError, match="Positions.boxes"):
        pe.bias(q, q, Positions(), 1.0)
    with pytest.raises(ValueError, match="0..1000"):
        pe.bias(q, q, Positions(boxes=torch.full((1, 3, 4), 2000)), 1.0)
    # HF BROS's own input convention (boxes / page size, 0..1) is refused, not rounded to 0 / 1
    with pytest.raises(ValueError, match=r"0\.\.1\b.*0\.\.1000"):
        pe.bias(q, q, Positions(boxes=_boxes(1, 3).float() / 1000), 1.0)
    with pytest.raises(ValueError, match="hidden_size"):
        BrosRelativeBias(40, 16)
