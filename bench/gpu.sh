#!/usr/bin/env bash
# One prepared GPU run, at most 8 minutes, offline: the numbers a lent GPU machine is for.
#
#   bash bench/gpu.sh             # on the GPU machine: a copy of this repo, its own python3 (torch, transformers, peft)
#   bash bench/gpu.sh --dry-run   # anywhere, on CPU, in seconds: syntax, imports (no gradio), every step's arguments
#   bash bench/gpu.sh --prepare   # here, before a GPU session: wheels the GPU image lacks -> bench/.gpu-wheels
#
# Steps (each under its own time limit, so the whole stays under 8 minutes; a step that fails or
# times out is reported as such and the others still run):
#   env     the machine: GPU, memory, torch / transformers versions            -> env.json
#   merge   bench_merge.py at Qwen2-VL-2B shapes (28 layers) on cuda: the I/O floor, full Graft,
#           TIES, and the LoRA runs (dense-delta floor, exact Graft, SVD, TIES+SVD)  -> merge.json
#   chat    bench_chat_memory.py on a 2B-shaped model: base + 2 LoRA + 1 fused vs one model -> chat_memory.json
#   first   bench_first.py: first analysis and first fusion on the ci zoo       -> first.json
# then bench/gpu_report.py writes bench/results/gpu-<UTC date>.json and .md (the README quotes
# them), also copied to $OUT when that is set (the device tool brings back only $OUT).
#
# What to carry to the GPU machine (the device tool's `carry`): bench/.gpu-wheels (from --prepare:
# qwen-vl-utils and the OpenAI client's packages, absent from its image, installed there with
# --target into the work folder, never into its Python) and .zoo/ci (else `first` builds the ci
# zoo there, ~1 minute). GRAFT_GPU_PYTHON picks the interpreter (default: .venv/bin/python when
# there, else python3); GRAFT_GPU_WORK the work folder (default /tmp/graft-gpu, ~20 GB free needed).
set -euo pipefail
cd "$(dirname "$0")/.."

MODE=run
case "${1:-}" in
  "") ;;
  --dry-run) MODE=dry ;;
  --prepare) MODE=prepare ;;
  *) echo "usage: bash bench/gpu.sh [--dry-run | --prepare]" >&2; exit 2 ;;
esac
PY="${GRAFT_GPU_PYTHON:-}"
[ -n "$PY" ] || { [ -x .venv/bin/python ] && PY=.venv/bin/python || PY=python3; }
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 TOKENIZERS_PARALLELISM=false GRADIO_ANALYTICS_ENABLED=False
export GRAFT_ZOO_DIR="${GRAFT_ZOO_DIR:-$PWD/.zoo}"
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
WHEELS=bench/.gpu-wheels
# imported by the analysis and chat paths, not in the GPU image (docs: .library/device KINDS.md)
GPU_WHEELS="qwen-vl-utils openai httpx2 httpcore2 pydantic pydantic-core annotated-types typing-inspection sniffio truststore jiter distro"

if [ "$MODE" = prepare ]; then
  mkdir -p "$WHEELS"
  for name in $GPU_WHEELS; do
    version=$("$PY" -m pip show "$name" 2>/dev/null | awk '/^Version:/ {print $2}')
    [ -n "$version" ] || { echo "gpu.sh: $name is not installed here; skipped" >&2; continue; }
    "$PY" -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
      --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
      -d "$WHEELS" "$name==$version" 2>&1 | grep -v "^WARNING: Location" || true
  done
  echo "gpu.sh: $(ls "$WHEELS" | wc -l) wheels in $WHEELS ($(du -sh "$WHEELS" | cut -f1)); carry it (and .zoo/ci) to the GPU machine"
  exit 0
fi

if [ "$MODE" = dry ]; then
  WORK="$(mktemp -d)"
  trap 'rm -rf "$WORK"' EXIT
  DEV=cpu
  DRY=(--dry-run)
  RESULT="$WORK/report/gpu-dry-run"
