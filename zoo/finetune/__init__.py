"""Fine-tuning: ``zoo finetune CONFIG [key=value ...] [--resume]``.

    from zoo.finetune import load_config, finetune
    summary = finetune(load_config("configs/vision/vit_irpe_tiny_fmnist.yaml", ["train.epochs=1"]))

``config`` holds the schema, ``tasks`` the task registry (a domain's ``task.py`` registers its tasks), ``engine``
the loop. See ``engine`` for what a run writes to ``output.dir``.
"""
from .config import (DataCfg, FinetuneCfg, ModelCfg, OptimCfg, OutputCfg, TrainCfg, build_config, load_config,
                     valid_keys)
from .engine import finetune, run_from_cli
from .tasks import Task, get_task, list_tasks, register_task

__all__ = ["finetune", "run_from_cli", "load_config", "build_config", "valid_keys", "FinetuneCfg", "ModelCfg",
           "DataCfg", "OptimCfg", "TrainCfg", "OutputCfg", "Task", "register_task", "get_task", "list_tasks"]
