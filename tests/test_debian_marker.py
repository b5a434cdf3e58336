"""The debian_data marker check itself: opening a Debian data file is attributed to its package (through links and
metapackages), other files to none, and only while a test runs."""
import os
import sys
from pathlib import Path

import pytest

from debian_data import Watcher, package_files, setup_packages

FMNIST = Path("/usr/share/datasets/fashion-mnist/t10k-labels-idx1-ubyte.gz")


@pytest.fixture(scope="module")
def watcher():
    w = Watcher(package_files())
    sys.addaudithook(w.hook)          # hooks cannot be removed: this one stays inactive outside the tests below
    yield w
    w.active = False


def test_every_setup_package_owns_files():
    owner = package_files()
    assert set(setup_packages()) == set(owner.values())       # each package installed by setup.sh brings data


@pytest.mark.debian_data("dataset-fashion-mnist", "golang-src")
def test_opens_are_attributed_to_their_package(watcher, tmp_path):
    watcher.seen.clear()
    watcher.active = True
    try:
        FMNIST.read_bytes()
        go = next(p for p in watcher.owner if "/src/" in p and p.endswith(".go"))
        alias = Path("/usr/share/go") / Path(go).relative_to(os.path.realpath("/usr/share/go"))
        alias.read_bytes()                                    # through the /usr/share/go -> go-1.19 link
        (tmp_path / "x.txt").write_text("x")
        (tmp_path / "x.txt").read_text()
    finally:
        watcher.active = False
    assert watcher.seen == {"dataset-fashion-mnist", "golang-src"}
    watcher.seen.clear()
    FMNIST.read_bytes()                                       # inactive: not recorded
    assert watcher.seen == set()