else
  WORK="${GRAFT_GPU_WORK:-/tmp/graft-gpu}"
  rm -rf "$WORK" && mkdir -p "$WORK"
  DEV=cuda
  DRY=()
  RESULT="bench/results/gpu-$(date -u +%Y-%m-%d)"
fi
: > "$WORK/steps.tsv"

if [ "$MODE" = run ] && [ -d "$WHEELS" ]; then  # only the wheels of packages this Python lacks
  mapfile -t need < <("$PY" - "$WHEELS" <<'EOF'
import importlib.metadata as md, pathlib, sys
for w in sorted(pathlib.Path(sys.argv[1]).glob("*.whl")):
    try:
        md.version(w.name.split("-")[0])
    except md.PackageNotFoundError:
        print(w)
EOF
  )
  if [ "${#need[@]}" -gt 0 ]; then
    "$PY" -m pip install -q --no-deps --no-index --target "$WORK/site" "${need[@]}"
    export PYTHONPATH="$PYTHONPATH:$WORK/site"  # after the image's own packages: never shadow them
  fi
fi

step() {  # step NAME LIMIT_S COMMAND...: run it under a time limit, record its exit status and seconds
  local name=$1 limit=$2 t0 rc=0
  shift 2
  t0=$(date +%s%N)
  echo "gpu.sh: $name (at most $limit s): $*" >&2
  timeout --kill-after=10 "$limit" "$@" || rc=$?
  printf '%s\t%s\t%s\n' "$name" "$rc" "$(awk -v a="$t0" -v b="$(date +%s%N)" 'BEGIN {printf "%.1f", (b - a) / 1e9}')" \
    >> "$WORK/steps.tsv"
  [ "$rc" = 0 ] || echo "gpu.sh: $name ended with status $rc" >&2
}

step env 60 "$PY" - "$WORK/env.json" "$MODE" <<'EOF'
import json, platform, sys
import torch, transformers
env = {"python": platform.python_version(), "torch": torch.__version__, "transformers": transformers.__version__,
       "cuda": torch.cuda.is_available()}
if env["cuda"]:
    p = torch.cuda.get_device_properties(0)
    env.update(device_name=p.name, memory_gb=round(p.total_memory / 2**30, 1), cuda_version=torch.version.cuda)
elif sys.argv[2] == "run":
    sys.exit("gpu.sh: torch sees no CUDA device here (use --dry-run on a CPU machine)")
json.dump(env, open(sys.argv[1], "w"), indent=1)
print(env)
EOF
if [ "$MODE" = run ] && ! grep -q '"cuda": true' "$WORK/env.json" 2>/dev/null; then
  echo "gpu.sh: no GPU; nothing measured" >&2
  exit 1
fi

step merge 250 "$PY" bench/bench_merge.py --layers 28 --device "$DEV" --lora-device "$DEV" --svd-sample 1 --exact-sample 2 \
  --workdir "$WORK/merge" --json "$WORK/merge.json" "${DRY[@]}"
step chat 120 "$PY" bench/bench_chat_memory.py --model qwen2vl-2b --device "$DEV" --workdir "$WORK/chat" \
  --json "$WORK/chat_memory.json" "${DRY[@]}"
step first 75 "$PY" bench/bench_first.py --device "$DEV" --json "$WORK/first.json" "${DRY[@]}"

"$PY" bench/gpu_report.py --work "$WORK" --out "$RESULT"
if [ "$MODE" = dry ]; then
  failed=$(awk -F'\t' '$2 != 0 {print $1}' "$WORK/steps.tsv")
  [ -z "$failed" ] || { echo "gpu.sh --dry-run: these steps failed: $failed" >&2; exit 1; }
  test -s "$RESULT.json" && test -s "$RESULT.md"
  echo "gpu.sh --dry-run: every step's arguments and imports are fine"
elif [ -n "${OUT:-}" ] && [ -d "$OUT" ]; then
  cp "$RESULT.json" "$RESULT.md" "$WORK/steps.tsv" "$OUT/"
fi
