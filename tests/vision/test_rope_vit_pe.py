"""RoPE-ViT with ``pe=``: any 2D encoding in place of its 2D RoPE.  The registered 2D RoPEs given through ``pe=``
reproduce timm's RoPE-ViTs (Eva) on timm's weights; a RoPE-Axial checkpoint loads strictly into a parameter-free
swap (``pretrained_file=``); misfits, contradictory arguments and checkpoints with no place to go are refused."""
import pytest
import torch

import timm

import zoo
import zoo.pe as P
from zoo.errors import CheckpointError
from zoo.nn.fit import PEFitError

TINY = dict(img_size=32, patch_size=8, embed_dim=64, depth=2, num_heads=2, num_classes=5)


def _timm(name, seed):
    torch.manual_seed(seed)
    t = timm.create_model(name, pretrained=False, **TINY).eval()
    with torch.no_grad():
        for n, p in t.named_parameters():                       # nothing matches by accident (layer scale, freqs)
            p.copy_(torch.randn_like(p) * (0.5 if n.endswith("freqs") else 0.05) + ("gamma" in n))
    return t


def test_axial_rope_through_pe_equals_timm_rope_vit(tmp_path):
    t = _timm("vit_small_patch16_rope_224", 0)
    path = tmp_path / "axial.pt"
    torch.save(t.state_dict(), path)
    m = zoo.create("vit_rope_small", pe={"name": "rope2d_axial", "theta": 100.0}, pretrained_file=str(path),
                   **TINY).eval()
    assert m.rope is None and m.config["pe"] == {"name": "rope2d_axial", "theta": 100.0}
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(m(x), t(x), atol=1e-5, rtol=1e-5)


def test_mixed_rope_through_pe_equals_timm_mixed_rope_vit():
    t = _timm("vit_small_patch16_rope_mixed_224", 1)
    m = zoo.create("vit_rope_small", pe={"name": "rope2d_mixed", "theta": 10.0}, **TINY).eval()
    sd = {("pe.freqs" if k == "rope.freqs" else k): v for k, v in t.state_dict().items()}
    m.load_state_dict(sd, strict=True)
    assert "pe.freqs" in m.no_weight_decay() and "pe.freqs" in dict(m.named_parameters())
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(m(x), t(x), atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("name", P.list_pe(positions="2d"))
def test_every_2d_encoding_replaces_the_rope(name):
    torch.manual_seed(0)
    spec = {"name": name, **P.example_kwargs(name, dim=64, head_dim=32, num_heads=2, max_len=17, depth=2,
                                             grid_size=(4, 4))}
    m = zoo.create("vit_rope_mixed_small", pe=spec, **TINY)
    assert m.rope is None and not any(k.startswith("rope.") for k in m.state_dict())
    pe_params = [p for k, p in m.named_parameters() if k.startswith(("pe.", "embed_pe.")) or ".attn.pe." in k]
    y = m(torch.randn(2, 3, 32, 32))
    assert y.shape == (2, 5) and torch.isfinite(y).all()
    y.pow(2).sum().backward()
    for p in pe_params:
        assert p.grad is not None and torch.isfinite(p.grad).all()
    if pe_params:
        assert any(bool(p.grad.abs().sum() > 0) for p in pe_params), "no gradient reaches the encoding"


def test_axial_checkpoint_extends_into_a_parameter_free_swap(tmp_path):
    torch.manual_seed(0)
    plain = zoo.create("vit_rope_small", **TINY).eval()
    with torch.no_grad():                                        # layer scale 1: attention shows in the logits
        for blk in plain.blocks:
            blk.gamma_1.fill_(1.0)
            blk.gamma_2.fill_(1.0)
    path = tmp_path / "plain.pt"
    torch.save(plain.state_dict(), path)
    swap = zoo.create("vit_rope_small", pe="md_lrpe_cosine", pretrained_file=str(path), **TINY).eval()
    for k, v in plain.state_dict().items():                      # every trained weight arrived
        torch.testing.assert_close(swap.state_dict()[k], v)
    x = torch.randn(1, 3, 32, 32)
    with torch.no_grad():
        a, b = swap.forward_features(x), plain.forward_features(x)
    assert (a - b).abs().max() > 1e-2                            # the encoding did change (features ~ unit scale)


def test_mixed_checkpoint_into_a_pe_model_is_refused_naming_the_frequencies(tmp_path):
    mixed = zoo.create("vit_rope_mixed_small", **TINY)
    path = tmp_path / "mixed.pt"
    torch.save(mixed.state_dict(), path)
    with pytest.raises(CheckpointError, match=r"rope\.freqs.*rope2d_axial"):
        zoo.create("vit_rope_small", pe="rope2d_axial", pretrained_file=str(path), **TINY)


def test_misfit_names_both_positions_kinds():
    with pytest.raises(PEFitError) as e:
        zoo.create("vit_rope_small", pe="alibi", **TINY)
    assert "'1d'" in str(e.value) and "'2d'" in str(e.value)


def test_rope_arguments_with_pe_are_refused():
    from domains.vision.rope_vit import RoPEVisionTransformer
    with pytest.raises(ValueError, match="rope=None"):
        RoPEVisionTransformer(pe="rope2d_axial", **TINY)                  # rope defaults to "axial"
    with pytest.raises(ValueError, match="rope_theta"):
        RoPEVisionTransformer(pe="rope2d_axial", rope=None, rope_theta=10.0, **TINY)
    with pytest.raises(ValueError, match="rope must be one of"):
        RoPEVisionTransformer(rope=None, **TINY)

