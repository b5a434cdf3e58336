import os
import socket

import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_leaves


@pytest.fixture(autouse=True)
def _isolated_zoo_home(tmp_path_factory, monkeypatch):
    # no test writes into the user's cache or reaches the network by accident
    if "ZOO_HOME" not in os.environ or not os.environ["ZOO_HOME"].startswith(str(tmp_path_factory.getbasetemp())):
        monkeypatch.setenv("ZOO_HOME", str(tmp_path_factory.mktemp("zoo_home")))


@pytest.fixture(autouse=True)
def _loopback_only(monkeypatch):
    # no socket of a test may leave the machine: servers in tests listen on 127.0.0.1 / ::1
    real_connect = socket.socket.connect

    def guarded_connect(self, address):
        if self.family in (socket.AF_INET, socket.AF_INET6) and address[0] not in ("127.0.0.1", "::1", "localhost"):
            raise AssertionError(f"a test tried to reach the network: {address!r}")
        return real_connect(self, address)

    monkeypatch.setattr(socket.socket, "connect", guarded_connect)


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


# ---- the debian_data marker is checked: a test that opens a Debian data file must say so --------------------------
from debian_data import install as _install_debian_watcher  # noqa: E402

_DEBIAN = _install_debian_watcher()


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_setup(item):
    if _DEBIAN is not None:
        _DEBIAN.seen.clear()
        _DEBIAN.active = True
    yield


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    outcome = yield
    if _DEBIAN is None or call.when != "call":
        return
    _DEBIAN.active = False
    report = outcome.get_result()
    declared = {a for m in item.iter_markers("debian_data") for a in m.args}
    undeclared = sorted(_DEBIAN.seen - declared)
    if undeclared and report.passed:
        report.outcome = "failed"
        report.longrepr = (f"{item.nodeid} reads files of the Debian package(s) {', '.join(undeclared)} but is not "
                           f"marked: add @pytest.mark.debian_data({', '.join(repr(p) for p in undeclared)}) (or a "
                           f"module-level pytestmark)")


@pytest.fixture
def one_thread():
    # the machines running these tests are shared: one intra-op thread is ~50x faster than two contended ones
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)
