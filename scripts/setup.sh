#!/usr/bin/env bash
# Set up a fresh machine for zoo: the Debian data packages and a virtualenv in .venv with zoo installed.
# Idempotent: a second run only checks what is there.
set -euo pipefail
cd "$(dirname "$0")/.."

DEB_PACKAGES="dataset-fashion-mnist labelme-examples golang-src microbiomeutil-data r-cran-mlbench r-cran-kernlab python-biopython-doc r-doc-pdf"
missing=""
for p in $DEB_PACKAGES; do
    dpkg -s "$p" >/dev/null 2>&1 || missing="$missing $p"
done
if [ -n "$missing" ]; then
    SUDO=""; [ "$(id -u)" -ne 0 ] && SUDO="sudo"
    echo "[setup] installing Debian packages:$missing"
    $SUDO apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends $missing >/dev/null
fi

PY="${PYTHON:-python3}"
if [ ! -x .venv/bin/python ]; then
    echo "[setup] creating .venv"
    "$PY" -m venv .venv
fi
stamp=.venv/.zoo-installed
if [ ! -f "$stamp" ] || [ pyproject.toml -nt "$stamp" ]; then
    echo "[setup] installing zoo and its dependencies into .venv (torch 2.14.1, torchvision 0.29.1)"
    for spec in "torch==2.14.1 torchvision==0.29.1" "-e .[all,dev]"; do
        # shellcheck disable=SC2086
        if ! .venv/bin/pip install -q --disable-pip-version-check $spec >.venv/pip.log 2>&1; then
            grep -v "^WARNING: Location" .venv/pip.log >&2
            echo "[setup] pip install $spec failed" >&2
            exit 1
        fi
    done
    .venv/bin/python -c "import zoo, timm, torch" 
    touch "$stamp"
fi
