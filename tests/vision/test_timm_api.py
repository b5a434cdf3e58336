"""timm's classifier API on every vision classifier timm sees (`TimmClassifierMixin`): pooling choices against the
features they pool, a new head on the model's device / dtype / train mode, parameter groups covering every
parameter, no-weight-decay names that exist, and gradient checkpointing that changes no value."""
import fnmatch
import re

import pytest
import timm
import torch
from torch import nn

import zoo
from timm_test_helpers import timm_models

TIMM_MODELS = timm_models()


def tiny(name, **kw):
    torch.manual_seed(0)
    return zoo.create(name, img_size=32, depth=2, num_classes=5, **kw)


def _manual_pool(model, feats, pool):
    if pool == "token":
        return feats[:, 0]
    if pool == "avg":
        return feats[:, model.num_prefix_tokens:].mean(dim=1)
    return feats


@pytest.mark.parametrize("name", TIMM_MODELS)
def test_pooling_choices_pool_the_features(name, one_thread):
    model = tiny(name).eval()
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        feats = model.forward_features(x)
        assert model.head_hidden_size == model.num_features == feats.shape[-1]
        assert model.forward_head(feats, pre_logits=True).shape == (2, model.head_hidden_size)
        fc_norm = getattr(model, "fc_norm", nn.Identity())
        for pool in [p for p in model.POOLS if p != "token" or model.num_prefix_tokens]:
            model.reset_classifier(0, pool)
            assert model.global_pool == pool and model.num_classes == 0
            torch.testing.assert_close(model(x), fc_norm(_manual_pool(model, feats, pool)))
        if "token" not in model.POOLS or not model.num_prefix_tokens:
            with pytest.raises(ValueError, match="global_pool"):
                model.reset_classifier(0, "token")
        with pytest.raises(ValueError, match="global_pool must be"):
            model.reset_classifier(0, "max")


@pytest.mark.parametrize("name", TIMM_MODELS)
def test_reset_classifier_keeps_device_dtype_and_mode(name):
    model = zoo.create(name, device="meta").to(dtype=torch.float64)
    for train in (True, False):
        model.train(train)
        model.reset_classifier(3)
        head = model.get_classifier()
        assert head.weight.device.type == "meta" and head.weight.dtype == torch.float64
        assert head.training == train and head.weight.shape == (3, model.num_features)
    model.requires_grad_(False)
    model.reset_classifier(0)
    assert not any(p.requires_grad for p in model.parameters())


@pytest.mark.parametrize("name", TIMM_MODELS)
def test_parameter_groups_and_no_weight_decay_name_real_parameters(name):
    model = zoo.create(name, device="meta")
    names = [n for n, _ in model.named_parameters()]
    matcher = model.group_matcher()
    regexes = [matcher["stem"]] + [r for r, _ in matcher["blocks"]]
    unmatched = [n for n in names if not n.startswith("head.") and not any(re.match(r, n) for r in regexes)]
    assert unmatched == [], "every parameter but the head's belongs to a group"
    groups = timm.models.group_parameters(model, matcher)
    assert len(groups) > 2 and sum(len(v) for v in groups.values()) == len(names)
    for pattern in model.no_weight_decay():
        assert any(fnmatch.fnmatch(n, pattern) or n == pattern for n in names), pattern


@pytest.mark.parametrize("name", TIMM_MODELS)
def test_grad_checkpointing_changes_no_value(name, one_thread):
    model = tiny(name).train()
    x = torch.randn(2, 3, 32, 32)
    out = model(x)
    out.square().mean().backward()
    grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
    model.zero_grad()
    model.set_grad_checkpointing()
    assert model.grad_checkpointing
    again = model(x)
    again.square().mean().backward()
    torch.testing.assert_close(again, out)
    for n, p in model.named_parameters():
        if n in grads:
            torch.testing.assert_close(p.grad, grads[n], msg=n)


@pytest.mark.parametrize("name", TIMM_MODELS)
def test_bf16_and_a_changed_image_size(name, one_thread):
    """Built for 48 x 48 (not the cfg's 224): the model runs there; in bfloat16 (weights and input) it returns
    bfloat16 logits close to float32's, and under bf16 autocast the same holds (angles stay float32 inside)."""
    torch.manual_seed(0)
    model = zoo.create(name, img_size=48, depth=2, num_classes=5).eval()
    x = torch.randn(2, 3, 48, 48)
    with torch.no_grad():
        ref = model(x)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            auto = model(x)
        half = zoo.create(name, img_size=48, depth=2, num_classes=5, dtype=torch.bfloat16).eval()
        half.load_state_dict({k: v.to(torch.bfloat16) if v.is_floating_point() else v
                              for k, v in model.state_dict().items()})
        low = half(x.to(torch.bfloat16))
    assert ref.shape == (2, 5) and low.dtype == torch.bfloat16
    scale = ref.abs().max().item() + 1e-3
    assert (low.float() - ref).abs().max().item() <= 0.1 * scale
    assert (auto.float() - ref).abs().max().item() <= 0.1 * scale
