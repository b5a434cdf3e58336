"""Fixtures shared by the vision tests."""
import pytest
import torch


@pytest.fixture
def one_thread():
    # the machines running these tests are shared: one intra-op thread is ~50x faster than two contended ones
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)
