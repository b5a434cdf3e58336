"""timm's feature contract on every vision classifier timm sees: ``forward_intermediates`` taps the blocks the
forward runs (its final output is ``forward_features``), ``prune_intermediate_layers`` keeps exactly what those
taps need (every kept parameter still gets a gradient), and ``timm.create_model(features_only=True)`` returns the
taps of the unpruned model."""
import copy

import pytest
import timm
import torch

import zoo
from timm_test_helpers import timm_models

TIMM_MODELS = timm_models()
DEPTH, SIZE = 4, 48


def tiny(name, **kw):
    torch.manual_seed(0)
    return zoo.create(name, img_size=SIZE, depth=DEPTH, num_classes=5, **kw)


def _taps(model, x):
    """Each block's output, by running the blocks one at a time (the reference for the taps)."""
    t, pos, _ = model._tokens(x)
    out = []
    for i, blk in enumerate(model.blocks):
        t = model._after_block(i, blk(t, pos), pos)
        out.append(t)
    return out


@pytest.mark.parametrize("name", TIMM_MODELS)
def test_forward_intermediates_taps_the_blocks(name, one_thread):
    model = tiny(name).eval()
    x = torch.randn(2, 3, SIZE, SIZE)
    grid, n, d = SIZE // 16, model.num_prefix_tokens, model.num_features
    with torch.no_grad():
        ref = _taps(model, x)
        final, inter = model.forward_intermediates(x)
        torch.testing.assert_close(final, model.forward_features(x), rtol=1e-5, atol=1e-8)
        assert len(inter) == DEPTH == len(model.feature_info) and model.feature_info[0]["reduction"] == 16
        for t, r in zip(inter, ref):
            assert t.shape == (2, d, grid, grid)
            torch.testing.assert_close(t, r[:, n:].transpose(1, 2).reshape(2, d, grid, grid))
        nlc = model.forward_intermediates(x, indices=[-1, 1], output_fmt="NLC", norm=True, intermediates_only=True)
        torch.testing.assert_close(nlc[0], model.norm(ref[1])[:, n:])       # in block order, as timm's ViT
        torch.testing.assert_close(nlc[1], model.norm(ref[-1])[:, n:])
        last2 = model.forward_intermediates(x, indices=2, stop_early=True, intermediates_only=True)
        assert len(last2) == 2
        torch.testing.assert_close(last2[0], inter[DEPTH - 2])
        if n:
            pairs = model.forward_intermediates(x, indices=[0], return_prefix_tokens=True, intermediates_only=True)
            torch.testing.assert_close(pairs[0][1], ref[0][:, :n])
    for bad in (0, DEPTH + 1, [DEPTH], [-DEPTH - 1]):
        with pytest.raises(ValueError, match="indices"):
            model.forward_intermediates(x, indices=bad)
    with pytest.raises(ValueError, match="output_fmt"):
        model.forward_intermediates(x, output_fmt="NHWC")


@pytest.mark.parametrize("name", TIMM_MODELS)
def test_pruned_models_keep_the_taps_and_train_every_parameter(name, one_thread):
    model = tiny(name).eval()
    x = torch.randn(2, 3, SIZE, SIZE)
    with torch.no_grad():
        full = model.forward_intermediates(x, intermediates_only=True)
    for i in range(DEPTH):
        pruned = copy.deepcopy(model)
        assert pruned.prune_intermediate_layers([i], prune_norm=True) == [i]
        assert len(pruned.blocks) == i + 1 and pruned.num_classes == 0 and pruned.global_pool == ""
        assert all(int(k) <= i for k in getattr(pruned, "pos_block", {}))
        with torch.no_grad():
            torch.testing.assert_close(pruned.forward_intermediates(x, [i], intermediates_only=True)[0], full[i])
        pruned.train()
        pruned.forward_intermediates(x, [i], intermediates_only=True)[0].square().mean().backward()
        assert [k for k, p in pruned.named_parameters() if p.grad is None] == []


