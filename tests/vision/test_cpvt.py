"""CPVT (DeiT + PEG after block 0): geometry against timm's DeiT, forward/backward, any image size, the PEG's place
in the forward, CPVT-GAP pooling, timm/zoo registry, and loading PEG weights from timm Twins / PosConv keys."""
import logging

import pytest
import torch

import domains.vision.cpvt as cpvt
import zoo
from domains.vision.models import VisionTransformer
from zoo import Positions
from zoo.errors import CheckpointError
from zoo.pe.peg import PEG

SMALL = dict(img_size=32, patch_size=8, depth=2)
NAMES = ["cpvt_tiny", "cpvt_small", "cpvt_base", "cpvt_tiny_gap", "cpvt_small_gap", "cpvt_base_gap"]


def test_registered_in_zoo_and_timm():
    import timm
    from zoo.registry import _REGISTRY
    for name in NAMES:
        assert name in _REGISTRY and _REGISTRY[name].paper == "https://arxiv.org/abs/2102.10882"
        # no official DeiT-style CPVT weights: at most the tag of our own recipe, not published yet
        assert all(c.recipe and not c.published for c in _REGISTRY[name].cfgs.values())
        assert name in timm.list_models("cpvt_*")
    m = timm.create_model("cpvt_tiny", num_classes=7, **SMALL)
    assert isinstance(m, VisionTransformer) and m.head.out_features == 7
    m = zoo.create("cpvt_small_gap", num_classes=3, **SMALL)
    assert m.cls_token is None and m.zoo_name == "cpvt_small_gap"


def test_geometry_matches_deit_without_position_table():
    import timm
    ours = cpvt.cpvt_tiny()
    deit = timm.create_model("deit_tiny_patch16_224", pretrained=False)
    n_ours = sum(p.numel() for p in ours.parameters())
    n_deit = sum(p.numel() for p in deit.parameters())
    d = 192
    assert n_ours == n_deit - 197 * d + (9 * d + d)                           # - pos_embed + PEG conv (w, b)
    assert ours.pos_embed is None and ours.cls_token is not None
    assert ours.config["ape"] is False and ours.config["dynamic_img_size"] is True
    assert ours.config["pos_block_after"] == (0,) and ours.config["pos_block_factory"]["kernel_size"] == 3
    assert ours.patch_size == (16, 16) and ours.img_size == (224, 224)
    assert ours.blocks[0].norm1.eps == 1e-6 and ours.blocks[0].attn.qkv.bias is not None
    assert [(k, tuple(v.shape)) for k, v in ours.state_dict().items() if k.startswith("pos_block")] == [
        ("pos_block.0.proj.0.weight", (d, 1, 3, 3)), ("pos_block.0.proj.0.bias", (d,))]
    assert list(ours.pos_block.keys()) == ["0"] and isinstance(ours.pos_block["0"], PEG)


@pytest.mark.parametrize("name,dim,heads", [("cpvt_small", 384, 6), ("cpvt_base", 768, 12),
                                            ("cpvt_base_gap", 768, 12)])
def test_sizes(name, dim, heads):
    m = zoo.create(name, depth=1)
    assert m.embed_dim == dim and m.blocks[0].attn.num_heads == heads
    assert tuple(m.pos_block["0"].proj[0].weight.shape) == (dim, 1, 3, 3)
    assert (m.cls_token is None) == name.endswith("_gap")


@pytest.mark.parametrize("name", ["cpvt_tiny", "cpvt_tiny_gap"])
def test_forward_backward_small(name):
    torch.manual_seed(0)
    m = zoo.create(name, num_classes=10, **SMALL)
    x = torch.randn(2, 3, 32, 32)
    y = m(x)
    assert y.shape == (2, 10) and torch.isfinite(y).all()
    y.logsumexp(-1).sum().backward()
    g = m.pos_block["0"].proj[0].weight.grad
    assert g is not None and g.abs().sum() > 0
    assert m.patch_embed.proj.weight.grad.abs().sum() > 0


@pytest.mark.parametrize("hw", [(24, 32), (64, 64), (8, 8)])
def test_other_image_sizes(hw):
    m = zoo.create("cpvt_tiny", num_classes=5, **SMALL).eval()
    with torch.no_grad():
        y = m(torch.randn(1, 3, *hw))
    assert y.shape == (1, 5) and torch.isfinite(y).all()
    with pytest.raises(ValueError, match="divisible"):
        m(torch.randn(1, 3, 30, 32))


def test_peg_after_first_block_and_cls_bypass():
    torch.manual_seed(1)
    m = zoo.create("cpvt_tiny", num_classes=4, depth=3, img_size=32, patch_size=8).eval()
    with torch.no_grad():
        m.pos_block["0"].proj[0].bias.normal_()
    x = torch.randn(2, 3, 24, 40)                                               # a 3x5 grid
    with torch.no_grad():
        t = m.patch_embed(x)
        t = torch.cat([m.cls_token.expand(2, -1, -1), t], dim=1)
        pos = Positions.grid_2d(3, 5, num_prefix=1)
        t = m.blocks[0](t, pos)
        before = t.clone()
        t = m.pos_block["0"].embed(t, pos)
        assert torch.equal(t[:, 0], before[:, 0])                              # cls token untouched by the PEG
        assert not torch.allclose(t[:, 1:], before[:, 1:])
        for blk in m.blocks[1:]:
            t = blk(t, pos)
        want = m.head(m.norm(t)[:, 0])
        got = m(x)
    torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5)


