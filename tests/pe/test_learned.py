"""Learned APE and ViT position-table resampling, checked against timm.layers.resample_abs_pos_embed."""
import pytest
import torch
from timm.layers import resample_abs_pos_embed as timm_resample

from zoo import Positions
from zoo.pe import LearnedAPE, resample_abs_pos_embed


@pytest.mark.parametrize("old,new,prefix,pass_old", [
    ((14, 14), (16, 16), 1, False),      # square -> square (224 -> 256 at patch 16)
    ((14, 14), (10, 14), 1, False),      # square -> rect (160 x 224)
    ((14, 14), (7, 7), 0, True),         # down-sampling (antialias matters)
    ((10, 14), (12, 7), 2, True),        # rect -> rect, two prefix tokens
    ((6, 9), (9, 6), 1, True),           # rect -> transposed rect
])
def test_resample_matches_timm(old, new, prefix, pass_old):
    torch.manual_seed(0)
    posemb = torch.randn(1, prefix + old[0] * old[1], 24)
    ours = resample_abs_pos_embed(posemb, new, old if pass_old else None, num_prefix=prefix)
    ref = timm_resample(posemb, list(new), list(old) if pass_old else None, num_prefix_tokens=prefix)
    assert ours.shape == (1, prefix + new[0] * new[1], 24)
    torch.testing.assert_close(ours, ref, atol=1e-6, rtol=0)
    torch.testing.assert_close(ours[:, :prefix], posemb[:, :prefix], atol=0, rtol=0)   # prefix kept exactly


@pytest.mark.parametrize("mode,antialias", [("bilinear", True), ("bicubic", False), ("nearest", False)])
def test_resample_modes_match_timm(mode, antialias):
    posemb = torch.randn(1, 1 + 8 * 8, 8)
    ours = resample_abs_pos_embed(posemb, (5, 6), num_prefix=1, mode=mode, antialias=antialias)
    ref = timm_resample(posemb, [5, 6], num_prefix_tokens=1, interpolation=mode, antialias=antialias)
    torch.testing.assert_close(ours, ref, atol=1e-6, rtol=0)


def test_resample_bf16_math_in_float32():
    posemb = torch.randn(1, 1 + 14 * 14, 16).bfloat16()
    ours = resample_abs_pos_embed(posemb, (10, 14))
    assert ours.dtype == torch.bfloat16
    torch.testing.assert_close(ours, timm_resample(posemb, [10, 14]), atol=0, rtol=0)


def test_resample_same_size_and_errors():
    posemb = torch.randn(1, 1 + 12, 4)
    assert resample_abs_pos_embed(posemb, (3, 4), (3, 4)) is posemb
    with pytest.raises(ValueError, match="old_size"):
        resample_abs_pos_embed(posemb, (4, 4), (4, 4))                      # 16 != 12 grid tokens
    with pytest.raises(ValueError, match="old_size"):
        resample_abs_pos_embed(posemb, (4, 4))                              # 12 is not a square
    with pytest.raises(ValueError, match="new_size"):
        resample_abs_pos_embed(posemb, (0, 4), (3, 4))
    with pytest.raises(ValueError, match="posemb"):
        resample_abs_pos_embed(posemb[0], (4, 4), (3, 4))
    with pytest.raises(ValueError, match="mode"):
        resample_abs_pos_embed(posemb, (4, 4), (3, 4), mode="cubic")


def test_grid_ape_layout_is_timm_vit():
    import timm
    vit = timm.models.vision_transformer.VisionTransformer(img_size=32, patch_size=8, embed_dim=16, depth=1,
                                                          num_heads=2, num_classes=0)
    ape = LearnedAPE((4, 4), 16, num_prefix=1)
    ape.load_state_dict({"pos_embed": vit.pos_embed.detach().clone()})     # same key, same shape
    x = torch.randn(2, 17, 16)
    torch.testing.assert_close(ape.embed(x, Positions.grid_2d(4, 4, num_prefix=1)), x + vit.pos_embed.detach())


