"""Run timm's own per-model tests (``tests/test_models.py`` of the installed timm's source release) on the zoo's
vision models, unmodified: the test file is read from timm's sdist (the wheel ships no tests), and a pytest plugin
(``scripts/zoo_timm_only.py``) imports zoo before collection, so that timm's model lists hold our models, selected
as timm selects its own ViTs, and keeps only the items of our models.

    .venv/bin/python scripts/timm_contract.py                       # every zoo model timm sees
    .venv/bin/python scripts/timm_contract.py --models 'vit_irpe_*' -- -k "forward or cfgs"

The sdist is fetched once with ``pip download timm==<installed version> --no-binary :all:`` into
``--cache`` (default ``~/.cache/zoo/timm-src``). ``-- ARGS`` go to pytest. Exit status: pytest's; 5 (nothing
selected: no zoo model matched) is reported as an error, not as a pass.
"""
from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tarfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

def timm_tests(cache: Path) -> Path:
    """``tests/`` of the installed timm's sdist, downloaded and unpacked into ``cache`` once."""
    import timm

    version = timm.__version__
    dest = cache / f"timm-{version}"
    if (dest / "tests" / "test_models.py").is_file():
        return dest / "tests"
    cache.mkdir(parents=True, exist_ok=True)
    subprocess.run([sys.executable, "-m", "pip", "download", f"timm=={version}", "--no-deps", "--no-binary",
                    ":all:", "-d", str(cache), "-q"], check=True)
    archive = cache / f"timm-{version}.tar.gz"
    if not archive.is_file():
        raise SystemExit(f"pip download gave no {archive.name} in {cache}")
    with tarfile.open(archive) as tar:
        members = [m for m in tar.getmembers() if m.name.startswith(f"timm-{version}/tests/")]
        tar.extractall(cache, members=members, filter="data")
    return dest / "tests"


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default="*", help="fnmatch pattern of zoo model names (default: all)")
    parser.add_argument("--cache", default=str(Path.home() / ".cache" / "zoo" / "timm-src"))
    parser.add_argument("pytest_args", nargs="*", help="after --: arguments for pytest")
    args = parser.parse_args(argv)
    tests = timm_tests(Path(args.cache).expanduser())
    env = {**os.environ, "ZOO_TIMM_MODELS": args.models,
           "PYTHONPATH": os.pathsep.join([str(ROOT / "scripts"), str(ROOT), os.environ.get("PYTHONPATH", "")])}
    cmd = [sys.executable, "-m", "pytest", "-p", "zoo_timm_only", "-p", "no:cacheprovider", "-W", "ignore",
           "-rfE", str(tests / "test_models.py"), *args.pytest_args]
    rc = subprocess.run(cmd, cwd=tests.parent, env=env).returncode
    if rc == 5:
        print(f"no zoo model matched --models {args.models!r}: nothing ran", file=sys.stderr)
    return rc


if __name__ == "__main__":
    sys.exit(main())
