#!/usr/bin/env bash
# Idempotent set-up for a fresh Debian machine: system packages, then .venv with speechswarm.
#   make setup            (what `make demo` and `make test` run first)
set -euo pipefail
cd "$(dirname "$0")/.."

# chromium: headless, for the test of `speechswarm serve`'s web page (tests/serve/test_serve_page.py)
APT_PACKAGES=(espeak-ng flite festival festvox-kallpc16k festvox-kdlpc16k festvox-us-slt-hts
              sox libsndfile1 fortunes g++ chromium)
missing=()
for pkg in "${APT_PACKAGES[@]}"; do
  dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "install ok installed" || missing+=("$pkg")
done
if [ ${#missing[@]} -gt 0 ]; then
  echo "setup: installing Debian packages: ${missing[*]}"
  if [ "$(id -u)" -ne 0 ]; then
    SUDO=sudo
    command -v sudo >/dev/null || { echo "setup: need root to install ${missing[*]}; run as root or install them yourself" >&2; exit 1; }
  else
    SUDO=
  fi
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi

PYTHON=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
  echo "setup: creating .venv with $($PYTHON --version)"
  $PYTHON -m venv .venv
fi
# torch first, pinned to the CPU wheel this machine carries, so that no dependency can pull a
# multi-GB CUDA build through a looser range.
if ! .venv/bin/python -c "import torch" 2>/dev/null; then
  echo "setup: installing torch==2.13.0 (CPU)"
  .venv/bin/pip install -q torch==2.13.0
fi
echo "setup: installing speechswarm (editable) with dev extras"
.venv/bin/pip install -q -e ".[dev]"
.venv/bin/python -c "import torch, speechswarm; print(f'setup: ok (torch {torch.__version__}, speechswarm {speechswarm.__version__})')"
