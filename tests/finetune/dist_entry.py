"""What the distributed tests start under torchrun (or by hand, one process per rank)::

    torchrun --standalone --nproc_per_node=2 tests/finetune/dist_entry.py CONFIG.yaml [--resume]

It runs ``zoo finetune CONFIG`` through the command line's own entry (`zoo.cli.main`, so errors and exit codes are
the CLI's), after two optional test hooks:

* ``ZOO_TEST_ACT=rank:call:action`` -- on that rank, before the ``call``-th loss (1-based): ``sigint`` sends Ctrl-C
  to this process, ``kill`` SIGKILLs it (a rank that dies).
* ``ZOO_TEST_DUMP=1`` -- each rank saves its own copy of the final weights to ``output.dir/rank<r>.pt`` (DDP keeps
  a full replica per rank: they must be identical).
"""
import os
import signal
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path[:0] = [str(ROOT), str(ROOT / "tests")]

import torch  # noqa: E402
import yaml  # noqa: E402

from zoo.cli import main  # noqa: E402
from zoo.finetune import distributed  # noqa: E402


def _install_act(spec: str) -> None:
    rank, call, action = spec.split(":")
    if int(os.environ.get("RANK", "0")) != int(rank):
        return
    from domains.vision.task import ImageClassificationTask
    original, calls = ImageClassificationTask.loss, {"n": 0}

    def loss(self, model, batch):
        calls["n"] += 1
        if calls["n"] == int(call):
            os.kill(os.getpid(), signal.SIGINT if action == "sigint" else signal.SIGKILL)
        return original(self, model, batch)

    ImageClassificationTask.loss = loss


def run(argv):
    if os.environ.get("ZOO_TEST_ACT"):
        _install_act(os.environ["ZOO_TEST_ACT"])
    wrapped = []
    if os.environ.get("ZOO_TEST_DUMP"):
        wrap = distributed.wrap_model

        def capture(*args, **kwargs):
            wrapped.append(wrap(*args, **kwargs))
            return wrapped[-1]

        distributed.wrap_model = capture
    code = main(["finetune", *argv])
    if wrapped:
        out = Path(yaml.safe_load(Path(argv[0]).read_text())["output"]["dir"])
        state = {k: v.detach().clone() for k, v in distributed.unwrap(wrapped[0]).state_dict().items()}
        torch.save(state, out / f"rank{os.environ.get('RANK', '0')}.pt")
    return code


if __name__ == "__main__":
    sys.exit(run(sys.argv[1:]))
