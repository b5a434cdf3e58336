import os

import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_leaves


@pytest.fixture(autouse=True)
def _isolated_zoo_home(tmp_path_factory, monkeypatch):
    # no test writes into the user's cache or reaches the network by accident
    if "ZOO_HOME" not in os.environ or not os.environ["ZOO_HOME"].startswith(str(tmp_path_factory.getbasetemp())):
        monkeypatch.setenv("ZOO_HOME", str(tmp_path_factory.mktemp("zoo_home")))


class LargestTensor(TorchDispatchMode):
    """Records the number of elements of the largest tensor any aten op returns (``probe.numel``)."""

    def __init__(self):
        super().__init__()
        self.numel = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        for t in tree_leaves(out):
            if isinstance(t, torch.Tensor):
                self.numel = max(self.numel, t.numel())
        return out


@pytest.fixture
def largest_tensor():
    """The `LargestTensor` probe class: ``with largest_tensor() as probe: ...; probe.numel``."""
    return LargestTensor