def test_gap_variant_pools_by_mean():
    torch.manual_seed(2)
    m = zoo.create("cpvt_tiny_gap", num_classes=6, **SMALL).eval()
    assert m.cls_token is None and "cls_token" not in m.state_dict()
    assert m.num_prefix_tokens == 0 and m.global_pool == "avg"
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        feats = m.forward_features(x)
        assert feats.shape == (2, 16, 192)
        torch.testing.assert_close(m(x), m.head(feats.mean(dim=1)))
        torch.testing.assert_close(m.forward_head(feats, pre_logits=True), feats.mean(dim=1))


def test_position_information_from_peg():
    # no position table: without the PEG the model is permutation-equivariant on patches; with it, it is not
    torch.manual_seed(3)
    m = zoo.create("cpvt_tiny_gap", num_classes=3, img_size=32, patch_size=8, depth=1).eval()
    x = torch.randn(1, 3, 32, 32)
    # permute the patches (the 4x4 grid of 8x8 patches mirrored left-right), each patch's pixels unchanged
    perm = x.reshape(1, 3, 4, 8, 4, 8).flip(4).reshape(1, 3, 32, 32)
    with torch.no_grad():
        a, b = m(x), m(perm)
        m.pos_block["0"].proj[0].weight.zero_()
        m.pos_block["0"].proj[0].bias.zero_()
        c, d = m(x), m(perm)
    torch.testing.assert_close(c, d, atol=1e-5, rtol=1e-5)                     # PEG off: mean-pooled, order-blind
    assert not torch.allclose(a, b, atol=1e-4)


# ---- checkpoints ------------------------------------------------------------------------------------------------

def test_roundtrip_own_state_dict_and_deit_layout():
    torch.manual_seed(4)
    src = zoo.create("cpvt_tiny", num_classes=5, **SMALL)
    sd = {"model": {f"module.{k}": v for k, v in src.state_dict().items()}}   # {'model': sd}, DDP prefix
    dst = zoo.create("cpvt_tiny", num_classes=5, **SMALL)
    zoo.load_checkpoint(dst, cpvt.checkpoint_filter_fn(sd, dst))
    x = torch.randn(1, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(dst.eval()(x), src.eval()(x))
    # a DeiT state dict: pos_embed dropped (CPVT has none), the PEG left missing
    deit = VisionTransformer(embed_dim=192, num_heads=3, num_classes=5, **SMALL).state_dict()
    out = cpvt.checkpoint_filter_fn(deit, dst)
    assert "pos_embed" not in out
    with pytest.raises(CheckpointError, match="pos_block.0.proj.0.weight"):
        zoo.load_checkpoint(dst, out)


def test_timm_posconv_keys_map_straight():
    from timm.models.twins import PosConv
    torch.manual_seed(5)
    ref = PosConv(192, 192)
    m = zoo.create("cpvt_tiny", num_classes=5, **SMALL)
    sd = {k: v.clone() for k, v in m.state_dict().items()}
    for k, v in ref.state_dict().items():
        sd[f"pos_block.0.{k}"] = v
    out = cpvt.checkpoint_filter_fn(sd, m)
    zoo.load_checkpoint(m, out)
    assert torch.equal(m.pos_block["0"].proj[0].weight, ref.proj[0].weight)
    tok = torch.randn(1, 17, 192)
    with torch.no_grad():
        torch.testing.assert_close(m.pos_block["0"].embed(tok, Positions.grid_2d(4, 4, num_prefix=1))[:, 1:],
                                   ref(tok[:, 1:], (4, 4)))


def test_twins_stage_checkpoint_gives_the_peg(caplog):
    from timm.models.twins import Twins
    torch.manual_seed(6)
    twins = Twins(img_size=32, embed_dims=(16, 32, 48, 64), num_heads=(1, 2, 3, 4), depths=(1, 1, 1, 1),
                  sr_ratios=(2, 1, 1, 1), num_classes=10)
    tsd = twins.state_dict()
    assert "pos_block.2.proj.0.weight" in tsd and any(k.startswith("blocks.0.0.") for k in tsd)
    m = VisionTransformer(img_size=32, patch_size=8, embed_dim=48, depth=2, num_heads=3, ape=False,
                          pos_block_factory=cpvt.PEGFactory(), pos_block_after=(0,))
    with caplog.at_level(logging.WARNING):
        out = cpvt.checkpoint_filter_fn({"state_dict": tsd}, m)
    assert set(out) == {"pos_block.0.proj.0.weight", "pos_block.0.proj.0.bias"}
    assert torch.equal(out["pos_block.0.proj.0.weight"], tsd["pos_block.2.proj.0.weight"])  # the 48-wide stage
    assert "strict=False" in caplog.text
    m.load_state_dict(out, strict=False)
    # same function as the Twins stage's PEG
    tok = torch.randn(2, 9, 48)
    with torch.no_grad():
        torch.testing.assert_close(m.pos_block["0"].embed(tok, Positions.grid_2d(3, 3)),
                                   twins.pos_block[2](tok, (3, 3)))
    # no stage of the model's width: a clear error listing the widths
    m2 = zoo.create("cpvt_tiny", **SMALL)
    with pytest.raises(CheckpointError, match=r"\(192, 1, 3, 3\)"):
        cpvt.checkpoint_filter_fn(tsd, m2)


def test_bad_image_input():
    m = zoo.create("cpvt_tiny", **SMALL)
    with pytest.raises(ValueError, match="input channel"):
        m(torch.randn(1, 1, 32, 32))
    with pytest.raises(ValueError, match="pos_block_after"):
        zoo.create("cpvt_tiny", pos_block_after=(5,), **SMALL)
