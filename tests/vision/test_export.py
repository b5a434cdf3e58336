"""torch.export of every vision classifier timm sees with a dynamic image size (``torch.export.Dim`` on H and W):
one exported program serves every size a ``dynamic_img_size`` model takes, with the eager model's logits at the
traced size and at others (the position caches, the iRPE buckets, the RMT decay, the MD-TPE scan and the learned
table's resampling all follow the symbolic grid)."""
import warnings

import pytest
import torch
from torch.export import Dim, export

import zoo
from timm_test_helpers import timm_models

TIMM_MODELS = timm_models()


@pytest.mark.parametrize("name", TIMM_MODELS)
def test_export_with_a_dynamic_image_size(name, one_thread):
    torch.manual_seed(0)
    model = zoo.create(name, img_size=48, depth=2, num_classes=5, dynamic_img_size=True).eval()
    h, w = Dim("h", min=2, max=32), Dim("w", min=2, max=32)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        program = export(model, (torch.randn(2, 3, 48, 48),), dynamic_shapes={"x": {2: 16 * h, 3: 16 * w}})
    run = program.module()
    for size in [(48, 48), (64, 32), (32, 80)]:
        x = torch.randn(2, 3, *size)
        with torch.no_grad():
            torch.testing.assert_close(run(x), model(x), rtol=1e-5, atol=1e-5)
    with pytest.raises(Exception, match="16"):             # H must stay a multiple of the patch
        run(torch.randn(2, 3, 40, 48))
