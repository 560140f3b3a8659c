#!/usr/bin/env bash
# Set up the environment and open Graft Studio on the offline demo zoo (built on first run).
# Extra arguments go to app.py, e.g. scripts/demo.sh --port 7861
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh requirements.txt
export HF_HUB_OFFLINE=1 GRADIO_ANALYTICS_ENABLED=False TOKENIZERS_PARALLELISM=false
exec .venv/bin/python app.py "$@"
