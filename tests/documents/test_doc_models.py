"""Document encoders: HF transformers parity (LayoutLM, LayoutLMv3 text part, BROS), registry smoke, bad input."""
import pytest
import torch

from domains.documents import models as dm
from zoo.positions import Positions

import transformers

B, N, V = 2, 13, 120


def _inputs(seed=0, pad_id=0, n=N):
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(5, V, (B, n), generator=g)
    x0 = torch.randint(0, 900, (B, n), generator=g)
    y0 = torch.randint(0, 900, (B, n), generator=g)
    x1 = (x0 + torch.randint(0, 100, (B, n), generator=g)).clamp(max=1000)
    y1 = (y0 + torch.randint(0, 100, (B, n), generator=g)).clamp(max=1000)
    boxes = torch.stack([x0, y0, x1, y1], -1)
    mask = torch.ones(B, n, dtype=torch.long)
    mask[1, -4:] = 0                                    # right padding in row 1
    ids[1, -4:] = pad_id
    return ids, boxes, mask


def _hf_cfg(cls, **kw):
    base = dict(vocab_size=V, hidden_size=96, num_hidden_layers=2, num_attention_heads=4, intermediate_size=160,
                hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0)
    base.update(kw)
    cfg = cls(**base)
    cfg._attn_implementation = "eager"
    return cfg


def _ours(kind, cfg, **kw):
    return dm.DocEncoder(kind, vocab_size=V, dim=cfg.hidden_size, depth=cfg.num_hidden_layers,
                         num_heads=cfg.num_attention_heads, mlp_hidden=cfg.intermediate_size,
                         max_positions=cfg.max_position_embeddings, norm_eps=cfg.layer_norm_eps, drop=0.0,
                         attn_drop=0.0, **kw).eval()


def _report(name, diff):
    print(f"\nPARITY {name}: max abs diff {diff:.3e}")


def test_layoutlm_parity():
    torch.manual_seed(0)
    cfg = _hf_cfg(transformers.LayoutLMConfig, max_position_embeddings=64)
    hf = transformers.LayoutLMModel(cfg).eval()
    ours = _ours("layoutlm", cfg)
    ours.load_state_dict(dm.hf_to_zoo(hf.state_dict(), ours))
    ids, boxes, mask = _inputs(1)
    tt = torch.randint(0, 2, ids.shape)
    with torch.no_grad():
        ref = hf(input_ids=ids, bbox=boxes, attention_mask=mask, token_type_ids=tt).last_hidden_state
        out = ours(ids, boxes, mask, token_type_ids=tt)
    diff = (out - ref).abs().max().item()
    _report("layoutlm", diff)
    assert diff < 1e-5


def test_layoutlmv3_parity():
    torch.manual_seed(1)
    cfg = _hf_cfg(transformers.LayoutLMv3Config, max_position_embeddings=66, coordinate_size=16, shape_size=16,
                  visual_embed=False, pad_token_id=1, layer_norm_eps=1e-5)
    hf = transformers.LayoutLMv3Model(cfg).eval()
    with torch.no_grad():                               # large bias tables, so a wrong bucket would show
        for t in (hf.encoder.rel_pos_bias, hf.encoder.rel_pos_x_bias, hf.encoder.rel_pos_y_bias):
            t.weight.normal_(std=2.0)
    ours = _ours("layoutlmv3", cfg, coordinate_size=16, shape_size=16)
    ours.load_state_dict(dm.hf_to_zoo(hf.state_dict(), ours))
    ids, boxes, mask = _inputs(2, pad_id=1, n=40)       # > 16 tokens: 1D buckets in the log range
    boxes[0, :, 3] = torch.linspace(0, 1000, 40).long().clamp(min=boxes[0, :, 1])   # wide y1 spread
    with torch.no_grad():
        ref = hf(input_ids=ids, bbox=boxes, attention_mask=mask).last_hidden_state
        out = ours(ids, boxes, mask)
    diff = (out - ref).abs().max().item()
    _report("layoutlmv3", diff)
    assert diff < 1e-5
    # the bias matters: zeroing the y (bottom edge) table changes the output
    with torch.no_grad():
        ours.rel.rel_pos_y_bias.weight.zero_()
        assert (ours(ids, boxes, mask) - ref).abs().max() > 1e-3


