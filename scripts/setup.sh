#!/usr/bin/env bash
# Create or refresh the local virtual environment .venv with exactly what is pinned.
# Usage: scripts/setup.sh [requirements-file]   (default: requirements.txt)
set -euo pipefail
cd "$(dirname "$0")/.."
req="${1:-requirements.txt}"
if [ ! -x .venv/bin/python ]; then
  python3 -m venv .venv
fi
# uv installs the same pinned files several times faster than pip (a fresh .venv here: 18 s with an
# empty uv cache, 4 s warm, against 101 s for pip with a warm cache); it is pinned, installed into
# .venv with pip, and told pip's own indexes, find-links and constraints (uv does not read pip.conf).
# GRAFT_NO_UV=1, or uv failing, falls back to pip.
UV_VERSION=0.13.8
pip_sources() {  # `pip config list` lines (scope.key='v1 v2') -> uv arguments, one per line
  .venv/bin/python -m pip config list 2>/dev/null | awk -F"[.=]" '
    { key = $2; sub(/^[^=]*=/, ""); gsub(/\047/, ""); n = split($0, v, /[ \t]+/) }
    key ~ /^(index-url|extra-index-url|find-links|constraint)$/ { for (i = 1; i <= n; i++) if (v[i] != "" && !seen[key v[i]]++) print "--" key "\n" v[i] }'
}
install_with_uv() {
  [ "${GRAFT_NO_UV:-0}" != 1 ] || return 1
  [ -x .venv/bin/uv ] && [ "$(.venv/bin/uv --version 2>/dev/null | cut -d" " -f2)" = "$UV_VERSION" ] \
    || .venv/bin/pip install --disable-pip-version-check -q "uv==$UV_VERSION" >/dev/null 2>&1 || return 1
  local src
  mapfile -t src < <(pip_sources)
  .venv/bin/uv pip install --quiet --python .venv/bin/python --index-strategy unsafe-best-match "${src[@]}" -r "$1"
}
# Re-install only when the pinned files changed (pip's own no-op check takes ~20 s).
stamp=".venv/.installed-$(basename "$req")"
want="$(cat "$req" requirements*.txt | sha256sum | cut -c1-16)"  # the optional files included by -r too
if [ "$(cat "$stamp" 2>/dev/null)" != "$want" ]; then
  echo "setup: installing $req into .venv (first time: a minute or a few)"
  # torch is pinned in the file itself; never let pip pick a torch on its own.
  install_with_uv "$req" || {
    [ "${GRAFT_NO_UV:-0}" = 1 ] || echo "setup: uv could not install $req; using pip" >&2
    .venv/bin/pip install --disable-pip-version-check -q -r "$req" 2>&1 | grep -v "^WARNING: Location" || true
  }
  installed=1
fi
# the native kernels (cached under ~/.cache/graft_ui/native): built here, not on the app's first request;
# after an install, in the same process as the import check (a fresh .venv's first imports compile
# its bytecode: most of this step, once)
kstamp=".venv/.kernels-$(cat graft_ui/analysis/_native_stats.c graft_ui/kernels/_lora_gates.c | sha256sum | cut -c1-16)"
if [ -n "${installed:-}" ]; then
  .venv/bin/python -c "
import torch, torchvision, transformers, peft, gradio, qwen_vl_utils
from pathlib import Path
try:
    from graft_ui.warmup import build_kernels
    build_kernels()
    Path('$kstamp').touch()
except Exception as exc:  # the app builds them on first use instead
    print(f'setup: the native kernels were not built now ({exc})')
" || { echo "setup: the environment did not install correctly" >&2; exit 1; }
  echo "$want" > "$stamp"
elif [ ! -f "$kstamp" ]; then
  .venv/bin/python -c "from graft_ui.warmup import build_kernels; build_kernels()" && touch "$kstamp" || true
fi
