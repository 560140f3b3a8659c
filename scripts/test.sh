#!/usr/bin/env bash
# Set up (venv + pinned packages + Debian chromium and PostgreSQL for the browser and vote-store tests) and run the test suite.
# Extra arguments go to pytest, e.g. scripts/test.sh tests/merging -x
# The whole-suite run (no arguments) first runs tests/kernels as on an AVX2 CPU: torch, MKL and
# oneDNN limited to AVX2 and the C kernels built for x86-64-v3 (where this CPU can run that code),
# so a CPU other than the developers' cannot turn the suite red; pytest's summary line of the
# whole suite stays the last line.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh requirements-dev.txt
if [ ! -x /usr/bin/chromium ] && command -v apt-get >/dev/null && [ "$(id -u)" = 0 ]; then
  echo "test: installing Debian chromium for the browser tests"
  (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium) >/dev/null 2>&1 \
    || echo "test: could not install chromium; browser tests will be skipped" >&2
fi
if ! command -v initdb >/dev/null && ! ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1 \
    && command -v apt-get >/dev/null && [ "$(id -u)" = 0 ]; then
  echo "test: installing the Debian PostgreSQL server for the PostgreSQL vote-store tests"
  (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq postgresql) >/dev/null 2>&1 \
    || echo "test: could not install postgresql; the PostgreSQL vote tests will fail" >&2
fi
# the PostgreSQL vote tests fail instead of skipping when no server can run (GRAFT_REQUIRE_POSTGRES=0 to allow skips)
export GRAFT_REQUIRE_POSTGRES="${GRAFT_REQUIRE_POSTGRES:-1}"
export HF_HUB_OFFLINE=1 GRADIO_ANALYTICS_ENABLED=False TOKENIZERS_PARALLELISM=false
export GRAFT_ZOO_DIR="${GRAFT_ZOO_DIR:-$PWD/.zoo}"
if [ $# -eq 0 ] && [ "$(uname -m)" = x86_64 ] && grep -qw avx2 /proc/cpuinfo && grep -qw fma /proc/cpuinfo; then
  echo "test: tests/kernels as on an AVX2 CPU (ATEN_CPU_CAPABILITY=avx2, MKL/oneDNN AVX2, kernels for x86-64-v3)"
  ATEN_CPU_CAPABILITY=avx2 MKL_ENABLE_INSTRUCTIONS=AVX2 ONEDNN_MAX_CPU_ISA=AVX2 GRAFT_NATIVE_MARCH=x86-64-v3 \
    .venv/bin/python -m pytest tests/kernels -q -p no:cacheprovider
fi
exec .venv/bin/python -m pytest "${@:-tests}"
