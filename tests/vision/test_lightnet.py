"""LightNet (linear attention + MD-LRPE + MD-TPE): tiny forward/backward at several image sizes, entrypoints,
positions actually used, bad input, linear growth of the block's largest intermediate, the scaling bench."""
import pytest
import torch

from zoo import Positions


def lightnet_module():
    # imported inside the tests: importing registers the entrypoints (MODELS.md is generated from the registry)
    from domains.vision import lightnet
    return lightnet


def tiny(**kw):
    args = dict(img_size=32, patch_size=8, embed_dim=24, depth=2, num_heads=2, num_classes=5)
    args.update(kw)
    return lightnet_module().LightNet(**args)


@pytest.mark.parametrize("size", [(32, 32), (24, 40), (8, 56)])
def test_forward_backward_at_other_sizes(size):
    torch.manual_seed(0)
    model = tiny()
    x = torch.randn(2, 3, *size)
    y = model(x)
    assert y.shape == (2, 5) and torch.isfinite(y).all()
    y.square().mean().backward()
    for name, p in model.named_parameters():
        assert p.grad is not None and torch.isfinite(p.grad).all(), name
    assert model.forward_features(x).shape == (2, (size[0] // 8) * (size[1] // 8), 24)


def test_entrypoints_and_registry():
    lightnet = lightnet_module()
    import zoo

    t = lightnet.lightnet_tiny()
    assert (t.embed_dim, len(t.blocks), t.blocks[0].attn.num_heads) == (192, 12, 3)
    assert t(torch.randn(1, 3, 32, 48)).shape == (1, 1000)
    s = lightnet.lightnet_small(depth=1, num_classes=0)
    assert (s.embed_dim, s.blocks[0].attn.num_heads, s.blocks[0].attn.head_dim) == (384, 6, 64)
    assert s(torch.randn(1, 3, 16, 16)).shape == (1, 384)
    assert {"lightnet_tiny", "lightnet_small"} <= set(zoo.list_models("lightnet_*"))
    assert zoo.model_info("lightnet_tiny")["paper"] == "https://arxiv.org/abs/2405.21022"
    keys = set(t.state_dict())
    for k in ("patch_embed.proj.weight", "tpe.tpes.0.q", "tpe.tpes.1.log_decay", "blocks.0.attn.qkv.weight",
              "blocks.0.attn.gate.0.weight", "blocks.0.attn.norm.weight", "blocks.11.mlp.fc2.bias", "head.weight"):
        assert k in keys, k
    assert not any("cls_token" in k or "pos_embed" in k for k in keys)


def test_positions_matter_only_through_the_encodings():
    # without MD-LRPE and MD-TPE, linear attention + mean pooling is blind to where patches sit
    torch.manual_seed(0)
    x = torch.randn(1, 3, 32, 32)
    swapped = x.clone()
    swapped[..., :8, :8], swapped[..., 24:, 24:] = x[..., 24:, 24:], x[..., :8, :8]
    plain = tiny(lrpe=False, tpe=False).eval()
    torch.testing.assert_close(plain(x), plain(swapped), rtol=1e-4, atol=1e-5)
    for kw in (dict(lrpe=True, tpe=False), dict(lrpe=False, tpe=True)):
        torch.manual_seed(0)
        m = tiny(**kw).eval()
        assert (m(x) - m(swapped)).abs().max() > 1e-4, kw


def test_bad_input_raises():
    model = tiny()
    with pytest.raises(ValueError, match="channel"):
        model(torch.randn(1, 1, 32, 32))
    with pytest.raises(ValueError, match="multiple of the patch size"):
        model(torch.randn(1, 3, 30, 32))
    with pytest.raises(ValueError, match="images"):
        model(torch.randn(3, 32, 32))
    with pytest.raises(ValueError, match="divisible"):
        tiny(img_size=28)


def largest_intermediate(probe_cls, block, side, dim):
    x = torch.randn(1, side * side, dim)
    with torch.no_grad(), probe_cls() as probe:
        block(x, Positions.grid_2d(side, side))
    return probe.numel


def test_block_largest_intermediate_grows_linearly_with_tokens(largest_tensor):
    lightnet = lightnet_module()
    block = lightnet.LightNetBlock(16, 2)
    sizes = [largest_intermediate(largest_tensor, block, side, 16) for side in (16, 32, 64)]  # 256..4096 tokens
    assert sizes[1] == 4 * sizes[0] and sizes[2] == 4 * sizes[1], sizes
    assert sizes[2] < 4096 * 4096 // 50
    # the probe does see an n x n matrix when one is formed (softmax weights written out)
    x = torch.randn(1, 2, 1024, 8)
    with torch.no_grad(), largest_tensor() as probe:
        (x @ x.transpose(-2, -1)).softmax(-1) @ x
    assert probe.numel == 2 * 1024 * 1024


def test_scaling_bench_runs_at_tiny_sizes():
    rows = lightnet_module().linear_scaling_bench(sizes=(16, 64), dim=16, heads=2, repeats=1)
    assert [r["tokens"] for r in rows] == [16, 64] and rows[1]["token_growth"] == 4.0
    assert all(r["linear_ms"] > 0 and r["softmax_ms"] > 0 for r in rows)
    assert rows[0]["linear_growth"] == 1.0
