"""DETR with ``pe=``: any 2D encoding in the encoder in place of its iRPE.  The iRPE given through ``pe=`` with the
official ``rpe-1.9-product-ctx-1-k`` settings is the preset (same keys, same outputs); every 2D encoding trains;
relative ones keep DETR's padding invariance; misfits and contradictory arguments are refused; an encoding given by
``pe=`` keeps its own initialisation (DETR's xavier pass covers only its own weights)."""
import pytest
import torch

import zoo
import zoo.pe as P
from domains.vision import detr as D
from zoo.errors import ConfigError
from zoo.nn.fit import PEFitError

TINY = dict(num_classes=3, num_queries=4, dropout=0.0)
IRPE_OFFICIAL = {"name": "irpe", "ratio": 1.9, "method": "product", "mode": "ctx", "shared_head": True,
                 "rpe_on": "k", "skip": 0}


def _spec(name):
    return {"name": name, **P.example_kwargs(name, dim=64, head_dim=16, num_heads=4, max_len=64, depth=2,
                                             grid_size=(8, 8))}


def test_irpe_through_pe_is_the_preset(one_thread):
    torch.manual_seed(0)
    preset = zoo.create("detr_irpe_tiny", **TINY).eval()
    swap = zoo.create("detr_irpe_tiny", pe=IRPE_OFFICIAL, **TINY).eval()
    assert swap.config["enc_rpe2d"] == "" and swap.config["pe"]["name"] == "irpe"
    with torch.no_grad():
        for layer in preset.transformer.encoder.layers:                          # a live iRPE term
            layer.self_attn.pe.rpe_k.lookup_table_weight.normal_(0, 0.5)
    swap.load_state_dict(preset.state_dict(), strict=True)                      # key for key
    x = torch.randn(2, 3, 64, 96)
    with torch.no_grad():
        a, b = preset(x), swap(x)
    torch.testing.assert_close(b["pred_logits"], a["pred_logits"])
    torch.testing.assert_close(b["pred_boxes"], a["pred_boxes"])


@pytest.mark.parametrize("name", P.list_pe(positions="2d"))
def test_every_2d_encoding_trains_in_the_encoder(name, one_thread):
    torch.manual_seed(0)
    m = zoo.create("detr_irpe_tiny", pe=_spec(name), **TINY)
    assert all(type(layer.self_attn.pe).__name__ != "IRPE" or name == "irpe" for layer in m.transformer.encoder.layers)
    pe_params = [p for k, p in m.named_parameters()
                 if k.startswith(("transformer.pe.", "transformer.embed_pe.")) or ".self_attn.pe." in k]
    out = m(torch.randn(2, 3, 48, 80))
    assert out["pred_logits"].shape == (2, 4, 4) and torch.isfinite(out["pred_boxes"]).all()
    (out["pred_logits"].pow(2).mean() + out["pred_boxes"].sum()).backward()
    for p in pe_params:
        assert p.grad is not None and torch.isfinite(p.grad).all()
    if pe_params:
        assert any(bool(p.grad.abs().sum() > 0) for p in pe_params), "no gradient reaches the encoding"


@pytest.mark.parametrize("name", [n for n in P.list_pe(positions="2d") if "embed" not in P.info(n).hooks])
def test_attention_encodings_keep_padding_invariance(name, one_thread):
    # padded tokens keep their grid places and are masked as keys: a padded image gives the image's outputs
    torch.manual_seed(0)
    m = zoo.create("detr_irpe_tiny", pe=_spec(name), **TINY).eval()
    with torch.no_grad():
        for n, p in m.named_parameters():
            if ".pe." in n or n.startswith("transformer.pe."):
                p.add_(0.3 * torch.randn_like(p))                               # a live encoding term
    img = torch.randn(1, 3, 48, 64)
    padded = torch.randn(1, 3, 80, 96)
    padded[:, :, :48, :64] = img
    mask = torch.zeros(1, 80, 96, dtype=torch.bool)
    mask[:, :48, :64] = True
    with torch.no_grad():
        alone, batched = m(img), m(padded, mask)
    torch.testing.assert_close(batched["pred_boxes"], alone["pred_boxes"], atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(batched["pred_logits"], alone["pred_logits"], atol=1e-4, rtol=1e-4)


def test_an_encoding_given_by_pe_keeps_its_own_initialisation():
    torch.manual_seed(0)
    m = zoo.create("detr_irpe_tiny", pe={"name": "rope2d_mixed", "theta": 10.0}, **TINY)
    ref = P.build({"name": "rope2d_mixed", "theta": 10.0}, dim=64, head_dim=16, num_heads=4, causal=False,
                  max_len=64, depth=2, grid_size=(8, 8))
    # RoPE-Mixed starts from theta-10 frequencies turned by a random angle per head: the (x, y) frequency vectors
    # have the theta-10 magnitudes (not xavier-uniform noise)
    mag = m.transformer.pe.freqs.detach().norm(dim=0)                           # [depth, heads, d/4]
    torch.testing.assert_close(mag, ref.freqs.detach().norm(dim=0), atol=1e-6, rtol=1e-5)
    assert mag.max() == pytest.approx(1.0) and mag.min() > 0


def test_misfit_and_contradictions_are_refused():
    with pytest.raises(PEFitError) as e:
        zoo.create("detr_irpe_tiny", pe="alibi", **TINY)
    assert "'1d'" in str(e.value) and "'2d'" in str(e.value)
    with pytest.raises(ConfigError, match="enc_rpe2d=None"):
        zoo.create("detr_irpe_tiny", pe="rope2d_axial", enc_rpe2d="rpe-1.9-product-ctx-1-k", **TINY)
    with pytest.raises(ConfigError, match="either an iRPE"):
        D.DETRTransformer(64, 4, 1, 1, 64, rpe=D.parse_rpe_string("rpe-1.9-product-ctx-1-k"), pe="rope2d_axial")
