#!/usr/bin/env bash
# Create (once) the separate virtual environment with mergekit 0.1.5 that the mergekit cross-check
# (tests/merging/test_mergekit_parity.py) and bench/bench_merge.py --mergekit-python use. mergekit pulls
# transformers 5.25, which must never go into the project's .venv, so it lives apart:
# ${GRAFT_MERGEKIT_VENV:-~/.cache/graft_ui/mergekit-venv}. Prints the venv's python on success.
set -euo pipefail
VENV="${GRAFT_MERGEKIT_VENV:-$HOME/.cache/graft_ui/mergekit-venv}"
if [ ! -x "$VENV/bin/mergekit-yaml" ]; then
  echo "mergekit-venv: creating $VENV (mergekit==0.1.5, torch==2.14.1)" >&2
  python3 -m venv "$VENV"
  "$VENV/bin/pip" install -q --disable-pip-version-check mergekit==0.1.5 torch==2.14.1 >&2
fi
echo "$VENV/bin/python"
