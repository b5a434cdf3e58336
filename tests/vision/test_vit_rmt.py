"""ViT with RMT's Manhattan decay: registration, geometry, the decay in every block, forward/backward, other image
sizes, and one block against a naive re-implementation."""
import math

import pytest
import torch
import torch.nn.functional as F

import domains.vision.rmt  # noqa: F401  (registers the vit_rmt_* entrypoints)
import zoo
from domains.vision.models import VisionTransformer
from zoo import Positions
from zoo.pe.rmt import ManhattanDecay

SMALL = dict(img_size=32, patch_size=8, depth=2)


def test_registered_and_geometry():
    import timm
    from zoo.registry import _REGISTRY
    for name, dim, heads in [("vit_rmt_tiny", 192, 3), ("vit_rmt_small", 384, 6)]:
        e = _REGISTRY[name]
        assert e.paper == "https://arxiv.org/abs/2309.11523"
        assert all(c.recipe and not c.published for c in e.cfgs.values())     # only our recipe's, unpublished
        assert name in timm.list_models("vit_rmt_*")
        m = zoo.create(name, depth=1)
        assert isinstance(m, VisionTransformer)
        assert m.embed_dim == dim and m.blocks[0].attn.num_heads == heads and m.patch_size == (16, 16)
        assert m.pos_embed is None and m.cls_token is None and m.global_pool == "avg"
        assert m.config["dynamic_img_size"] is True
        assert m.config["pe_factory"] == dict(kind="manhattan_decay", initial_value=2.0, heads_range=6.0)


def test_decay_in_every_block():
    m = zoo.create("vit_rmt_small", **SMALL)
    want = torch.tensor([math.log(1 - 2 ** (-2 - 6 * h / 6)) for h in range(6)])
    for blk in m.blocks:
        assert isinstance(blk.attn.pe, ManhattanDecay)
        torch.testing.assert_close(blk.attn.pe.log_decay, want)
    m2 = zoo.create("vit_rmt_tiny", rmt=dict(initial_value=1, heads_range=3), **SMALL)
    torch.testing.assert_close(m2.blocks[1].attn.pe.gamma, torch.tensor([0.5, 0.75, 0.875]))
    # no parameters added: same count as the APE-free, cls-free ViT
    plain = VisionTransformer(embed_dim=192, num_heads=3, ape=False, class_token=False, global_pool="avg", **SMALL)
    assert sum(p.numel() for p in m2.parameters()) == sum(p.numel() for p in plain.parameters())


@pytest.mark.parametrize("name", ["vit_rmt_tiny", "vit_rmt_small"])
def test_forward_backward_small(name):
    torch.manual_seed(0)
    m = zoo.create(name, num_classes=10, **SMALL)
    y = m(torch.randn(2, 3, 32, 32))
    assert y.shape == (2, 10) and torch.isfinite(y).all()
    y.logsumexp(-1).sum().backward()
    assert m.blocks[0].attn.qkv.weight.grad.abs().sum() > 0


@pytest.mark.parametrize("hw", [(24, 32), (64, 64), (8, 16)])
def test_other_image_sizes(hw):
    m = zoo.create("vit_rmt_tiny", num_classes=4, **SMALL).eval()
    with torch.inference_mode():
        y = m(torch.randn(1, 3, *hw))
    assert y.shape == (1, 4) and torch.isfinite(y).all()
    # back in training, after biases were built under inference mode
    m.train()
    m(torch.randn(1, 3, *hw)).sum().backward()


def test_block_matches_naive_decayed_attention():
    torch.manual_seed(1)
    m = zoo.create("vit_rmt_tiny", num_classes=3, img_size=32, patch_size=8, depth=1).eval()
    x = torch.randn(1, 3, 24, 32)                                                 # a 3x4 grid
    gh, gw, heads, c = 3, 4, 3, 192
    d, n = c // heads, gh * gw
    blk = m.blocks[0]
    with torch.no_grad():
        t = m.patch_embed(x)
        y = F.layer_norm(t, (c,), blk.norm1.weight, blk.norm1.bias, eps=1e-6)
        q, k, v = (y @ blk.attn.qkv.weight.T + blk.attn.qkv.bias).reshape(1, n, 3, heads, d).permute(2, 0, 3, 1, 4)
        decay = torch.zeros(heads, n, n)
        for hh in range(heads):
            lg = math.log(1 - 2 ** (-2 - 6 * hh / heads))
            for i in range(n):
                for j in range(n):
                    decay[hh, i, j] = lg * (abs(i // gw - j // gw) + abs(i % gw - j % gw))
        a = (q @ k.transpose(-2, -1) * d ** -0.5 + decay).softmax(-1)
        t = t + ((a @ v).transpose(1, 2).reshape(1, n, c) @ blk.attn.proj.weight.T + blk.attn.proj.bias)
        t = t + blk.mlp(blk.norm2(t))
        want = m.head(m.norm(t).mean(1))
        torch.testing.assert_close(m(x), want, atol=1e-5, rtol=1e-4)
        # the decay matters: without it the output differs
        got_block = blk(m.patch_embed(x), Positions.grid_2d(gh, gw))
        blk.attn.pe = None
        assert not torch.allclose(blk(m.patch_embed(x), Positions.grid_2d(gh, gw)), got_block, atol=1e-4)


def test_with_cls_token_prefix_gets_no_decay():
    # the opt-in cls variant: the prefix token is not on the grid, its bias row/column is 0
    m = zoo.create("vit_rmt_tiny", class_token=True, global_pool="token", num_classes=2, **SMALL).eval()
    with torch.no_grad():
        y = m(torch.randn(1, 3, 32, 32))
    assert y.shape == (1, 2) and torch.isfinite(y).all()
    bias = m.blocks[0].attn.pe.bias(torch.zeros(1, 3, 17, 1), torch.zeros(1, 3, 17, 1),
                                    m.positions(4, 4, "cpu"), 1.0)
    assert torch.count_nonzero(bias[..., 0, :]) == 0 and torch.count_nonzero(bias[..., :, 0]) == 0
    assert (bias[..., 1:, 1:] <= 0).all() and bias[0, 0, 1, 16].item() == pytest.approx(6 * math.log(0.75))