def test_grid_ape_resamples_rect_on_the_fly():
    ape = LearnedAPE((14, 14), 8, num_prefix=1)
    x = torch.randn(2, 1 + 10 * 14, 8)
    with torch.no_grad():
        got = ape.embed(x, Positions.grid_2d(10, 14, num_prefix=1))
        want = x + timm_resample(ape.pos_embed, [10, 14], num_prefix_tokens=1)
    torch.testing.assert_close(got, want, atol=1e-6, rtol=0)
    torch.testing.assert_close(got[:, 0] - x[:, 0], ape.pos_embed[0, 0].detach().expand(2, -1))
    # no Positions: a square token count implies a square grid
    x2 = torch.randn(1, 1 + 9, 8)
    with torch.no_grad():
        torch.testing.assert_close(ape.embed(x2, None), x2 + timm_resample(ape.pos_embed, [3, 3]), atol=1e-6,
                                   rtol=0)
    with pytest.raises(ValueError, match="square"):
        ape.embed(torch.randn(1, 1 + 10, 8), None)
    with pytest.raises(ValueError, match="num_prefix"):
        ape.embed(torch.randn(1, 12, 8), Positions.grid_2d(3, 4, num_prefix=0))


def test_grid_ape_cache_reuse_and_invalidation():
    ape = LearnedAPE((6, 6), 8, num_prefix=1).eval()
    with torch.no_grad():
        t1 = ape.grid_table((4, 5), torch.float32, "cpu")
        t2 = ape.grid_table((4, 5), torch.float32, "cpu")
        assert t1 is t2                                                        # not recomputed
        assert ape.grid_table((5, 4), torch.float32, "cpu") is not t1
        assert ape.grid_table((4, 5), torch.bfloat16, "cpu").dtype == torch.bfloat16
        ape.pos_embed.add_(1.0)                                                # in-place update bumps _version
        t3 = ape.grid_table((4, 5), torch.float32, "cpu")
    assert t3 is not t1
    torch.testing.assert_close(t3, t1 + 1.0, atol=1e-5, rtol=0)                # resampling is linear
    # the forward path uses the same cache
    x = torch.randn(1, 21, 8)
    with torch.inference_mode():
        a = ape.embed(x, Positions.grid_2d(4, 5, num_prefix=1))
        b = ape.embed(x, Positions.grid_2d(4, 5, num_prefix=1))
    torch.testing.assert_close(a, b, atol=0, rtol=0)


def test_grid_ape_gradient_flows_when_resampled():
    ape = LearnedAPE((6, 6), 8, num_prefix=1).train()
    for _ in range(2):                                                         # no stale graph reused
        ape.zero_grad()
        out = ape.embed(torch.randn(2, 1 + 4 * 5, 8), Positions.grid_2d(4, 5, num_prefix=1))
        out.square().sum().backward()
        g = ape.pos_embed.grad
        assert g is not None and g[0, 0].abs().sum() > 0 and g[0, 1:].abs().sum() > 0


def test_1d_ape_ids_and_errors():
    ape = LearnedAPE(10, 4)
    assert ape.pos_embed.shape == (1, 10, 4)
    x = torch.randn(2, 3, 4)
    torch.testing.assert_close(ape.embed(x, None), x + ape.pos_embed[0, :3].detach())
    ids = torch.tensor([[9, 0, 4], [1, 1, 2]])
    torch.testing.assert_close(ape.embed(x, Positions(ids=ids)), x + ape.pos_embed[0][ids].detach())
    with pytest.raises(ValueError, match="9"):
        ape.embed(x, Positions(ids=torch.tensor([[0, 1, 10]] * 2)))
    with pytest.raises(ValueError, match="num_tokens=10"):
        ape.embed(torch.randn(1, 11, 4), None)
    with pytest.raises(ValueError, match="integers"):
        ape.embed(x, Positions(ids=ids.float()))
    with pytest.raises(ValueError, match="num_prefix"):
        LearnedAPE(10, 4, num_prefix=1)
    with pytest.raises(ValueError, match="dim"):
        LearnedAPE(10, 0)
