"""Helpers shared by the code tests: small real source trees."""
import shutil

from domains.code.data import cpython_stdlib


def copy_small_tree(dest, train=10, val=2, test=2):
    """Copy small stdlib files (2-12 kB) into ``dest`` keeping their bytes, hence their content-hash split: ``train``,
    ``val`` and ``test`` files of each split."""
    want = {"train": train, "val": val, "test": test}
    for f in cpython_stdlib().files:
        if 2000 < f.size < 12000 and want[f.split] > 0:
            want[f.split] -= 1
            p = dest / f.relpath
            p.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy(f.path, p)
    assert not any(want.values()), f"the stdlib has too few small files: still wanted {want}"
    return dest


#: a one-block code LM, small enough for a few training steps in a test
TINY = {"dim": 32, "depth": 1, "num_heads": 2}


def lm_cfg(src, out, model="code_lm_rope_tiny", **train):
    """A causal_lm fine-tune config on the source tree ``src``: 32-token windows, a 300-token BPE, ``TINY``."""
    t = {"steps": 6, "batch_size": 8, "log_every": 1, "progress": False, "seed": 1, "num_threads": 1, "amp": "off",
         "eval_batch_size": 64}
    t.update(train)
    return {"task": "causal_lm", "model": {"name": model, "kwargs": dict(TINY)},
            "data": {"name": "source_tree", "root": str(src), "seq_len": 32, "vocab_size": 300, "eval_limit": 64},
            "optim": {"lr": 3e-3, "warmup_steps": 0, "min_lr_ratio": 1.0}, "train": t, "output": {"dir": str(out)}}


def built_task(src, **data):
    """A `CausalLMTask` with its data built from `lm_cfg` and the ``data`` keys given."""
    from zoo.finetune import build_config

    from domains.code.task import CausalLMTask

    cfg = lm_cfg(src, "unused")
    cfg["data"].update(data)
    task = CausalLMTask()
    task.build_data(build_config(cfg))
    return task
