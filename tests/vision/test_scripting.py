"""TorchScript of the vision classifiers timm sees. The ViT family (`models.VisionTransformer`: learned table, iRPE
in every method / mode / placement, RMT decay, CPVT's PEG), the RoPE-ViTs (axial, mixed) and LightNet (linear
attention, MD-LRPE, MD-TPE) script into `domains.vision.scripting`'s forms, which must compute the eager model's
features, logits and gradients with the same parameter objects and state-dict keys; what has no form (a ``pe=``
encoding, a class outside these families) is refused by name (`NotScriptableError`)."""
import warnings

import pytest
import timm
import torch
from timm.layers import set_scriptable
from timm.models import get_notrace_functions, get_notrace_modules
from torchvision.models.feature_extraction import create_feature_extractor

import zoo
from domains.vision.lightnet import LightNet
from domains.vision.models import VisionTransformer
from domains.vision.scripting import scriptable
from domains.vision.rope_vit import RoPEVisionTransformer
from timm_test_helpers import timm_models
from zoo.errors import NotScriptableError

TIMM_MODELS = timm_models()
SIZE = 48
SCRIPTED = (VisionTransformer, RoPEVisionTransformer, LightNet)   # the classes with a scripted form


def tiny(name, **kw):
    torch.manual_seed(0)
    model = zoo.create(name, img_size=SIZE, depth=2, num_classes=5, **kw)
    with torch.no_grad():                       # iRPE tables start at zero: give every table a value to check
        for p in model.parameters():
            if not p.any():
                p.normal_(std=0.02)
    return model


def script(model):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)          # torch.jit.script is deprecated in torch 2.14
        return torch.jit.script(model)


@pytest.mark.parametrize("name", TIMM_MODELS)
def test_script_equals_the_eager_model_or_is_refused_by_name(name, one_thread):
    model = tiny(name).eval()
    if not isinstance(model, SCRIPTED):
        with pytest.raises(NotScriptableError, match=rf"torch\.jit\.script: {type(model).__name__} has no scripted"):
            script(model)
        return
    scripted = script(model)
    sizes = [(SIZE, SIZE)] + ([] if model.default_cfg["fixed_input_size"] else [(64, 32)])
    for h, w in sizes:
        x = torch.randn(2, 3, h, w)
        with torch.no_grad():
            torch.testing.assert_close(scripted.forward_features(x), model.forward_features(x), rtol=1e-5,
                                       atol=1e-5)
            torch.testing.assert_close(scripted(x), model(x), rtol=1e-5, atol=1e-6)
    with pytest.raises(Exception, match="not divisible by the patch size"):
        scripted(torch.randn(1, 3, 50, 50))
    if model.default_cfg["fixed_input_size"]:
        with pytest.raises(Exception, match="takes the model's own image size"):
            scripted(torch.randn(1, 3, 64, 64))
    # the same parameters under the same keys: what trains one trains the other
    form = model.__prepare_scriptable__()
    own = dict(model.named_parameters())
    assert {k: id(p) for k, p in form.named_parameters()} == {k: id(p) for k, p in own.items()}
    assert set(form.state_dict()) == set(model.state_dict())


@pytest.mark.parametrize("name", [n for n in TIMM_MODELS
                                  if n.startswith(("vit_irpe_small", "cpvt_tiny", "vit_rmt_tiny", "vit_rope_", "lightnet_tiny"))
                                  and "base" not in n])
def test_scripted_gradients_equal_the_eager_ones(name, one_thread):
    model = tiny(name).train()
    form = model.__prepare_scriptable__()
    scripted = script(form)
    x = torch.randn(2, 3, SIZE, SIZE)
    model(x).square().mean().backward()
    want = {k: p.grad.clone() for k, p in model.named_parameters()}
    model.zero_grad()
    scripted(x).square().mean().backward()
    for k, p in model.named_parameters():
        torch.testing.assert_close(p.grad, want[k], rtol=1e-4, atol=1e-6, msg=k)


@pytest.mark.parametrize("name", [n for n in TIMM_MODELS if n.startswith(("vit_irpe_tiny", "cpvt_tiny_gap", "vit_rmt",
                                                                          "vit_rope_small", "vit_rope_mixed_small",
                                                                          "lightnet_tiny"))])
def test_timm_scriptable_builds_the_form_whose_fx_graph_scripts(name, one_thread):
    """timm's ``set_scriptable(True)`` builds the scripted form; torch.fx traces it and the graph scripts (timm's
    fx + TorchScript contract)."""
    with set_scriptable(True):
        model = timm.create_model(name, img_size=SIZE, depth=2, num_classes=5).eval()
    assert model.default_cfg["input_size"] == (3, 224, 224)
    tracer = dict(leaf_modules=list(get_notrace_modules()), autowrap_functions=list(get_notrace_functions()))
    graph = create_feature_extractor(model, return_nodes=["head"], tracer_kwargs=tracer)
    scripted = script(graph)
    x = torch.randn(1, 3, SIZE, SIZE)
    with torch.no_grad():
        torch.testing.assert_close(scripted(x)["head"], model(x), rtol=1e-5, atol=1e-6)


def test_an_encoding_without_a_scripted_form_is_named():
    model = zoo.create("vit_ape_tiny", img_size=SIZE, depth=1, num_classes=5, ape=False, pe="rope2d_axial")
    with pytest.raises(NotScriptableError, match="has no scripted form"):
        script(model)


def test_a_class_without_a_scripted_form_is_named():
    with pytest.raises(NotScriptableError, match=r"torch\.jit\.script: Sequential has no scripted form"):
        scriptable(torch.nn.Sequential(torch.nn.Linear(2, 2)))
