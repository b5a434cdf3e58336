"""Every recipe validates against the config schema, starts with its own command, and builds a working model."""
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parent.parent
RECIPES = sorted((ROOT / "configs").rglob("*.yaml"))


def test_there_are_recipes():
    assert len(RECIPES) >= 8


@pytest.mark.parametrize("path", RECIPES, ids=lambda p: str(p.relative_to(ROOT)))
def test_recipe(path):
    import zoo
    from zoo.finetune.config import load_config
    from zoo.finetune.tasks import get_task

    rel = path.relative_to(ROOT)
    assert path.read_text().splitlines()[0] == f"# zoo finetune {rel}", "the header must be the command that runs it"
    cfg = load_config(str(path), [])
    assert cfg.output.dir == f"runs/{path.stem}", "each recipe writes to its own run folder"
    task = get_task(cfg.task)
    kwargs = dict(cfg.model.kwargs)
    model = zoo.create(cfg.model.name, **kwargs).eval()
    size = kwargs.get("img_size", 224)
    x = torch.randn(2, kwargs.get("in_chans", 3), size, size)
    with torch.no_grad():
        out = model(x)
    assert out.shape == (2, kwargs["num_classes"]) and torch.isfinite(out).all()
    assert task is not None
