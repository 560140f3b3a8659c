#!/usr/bin/env bash
# Create or refresh the local virtual environment .venv with exactly what is pinned.
# Usage: scripts/setup.sh [requirements-file]   (default: requirements.txt)
set -euo pipefail
cd "$(dirname "$0")/.."
req="${1:-requirements.txt}"
if [ ! -x .venv/bin/python ]; then
  python3 -m venv .venv
fi
# Re-install only when the pinned files changed (pip's own no-op check takes ~20 s).
stamp=".venv/.installed-$(basename "$req")"
want="$(cat "$req" requirements*.txt | sha256sum | cut -c1-16)"  # the optional files included by -r too
if [ "$(cat "$stamp" 2>/dev/null)" != "$want" ]; then
  echo "setup: installing $req into .venv (first time: a few minutes)"
  # torch is pinned in the file itself; never let pip pick a torch on its own.
  .venv/bin/pip install --disable-pip-version-check -q -r "$req" 2>&1 | grep -v "^WARNING: Location" || true
  .venv/bin/python -c "import torch, torchvision, transformers, peft, gradio, qwen_vl_utils" \
    || { echo "setup: the environment did not install correctly" >&2; exit 1; }
  echo "$want" > "$stamp"
fi
# the native kernels (cached under ~/.cache/graft_ui/native): built here, not on the app's first request
kstamp=".venv/.kernels-$(cat graft_ui/analysis/_native_stats.c graft_ui/kernels/_lora_gates.c | sha256sum | cut -c1-16)"
if [ ! -f "$kstamp" ]; then
  .venv/bin/python -c "from graft_ui.warmup import build_kernels; build_kernels()" && touch "$kstamp" || true
fi