@pytest.mark.parametrize("name", TIMM_MODELS)
def test_timm_features_only_returns_the_taps(name, one_thread):
    model = tiny(name).eval()
    x = torch.randn(1, 3, SIZE, SIZE)
    torch.manual_seed(0)
    net = timm.create_model(name, features_only=True, out_indices=(1, 3), img_size=SIZE, depth=DEPTH,
                            num_classes=5).eval()
    assert net.feature_info.channels() == [model.num_features] * 2 and net.feature_info.reduction() == [16, 16]
    with torch.no_grad():
        want = model.forward_intermediates(x, indices=[1, 3], intermediates_only=True)
        got = net(x)
    assert len(got) == 2
    for g, w in zip(got, want):
        torch.testing.assert_close(g, w)
    with pytest.raises(TypeError, match="feature_cls='getter'"):
        timm.create_model(name, features_only=True, feature_cls="hook", img_size=SIZE, depth=DEPTH)


class SimpleFeaturePyramid(torch.nn.Module):
    """ViTDet's simple feature pyramid (Li et al., arXiv 2203.16527, sec. 3): from one stride-16 map, strides 4, 8,
    16 and 32 by two / one transposed convs, identity and max-pooling, each followed by a 1x1 and a 3x3 conv."""

    def __init__(self, dim: int, out: int):
        super().__init__()
        nn = torch.nn
        self.scales = nn.ModuleList([
            nn.Sequential(nn.ConvTranspose2d(dim, dim // 2, 2, 2), nn.GELU(),
                          nn.ConvTranspose2d(dim // 2, dim // 4, 2, 2)),
            nn.ConvTranspose2d(dim, dim // 2, 2, 2), nn.Identity(), nn.MaxPool2d(2)])
        chans = [dim // 4, dim // 2, dim, dim]
        self.outs = nn.ModuleList([nn.Sequential(nn.Conv2d(c, out, 1), nn.Conv2d(out, out, 3, padding=1))
                                   for c in chans])

    def forward(self, x):
        return [o(s(x)) for s, o in zip(self.scales, self.outs)]


def test_features_only_vit_irpe_small_feeds_a_simple_fpn_at_800x1333(one_thread):
    """detectron2-style use: the batch is padded to a multiple of the patch (ImageList.from_tensors with
    size_divisibility 16: 800 x 1333 -> 800 x 1344), a features_only backbone of vit_irpe_small (its last block,
    stride 16, any size: dynamic_img_size) feeds ViTDet's simple pyramid."""
    net = timm.create_model("vit_irpe_small", features_only=True, out_indices=[-1], dynamic_img_size=True).eval()
    assert net.feature_info.reduction() == [16] and net.feature_info.channels() == [384]
    assert len(net.model.blocks) == 12
    image = torch.randn(1, 3, 800, 1333)
    padded = torch.nn.functional.pad(image, (0, 1344 - 1333))
    fpn = SimpleFeaturePyramid(384, 64)
    with torch.no_grad():
        (feat,) = net(padded)
        levels = fpn(feat)
    assert feat.shape == (1, 384, 50, 84) and torch.isfinite(feat).all()
    assert [tuple(f.shape) for f in levels] == [(1, 64, 200, 336), (1, 64, 100, 168), (1, 64, 50, 84), (1, 64, 25, 42)]
    assert all(torch.isfinite(f).all() for f in levels)


def test_zoo_create_features_only_is_timms(one_thread):
    torch.manual_seed(0)
    ours = zoo.create("vit_rope_small", features_only=True, out_indices=(1, 3), img_size=SIZE, depth=DEPTH).eval()
    torch.manual_seed(0)
    theirs = timm.create_model("vit_rope_small", features_only=True, out_indices=(1, 3), img_size=SIZE,
                               depth=DEPTH).eval()
    x = torch.randn(1, 3, SIZE, SIZE)
    with torch.no_grad():
        for a, b in zip(ours(x), theirs(x)):
            assert torch.equal(a, b)
    assert ours.feature_info.out_indices == (1, 3) or list(ours.feature_info.out_indices) == [1, 3]
    with pytest.raises(TypeError, match="features_only=True needs a model with forward_intermediates"):
        zoo.create("code_lm_rope_tiny", features_only=True)
    with pytest.raises(TypeError, match="out_indices for vit_rope_small only go with features_only=True"):
        zoo.create("vit_rope_small", out_indices=(1,))
    with pytest.raises(TypeError, match="feature_cls='getter', got 'hook'"):
        zoo.create("vit_rope_small", features_only=True, feature_cls="hook", img_size=SIZE, depth=DEPTH)
