"""RoPE-ViT (Heo et al., ECCV 2024): parity with timm's ``vit_*_patch16_rope[_mixed]_224`` (Eva) after loading its
randomised weights (file + ``load_state_dict``), equal state-dict layouts both ways, other image sizes, the official
naver-ai checkpoint layout, the checkpoint filter's conversions and errors, the fused attention path."""
import logging

import pytest
import torch

import timm

import zoo  # noqa: E402
import domains.vision.rope_vit as rope_vit  # noqa: E402  (registers the vit_rope_* models)
from zoo.errors import CheckpointError  # noqa: E402

SMALL = dict(img_size=64, num_classes=10)

# (ours, timm's, depth): small at depth 2, base at depth 1 to keep the run short
PAIRS = [
    ("vit_rope_small", "vit_small_patch16_rope_224", 2),
    ("vit_rope_mixed_small", "vit_small_patch16_rope_mixed_224", 2),
    ("vit_rope_base", "vit_base_patch16_rope_224", 1),
    ("vit_rope_mixed_base", "vit_base_patch16_rope_mixed_224", 1),
]
IDS = [p[0] for p in PAIRS]


def _randomise(model, seed):
    """Every parameter random (layer scales and mixed frequencies included), so nothing matches by accident."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("freqs"):
                p.copy_(torch.randn(p.shape, generator=g) * 0.5)
            elif "gamma" in name or name.startswith("norm") or ".norm" in name:
                p.copy_(1.0 + 0.3 * torch.randn(p.shape, generator=g) if name.endswith("weight") or "gamma" in name
                        else 0.1 * torch.randn(p.shape, generator=g))
            else:
                p.copy_(torch.randn(p.shape, generator=g) * 0.05)
    return model


def _timm(name, depth, **kw):
    torch.manual_seed(0)
    return _randomise(timm.create_model(name, depth=depth, **SMALL, **kw), seed=1).eval()


def _images(*hw, b=2, seed=2):
    return torch.randn(b, 3, *hw, generator=torch.Generator().manual_seed(seed))


@pytest.mark.parametrize("ours,theirs,depth", PAIRS, ids=IDS)
def test_state_dict_layout_equals_timm(ours, theirs, depth):
    t = timm.create_model(theirs, depth=depth, **SMALL)
    m = zoo.create(ours, depth=depth, **SMALL)
    sd_t, sd_m = t.state_dict(), m.state_dict()
    assert list(sd_m) == list(sd_t)
    assert {k: tuple(v.shape) for k, v in sd_m.items()} == {k: tuple(v.shape) for k, v in sd_t.items()}
    # both ways: our default builder's weights load straight into timm, and timm's into ours
    t.load_state_dict(sd_m)
    m.load_state_dict(sd_t)


@pytest.mark.parametrize("ours,theirs,depth", PAIRS, ids=IDS)
def test_logits_equal_timm(ours, theirs, depth, tmp_path):
    t = _timm(theirs, depth)
    path = tmp_path / "timm.pth"
    torch.save(t.state_dict(), path)
    from_file = zoo.create(ours, depth=depth, pretrained_file=str(path), **SMALL).eval()
    direct = zoo.create(ours, depth=depth, **SMALL).eval()
    direct.load_state_dict(t.state_dict())
    x = _images(64, 64)
    with torch.no_grad():
        want = t(x)
        assert want.abs().max() > 0.5                                           # not a degenerate comparison
        torch.testing.assert_close(from_file(x), want, atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(direct(x), want, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("ours,theirs,depth", PAIRS[:2], ids=IDS[:2])
def test_logits_equal_timm_at_other_sizes(ours, theirs, depth):
    t = _timm(theirs, depth, dynamic_img_size=True)
    m = zoo.create(ours, depth=depth, dynamic_img_size=True, **SMALL).eval()
    m.load_state_dict(t.state_dict())
    with torch.no_grad():
        for hw in [(64, 64), (48, 80), (128, 128), (160, 224)]:
            x = _images(*hw, b=1)
            out = m(x)
            assert out.shape == (1, 10) and torch.isfinite(out).all()
            torch.testing.assert_close(out, t(x), atol=1e-5, rtol=1e-5)


def test_our_weights_run_in_timm():
    m = _randomise(zoo.create("vit_rope_mixed_small", depth=2, **SMALL), seed=3).eval()
    t = timm.create_model("vit_small_patch16_rope_mixed_224", depth=2, **SMALL).eval()
    t.load_state_dict(m.state_dict())
    x = _images(64, 64)
    with torch.no_grad():
        torch.testing.assert_close(m(x), t(x), atol=1e-5, rtol=1e-5)


def test_fixed_size_model_rejects_other_sizes():
    m = zoo.create("vit_rope_small", depth=1, **SMALL)
    with pytest.raises(ValueError, match="dynamic_img_size"):
        m(_images(48, 64))
    dyn = zoo.create("vit_rope_small", depth=1, dynamic_img_size=True, **SMALL)
    with pytest.raises(ValueError, match="divisible"):
        dyn(_images(50, 64))


def test_official_naver_checkpoint_layout(tmp_path):
    """naver-ai/rope-vit saves ``{'model': sd}`` with a model-level ``freqs [2, depth, h*d/2]`` and grid buffers."""
    t = _timm("vit_small_patch16_rope_mixed_224", 2)
    sd = dict(t.state_dict())
    freqs = sd.pop("rope.freqs")                                                # [2, L, h, d/2]
    sd["freqs"] = freqs.reshape(2, 2, -1)
    sd["freqs_t_x"], sd["freqs_t_y"] = torch.arange(16.0) % 4, torch.arange(16.0) // 4
    path = tmp_path / "official.pth"
    torch.save({"model": sd, "epoch": 300}, path)
    m = zoo.create("vit_rope_mixed_small", depth=2, pretrained_file=str(path), **SMALL).eval()
    torch.testing.assert_close(m.rope.freqs.detach(), freqs)
    x = _images(64, 64)
    with torch.no_grad():
        torch.testing.assert_close(m(x), t(x), atol=1e-5, rtol=1e-5)


def test_filter_adapts_depth_and_head(caplog):
    t = _timm("vit_small_patch16_rope_mixed_224", 2)
    m = zoo.create("vit_rope_mixed_small", depth=1, **dict(SMALL, num_classes=7))
    with caplog.at_level(logging.WARNING):
        sd = rope_vit.checkpoint_filter_fn(t.state_dict(), m)
    assert "head" in caplog.text
    assert sd["rope.freqs"].shape == (2, 1, 6, 32) and not any(k.startswith("blocks.1.") for k in sd)
    zoo.load_checkpoint(m, sd)
    torch.testing.assert_close(m.rope.freqs.detach(), t.rope.freqs.detach()[:, :1])
    assert m.head.weight.shape == (7, 384)


def test_filter_errors():
    axial = _timm("vit_small_patch16_rope_224", 1).state_dict()
    mixed = _timm("vit_small_patch16_rope_mixed_224", 1).state_dict()
    m_axial = zoo.create("vit_rope_small", depth=1, **SMALL)
    m_mixed = zoo.create("vit_rope_mixed_small", depth=1, **SMALL)
    with pytest.raises(CheckpointError, match="RoPE-Mixed"):
        rope_vit.checkpoint_filter_fn(mixed, m_axial)
    with pytest.raises(CheckpointError, match="no rope.freqs"):
        rope_vit.checkpoint_filter_fn(axial, m_mixed)
    with pytest.raises(CheckpointError, match="pos_embed"):
        rope_vit.checkpoint_filter_fn(dict(axial, pos_embed=torch.zeros(1, 16, 384)), m_axial)
    with pytest.raises(CheckpointError, match="state dict"):
        rope_vit.checkpoint_filter_fn([1, 2], m_axial)


def test_uses_fused_sdpa_with_rotary_pe(monkeypatch):
    m = zoo.create("vit_rope_mixed_small", depth=2, **SMALL).eval()
    for blk in m.blocks:
        pe = blk.attn.pe
        assert pe.has_rotate and not pe.needs_weights and not pe.has_bias
    calls = []
    real = torch.nn.functional.scaled_dot_product_attention

    def counting(*a, **kw):
        calls.append(kw.get("attn_mask"))
        return real(*a, **kw)

    monkeypatch.setattr(torch.nn.functional, "scaled_dot_product_attention", counting)
    with torch.no_grad():
        m(_images(64, 64, b=1))
    assert len(calls) == 2 and all(c is None for c in calls)


def test_backward_and_bf16_autocast():
    m = _randomise(zoo.create("vit_rope_mixed_small", depth=2, **SMALL), seed=4).train()
    m(_images(64, 64)).square().mean().backward()
    for name in ("rope.freqs", "blocks.0.gamma_1", "blocks.1.gamma_2", "cls_token"):
        assert m.get_parameter(name).grad is not None and m.get_parameter(name).grad.abs().sum() > 0, name
    m.eval()
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        out = m(_images(64, 64))
    assert torch.isfinite(out).all()


def test_registered_in_zoo_and_timm():
    for name in IDS:
        assert name in zoo.list_models("vit_rope*")
        assert name not in timm.models._registry._model_entrypoints or \
            getattr(timm.models._registry._model_entrypoints[name], "_zoo_name", None) == name
    m = timm.create_model("vit_rope_small", depth=1, img_size=32, num_classes=3)
    assert isinstance(m, rope_vit.RoPEVisionTransformer) and m(torch.randn(1, 3, 32, 32)).shape == (1, 3)
    assert "vit_rope_mixed_small.naver_in1k" in zoo.list_models("vit_rope*", pretrained=True)
    assert m.config["rope"] == "axial" and m.config["rope_theta"] == 100.0
