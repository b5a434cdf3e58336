"""torch.fx on every vision classifier timm sees, as timm traces its own models: torchvision's
``create_feature_extractor`` with timm's notrace lists (``get_notrace_modules`` / ``get_notrace_functions``).

The graph must compute what the eager model computes (block taps and logits), at another image size too for the
models that take any size (nothing of the trace's size is baked in), keep the eager input checks, and pass
gradients to every parameter in train mode."""
import pytest
import torch
from timm.models import get_notrace_functions, get_notrace_modules
from torchvision.models.feature_extraction import create_feature_extractor, get_graph_node_names

import zoo
from timm_test_helpers import timm_models

TIMM_MODELS = timm_models()
DEPTH, SIZE = 4, 48
TRACER = dict(leaf_modules=list(get_notrace_modules()), autowrap_functions=list(get_notrace_functions()))


def tiny(name):
    torch.manual_seed(0)
    return zoo.create(name, img_size=SIZE, depth=DEPTH, num_classes=5)


def extractor(model, nodes, train=None):
    if train is None:
        return create_feature_extractor(model, return_nodes=nodes, tracer_kwargs=TRACER)
    return create_feature_extractor(model, train_return_nodes=train, eval_return_nodes=nodes, tracer_kwargs=TRACER)


@pytest.mark.parametrize("name", TIMM_MODELS)
def test_fx_graph_equals_the_eager_model(name, one_thread):
    model = tiny(name).eval()
    train_nodes, eval_nodes = get_graph_node_names(model, tracer_kwargs=TRACER)
    assert "head" in eval_nodes and any(n.startswith("blocks.1.mlp.") for n in eval_nodes)   # blocks traced into
    fx = extractor(model, {"blocks.1": "tap", "head": "logits"})
    sizes = [(SIZE, SIZE)] + ([] if model.default_cfg["fixed_input_size"] else [(64, 32)])
    for h, w in sizes:
        x = torch.randn(2, 3, h, w)
        with torch.no_grad():
            out = fx(x)
            ref_tap = model.forward_intermediates(x, indices=[1], output_fmt="NLC", intermediates_only=True)[0]
            torch.testing.assert_close(out["logits"], model(x), rtol=1e-5, atol=1e-6)
            torch.testing.assert_close(out["tap"][:, model.num_prefix_tokens:], ref_tap, rtol=1e-5, atol=1e-6)
    with pytest.raises(ValueError, match="not divisible by the patch size|expected a 48x48 image"):
        fx(torch.randn(1, 3, 50, 50))                                       # the eager checks run in the graph
    with pytest.raises(ValueError, match="input channel"):
        fx(torch.randn(1, 1, SIZE, SIZE))


@pytest.mark.parametrize("name", TIMM_MODELS)
def test_fx_graph_trains(name, one_thread):
    model = tiny(name).train()
    fx = extractor(model, {"head": "logits"}, train={"head": "logits"})
    fx.train()
    out = fx(torch.randn(2, 3, SIZE, SIZE))["logits"]
    assert out.shape == (2, 5)
    out.mean().backward()
    # the graph holds the model's own parameters (not copies): training it trains the model
    missing = [n for n, p in model.named_parameters() if p.grad is None]
    assert not missing, f"no gradient reaches {missing}"
    # and all of them, also a table the blocks read through per-layer views (RoPE-Mixed's rope.freqs): an optimiser
    # of the graph trains the whole model (timm's test_model_backward_fx counts them)
    assert {id(p) for p in fx.parameters()} == {id(p) for p in model.parameters()}
