import os

import pytest


@pytest.fixture(autouse=True)
def _isolated_zoo_home(tmp_path_factory, monkeypatch):
    # no test writes into the user's cache or reaches the network by accident
    if "ZOO_HOME" not in os.environ or not os.environ["ZOO_HOME"].startswith(str(tmp_path_factory.getbasetemp())):
        monkeypatch.setenv("ZOO_HOME", str(tmp_path_factory.mktemp("zoo_home")))
