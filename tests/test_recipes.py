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
    from zoo.plugins import get_plugin

    rel = path.relative_to(ROOT)
    assert path.read_text().splitlines()[0] == f"# zoo finetune {rel}", "the header must be the command that runs it"
    cfg = load_config(str(path), [])
    assert cfg.output.dir == f"runs/{path.stem}", "each recipe writes to its own run folder"
    task = get_task(cfg.task)
    # the task comes from the plugin of the recipe's folder (configs/<plugin>/), registered under its own name
    assert task.name == cfg.task
    assert task.__module__ == get_plugin(path.parent.name).tasks[cfg.task]
    kwargs = dict(cfg.model.kwargs)
    model = zoo.create(cfg.model.name, **kwargs).eval()
    out, expect = _forward(cfg.task, model, kwargs)
    assert out.shape[:len(expect)] == expect and torch.isfinite(out).all()


def _forward(task: str, model, kwargs):
    """Run the recipe's model on a small input of its task; returns (output, expected leading shape)."""
    with torch.no_grad():
        if task == "image_classification":
            size = kwargs.get("img_size", 224)
            x = torch.randn(2, kwargs.get("in_chans", 3), size, size)
            return model(x), (2, kwargs["num_classes"])
        if task == "causal_lm":
            from domains.code.models import code_positions
            x = torch.randint(0, 100, (2, 16))
            return model(x, code_positions(x, newline_ids=[10], flat_levels=True)), (2, 16)
        if task in ("sequence_classification", "masked_lm", "dna_lm"):
            x = torch.randint(7, 11, (2, 24))                    # nucleotide ids (after the 7 special tokens)
            return model(x), (2,)
        if task in ("word_labelling", "entity_linking"):
            from zoo.positions import Positions
            x = torch.randint(2, 100, (2, 16))
            xy = torch.randint(0, 900, (2, 16, 2))
            boxes = torch.cat([xy, xy + torch.randint(1, 100, (2, 16, 2))], dim=-1)      # x0 y0 x1 y1, 0..1000
            out = model(x, pos=Positions(ids=torch.arange(16).expand(2, 16), boxes=boxes))
            if task == "entity_linking":
                word_entity = torch.arange(16).div(4, rounding_mode="floor").expand(2, 16)   # 4 entities of 4 words
                return model.link_head(out, word_entity, boxes[:, ::4]), (2, 4, 4)
            return out, (2, 16)
    raise AssertionError(f"no smoke input defined for task {task!r}: add one here")