def test_bros_parity():
    torch.manual_seed(2)
    cfg = _hf_cfg(transformers.BrosConfig, hidden_size=128, max_position_embeddings=64)
    hf = transformers.BrosModel(cfg).eval()
    with torch.no_grad():
        hf.bbox_embeddings.bbox_projection.weight.normal_(std=0.5)
    ours = _ours("bros", cfg)
    ours.load_state_dict(dm.hf_to_zoo(hf.state_dict(), ours))
    ids, boxes, mask = _inputs(3)
    with torch.no_grad():
        ref = hf(input_ids=ids, bbox=boxes.float() / 1000.0, attention_mask=mask).last_hidden_state
        out = ours(ids, boxes, mask)
    diff = (out - ref).abs().max().item()
    _report("bros", diff)
    assert diff < 1e-5


def test_key_map_rejects_wrong_shapes_and_unknown_keys():
    cfg = _hf_cfg(transformers.LayoutLMConfig, max_position_embeddings=64)
    hf = transformers.LayoutLMModel(cfg)
    ours = _ours("layoutlm", cfg)
    sd = hf.state_dict()
    bad = dict(sd)
    bad["embeddings.x_position_embeddings.weight"] = torch.zeros(1024, 8)
    with pytest.raises(ValueError, match="shape mismatch"):
        dm.hf_to_zoo(bad, ours)
    extra = dict(sd)
    extra["encoder.layer.0.something.weight"] = torch.zeros(1)
    with pytest.raises(ValueError, match="does not know"):
        dm.hf_to_zoo(extra, ours)
    # prefixed keys (LayoutLMForTokenClassification's "layoutlm.") are accepted
    pref = {"layoutlm." + k: v for k, v in sd.items()}
    assert set(dm.hf_to_zoo(pref, ours)) == set(ours.state_dict())


def test_shared_bias_built_once_per_forward():
    m = dm.DocEncoder("bros", vocab_size=V, dim=64, depth=3, num_heads=2, mlp_hidden=64).eval()
    calls = []
    orig = m.rel.memory
    m.rel.memory = lambda boxes: calls.append(1) or orig(boxes)
    ids, boxes, mask = _inputs(4)
    m(ids, boxes, mask)
    assert len(calls) == 1
    assert sum(1 for k in m.state_dict() if "bbox_projection" in k) == 1


@pytest.mark.parametrize("name", ["doc_layoutlm_tiny", "doc_layoutlmv3_tiny", "doc_bros_tiny",
                                  "doc_graph_rope_tiny", "doc_v2pe_tiny"])
def test_registered_models_forward_backward(name):
    import zoo
    kw = dict(vocab_size=V) if "v2pe" in name or "graph" in name else dict(vocab_size=V, depth=1)
    m = zoo.create(name, num_classes=3, **kw)
    ids, boxes, mask = _inputs(5, pad_id=1 if "v3" in name else 0)
    extra = {}
    if "v2pe" in name:
        extra["patches"] = torch.randn(B, 8, 768)
    out = m(ids, boxes, torch.as_tensor(mask).bool(), **extra)
    assert out.shape == (B, N, 3)
    out.float().sum().backward()
    grads = [p.grad for p in m.parameters() if p.requires_grad]
    assert any(g is not None and g.abs().sum() > 0 for g in grads)


@pytest.mark.parametrize("name", ["doc_layoutlm_tiny", "doc_bros_tiny", "doc_graph_rope_tiny", "doc_v2pe_tiny"])
def test_bad_boxes_raise_clear_errors(name):
    import zoo
    m = zoo.create(name, vocab_size=V, depth=1)
    ids, boxes, mask = _inputs(6)
    bad = boxes.clone()
    bad[0, 0, 2] = 1001
    with pytest.raises(ValueError, match="boxes"):
        m(ids, bad, mask)
    with pytest.raises(ValueError, match="boxes"):
        m(ids, boxes[..., :3], mask)
    with pytest.raises(ValueError, match="boxes"):
        m(ids, -boxes - 1, mask)


def test_layoutlm_rejects_inverted_boxes_and_long_input():
    m = dm.doc_layoutlm_tiny(vocab_size=V, depth=1, max_positions=16)
    ids, boxes, mask = _inputs(7)
    inv = boxes.clone()
    inv[0, 0, 0], inv[0, 0, 2] = 500, 400
    with pytest.raises(ValueError, match="x0 <= x1"):
        m(ids, inv, mask)
    with pytest.raises(ValueError, match="max_positions"):
        m(torch.randint(5, V, (1, 20)), torch.zeros(1, 20, 4, dtype=torch.long))


def test_positions_input_equals_keyword_input():
    m = dm.doc_layoutlmv3_tiny(vocab_size=V, depth=1).eval()
    ids, boxes, mask = _inputs(8, pad_id=1)
    a = m(ids, boxes, mask)
    b = m(ids, pos=Positions(boxes=boxes, mask=mask.bool()))
    assert torch.equal(a, b)


