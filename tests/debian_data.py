"""The ``debian_data(package)`` marker, checked: a test that opens a file installed by one of the Debian data packages
of scripts/setup.sh must carry the marker naming that package (on the test, its class or its module's
``pytestmark``), so that ``-m "not debian_data"`` selects exactly the tests that run without them.

Which files belong to which package is read from dpkg (a metapackage such as golang-src is followed to the package
holding its files); opens are seen through a Python audit hook (``sys.addaudithook``), so reads from subprocesses are
not seen.  A file read once and cached by a session fixture is seen by the first test that needs it only.
"""
from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path
from typing import Dict, Optional, Set

SETUP = Path(__file__).resolve().parents[1] / "scripts" / "setup.sh"


def setup_packages() -> list:
    m = re.search(r'^DEB_PACKAGES="([^"]*)"', SETUP.read_text(), flags=re.M)
    return m.group(1).split() if m else []


def _dpkg_files(package: str) -> list:
    try:
        out = subprocess.run(["dpkg", "-L", package], capture_output=True, text=True, timeout=60).stdout
    except (OSError, subprocess.SubprocessError):
        return []
    return [p for p in out.splitlines() if p.startswith("/") and os.path.isfile(p)]


def _depends(package: str) -> list:
    try:
        out = subprocess.run(["dpkg-query", "-W", "-f=${Depends}", package], capture_output=True, text=True,
                             timeout=60).stdout
    except (OSError, subprocess.SubprocessError):
        return []
    return [re.split(r"[\s(:]", d.strip(), 1)[0] for d in out.split(",") if d.strip()]


def _packaging_file(path: str) -> bool:
    """Debian's own bookkeeping in /usr/share/doc (changelog, copyright), not data a test reads."""
    name = os.path.basename(path)
    return path.startswith("/usr/share/doc/") and (name.startswith(("changelog", "NEWS")) or name == "copyright")


def package_files() -> Dict[str, str]:
    """Real path of every regular file -> the setup package that brings it (changelogs and copyright files left out)."""
    owner: Dict[str, str] = {}
    for pkg in setup_packages():
        files = [f for f in _dpkg_files(pkg) if not _packaging_file(f)]
        if not files:                                          # a metapackage: its dependencies hold the files
            files = [f for dep in _depends(pkg) for f in _dpkg_files(dep) if not _packaging_file(f)]
        for f in files:
            owner.setdefault(os.path.realpath(f), pkg)
    return owner


class Watcher:
    """Records the packages whose files are opened while ``active``."""

    def __init__(self, owner: Dict[str, str]):
        self.owner = owner
        self.roots = ("/usr/", "/var/lib/")                  # where Debian packages put files (and their links)
        self.seen: Set[str] = set()
        self.active = False

    def hook(self, event: str, args: tuple) -> None:
        if event != "open" or not self.active:
            return
        path = args[0]
        if isinstance(path, int):
            return
        try:
            path = os.fsdecode(path)
        except TypeError:
            return
        if not path.startswith(self.roots):
            return
        pkg: Optional[str] = self.owner.get(path) or self.owner.get(os.path.realpath(path))
        if pkg is not None:
            self.seen.add(pkg)


def install() -> Optional[Watcher]:
    owner = package_files()
    if not owner:
        return None
    w = Watcher(owner)
    sys.addaudithook(w.hook)
    return w
