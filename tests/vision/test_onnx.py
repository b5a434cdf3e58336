"""ONNX export for inference (``torch.onnx.export(..., dynamo=True)``) of every vision classifier timm sees, run in
onnxruntime: the same logits as PyTorch, and the eager model unchanged after the export (no traced tensor left in
a cache)."""
import contextlib
import io

import numpy as np
import onnxruntime as ort   # the 'export' extra (onnx, onnxscript, onnxruntime), installed by scripts/setup.sh
import pytest
import torch

import zoo
from timm_test_helpers import timm_models

TIMM_MODELS = timm_models()


def _export_and_run(model, x, path):
    with contextlib.redirect_stdout(io.StringIO()):                   # the exporter's progress lines
        torch.onnx.export(model, (x,), str(path), dynamo=True)
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return session.run(None, {session.get_inputs()[0].name: x.numpy()})[0]


@pytest.mark.parametrize("name", TIMM_MODELS)
def test_onnx_export_runs_in_onnxruntime(name, tmp_path, one_thread):
    torch.manual_seed(0)
    model = zoo.create(name, img_size=32, depth=1, num_classes=5).eval()
    x = torch.randn(1, 3, 32, 32)
    with torch.no_grad():
        before = model(x)
    got = _export_and_run(model, x, tmp_path / "m.onnx")
    np.testing.assert_allclose(got, before.numpy(), atol=1e-4, rtol=1e-4)
    with torch.no_grad():
        after = model(x)
    assert type(after) is torch.Tensor and torch.equal(after, before), "the export changed the eager model"


def test_onnx_export_of_vit_irpe_small_at_224(tmp_path, one_thread):
    torch.manual_seed(0)
    model = zoo.create("vit_irpe_small").eval()
    x = torch.randn(1, 3, 224, 224)
    got = _export_and_run(model, x, tmp_path / "vit_irpe_small.onnx")
    with torch.no_grad():
        want = model(x).numpy()
    assert got.shape == (1, 1000)
    np.testing.assert_allclose(got, want, atol=1e-4, rtol=0)


def test_an_export_as_first_use_leaves_no_traced_tensor_behind(tmp_path, one_thread):
    """iRPE caches its bucket ids per grid: a grid first met inside the exporter's trace must not be cached with
    the trace's fake tensors (the eager model would break afterwards)."""
    from zoo.pe import irpe
    irpe._bucket_ids_cached.cache_clear()
    irpe._flat_index_cached.cache_clear()
    torch.manual_seed(0)
    model = zoo.create("vit_irpe_tiny", img_size=32, depth=1, num_classes=5).eval()
    torch.manual_seed(0)
    twin = zoo.create("vit_irpe_tiny", img_size=32, depth=1, num_classes=5).eval()
    x = torch.randn(1, 3, 32, 32)
    got = _export_and_run(model, x, tmp_path / "m.onnx")
    with torch.no_grad():
        after, want = model(x), twin(x)
    assert type(after) is torch.Tensor and torch.equal(after, want)
    np.testing.assert_allclose(got, want.numpy(), atol=1e-4, rtol=1e-4)
