"""Driving the fine-tune engine from tests: act at a chosen training step (interrupt it, poison the loss)."""
from domains.vision.task import ImageClassificationTask


def on_loss_call(monkeypatch, call, action):
    """Run ``action(model)`` before the ``call``-th micro-batch loss (1-based) of image classification; when it
    returns a function, the loss result ``(loss, n)`` goes through it."""
    calls = {"n": 0}
    original = ImageClassificationTask.loss

    def loss(self, model, batch):
        calls["n"] += 1
        if calls["n"] == call:
            out = action(model)
            if out is not None:
                return out(original(self, model, batch))
        return original(self, model, batch)

    monkeypatch.setattr(ImageClassificationTask, "loss", loss)