def test_v2pe_model_stride_changes_output_and_training_draws():
    m = dm.doc_v2pe_tiny(vocab_size=V, depth=1, num_image_token=4).eval()
    ids, boxes, mask = _inputs(9)
    patches = torch.randn(B, 8, 768)
    a = m(ids, boxes, mask, patches=patches)
    m.stride = 1
    b = m(ids, boxes, mask, patches=patches)
    assert (a - b).abs().max() > 1e-5                  # the visual stride moves the words' positions
    m.train()
    m.generator = torch.Generator().manual_seed(0)
    pos1 = m.positions(torch.tensor([[True] * 8 + [False] * 3]), torch.ones(1, 11, dtype=torch.bool))
    assert pos1[0, 8] == torch.ceil(pos1[0, 7]) + 1


def test_graph_rope_model_invariant_to_order_shift():
    m = dm.doc_graph_rope_tiny(vocab_size=V).eval()
    ids, boxes, mask = _inputs(10)
    order = torch.arange(N).expand(B, N)
    a = m(ids, boxes, mask, order=order)
    b = m(ids, boxes, mask, order=order + 100)
    c = m(ids, boxes, mask, order=order.flip(-1))
    assert torch.equal(a, b)
    assert (a - c).abs().max() > 1e-4


# ---- bad input at the entry point of every registered document model ------------------------------------------

def _registered():
    import zoo
    return zoo.list_models(domain="documents")


def _build(name):
    import zoo
    return zoo.create(name, vocab_size=V, depth=1).eval()


@pytest.mark.parametrize("name", _registered())
def test_boxes_in_unit_range_are_refused(name):
    # HF BROS takes boxes normalised to 0..1; rounded to the 0..1000 integer grid they would all become 0 or 1 and
    # the layout would be gone: every model must refuse them and name the 0..1000 convention
    m = _build(name)
    ids, boxes, mask = _inputs(11)
    unit = boxes.float() / 1000.0
    with pytest.raises(ValueError, match=r"boxes.*0\.\.1\b.*0\.\.1000"):
        m(ids, unit, mask)
    with pytest.raises(ValueError, match=r"boxes.*0\.\.1\b.*0\.\.1000"):
        m(ids, pos=Positions(boxes=unit, mask=mask.bool()))
    # the same boxes in 0..1000 as floats (rounded), and all-zero padding boxes, are fine
    with torch.no_grad():
        assert torch.equal(m(ids, boxes.float(), mask), m(ids, boxes, mask))
        assert torch.isfinite(m(ids, torch.zeros(B, N, 4), mask)).all()


@pytest.mark.parametrize("name", _registered())
def test_empty_input_is_refused(name):
    m = _build(name)
    ids, boxes, mask = _inputs(12)
    for sl in ((slice(None), slice(0, 0)), (slice(0, 0), slice(None))):      # n == 0, then b == 0
        with pytest.raises(ValueError, match=r"input_ids .*no tokens"):
            m(ids[sl], boxes[sl], mask[sl])


@pytest.mark.parametrize("name", _registered())
def test_token_ids_outside_the_vocabulary_are_refused(name):
    m = _build(name)
    ids, boxes, mask = _inputs(13)
    for bad in (V, V + 7, -1):
        wrong = ids.clone()
        wrong[1, 3] = bad
        with pytest.raises(ValueError, match=rf"input_ids.* {bad}\b.*vocab_size={V}\b"):
            m(wrong, boxes, mask)


def test_token_types_and_positions_out_of_range_are_refused():
    m = dm.doc_layoutlm_tiny(vocab_size=V, depth=1).eval()
    ids, boxes, mask = _inputs(14)
    with pytest.raises(ValueError, match=r"token_type_ids holds 2, outside 0\.\.1 \(type_vocab_size=2\)"):
        m(ids, boxes, mask, token_type_ids=torch.full_like(ids, 2))
    with pytest.raises(ValueError, match=r"token_type_ids must be an int \[b, n\] = \[2, 13\]"):
        m(ids, boxes, mask, token_type_ids=torch.zeros(B, N + 1, dtype=torch.long))
    with pytest.raises(ValueError, match=r"position_ids holds -1"):
        m(ids, boxes, mask, position_ids=torch.arange(N).expand(B, N) - 1)
    with pytest.raises(ValueError, match=r"position_ids must be an int \[b, n\]"):
        m(ids, boxes, mask, position_ids=torch.arange(N).float())
