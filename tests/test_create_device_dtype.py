"""``zoo.create(name, device=, dtype=)`` for every registered model, and an unknown keyword as a TypeError (the
contract timm's ``create_model`` keeps: ``device='meta'`` builds shapes only, every parameter and buffer there)."""
import pytest
import torch

import zoo
from zoo.errors import ConfigError, UnknownArgumentError
from zoo.registry import _REGISTRY

ALL = zoo.list_models()


def _tensors(model):
    return list(model.named_parameters()) + list(model.named_buffers())


@pytest.mark.parametrize("name", ALL)
def test_every_model_builds_on_the_meta_device_in_the_dtype_asked(name):
    model = zoo.create(name, device="meta", dtype=torch.bfloat16)
    tensors = _tensors(model)
    assert tensors, "a model without parameters or buffers"
    assert [k for k, t in tensors if t.device.type != "meta"] == []
    assert [k for k, t in tensors if t.is_floating_point() and t.dtype != torch.bfloat16] == []
    assert [k for k, t in model.named_parameters() if not t.is_floating_point()] == []


@pytest.mark.parametrize("name", ALL)
def test_an_unknown_keyword_is_a_type_error_naming_it(name):
    with pytest.raises(TypeError, match="unknown keyword argument 'not_a_model_arg'") as info:
        zoo.create(name, not_a_model_arg=1)
    assert isinstance(info.value, UnknownArgumentError) and isinstance(info.value, ConfigError)


VISION = [n for n in ALL if _REGISTRY[n].domain == "vision" and not n.startswith("detr")]


@pytest.mark.parametrize("name", VISION)
def test_every_vision_classifier_runs_on_the_meta_device(name):
    """Shapes only: a forward on meta tensors (no autocast there; the encodings' float32 regions are no-ops)."""
    patch = zoo.create(name, device="meta").patch_embed.proj.kernel_size[0]
    size = patch * 4
    model = zoo.create(name, device="meta", num_classes=7, img_size=size).eval()
    with torch.no_grad():
        out = model(torch.empty(2, 3, size, size, device="meta"))
    assert out.device.type == "meta" and tuple(out.shape) == (2, 7)


def test_dtype_casts_the_float32_build():
    """The same seed in float64 computes what the float32 model computes, to float32 precision."""
    torch.manual_seed(0)
    m32 = zoo.create("vit_irpe_tiny", img_size=32, num_classes=5).eval()
    torch.manual_seed(0)
    m64 = zoo.create("vit_irpe_tiny", img_size=32, num_classes=5, dtype=torch.float64).eval()
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        y32, y64 = m32(x), m64(x.double())
    assert y64.dtype == torch.float64
    assert torch.allclose(y64.float(), y32, atol=1e-5, rtol=1e-4)
    for (k, a), (_, b) in zip(m32.state_dict().items(), m64.state_dict().items()):
        assert torch.equal(a.double(), b) if a.is_floating_point() else torch.equal(a, b), k


def test_bad_device_dtype_and_weights_on_meta_are_refused(tmp_path):
    with pytest.raises(ConfigError, match="device must be a torch.device .* got 'gpu0'"):
        zoo.create("vit_irpe_tiny", device="gpu0")
    with pytest.raises(ConfigError, match="dtype must be a floating torch.dtype .* got torch.int64"):
        zoo.create("vit_irpe_tiny", dtype=torch.int64)
    with pytest.raises(ConfigError, match="dtype must be a floating torch.dtype .* got 'bf16'"):
        zoo.create("vit_irpe_tiny", dtype="bf16")
    with pytest.raises(ConfigError, match="cannot load weights into vit_irpe_tiny on the meta device"):
        zoo.create("vit_irpe_tiny", device="meta", pretrained_file=str(tmp_path / "w.safetensors"))
    assert not list(tmp_path.iterdir())


@pytest.mark.parametrize("name", ALL)
def test_torchscript_compiles_the_scripted_form_or_is_refused_by_name(name):
    """TorchScript cannot compile the zoo's attention (Python objects choose kernels and encodings): scripting a
    model either compiles its scripted form (the ViT family, the RoPE-ViTs, LightNet: tests/vision/test_scripting.py
    checks their values) or stops before compiling, with an error naming the module and the forms that work."""
    from domains.vision.lightnet import LightNet
    from domains.vision.models import VisionTransformer
    from domains.vision.rope_vit import RoPEVisionTransformer
    from zoo.errors import NotScriptableError
    model = zoo.create(name, device="meta")
    if isinstance(model, LightNet) or (isinstance(model, (VisionTransformer, RoPEVisionTransformer))
                                       and model.embed_pe is None and getattr(model, "pe", None) is None):
        assert isinstance(torch.jit.script(model), torch.jit.ScriptModule)
        return
    refusal = r"torch\.jit\.script: \w+ (\(zoo\.[\w.]+\) is not TorchScript|has no scripted form).*torch\.export"
    with pytest.raises(NotScriptableError, match=refusal) as info:
        torch.jit.script(model)
    assert isinstance(info.value, NotImplementedError)
