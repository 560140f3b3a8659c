#!/usr/bin/env bash
# Set up the environment and open Graft Studio on the offline demo zoo. On the first run the page
# opens as soon as the environment is installed and the zoo is built by a background process, its
# progress shown in the app (graft_ui/zoo/background.py); the tabs that need it open when it is in.
# Stopping the app leaves that build running; the next start shows it again.
# Extra arguments go to app.py, e.g. scripts/demo.sh --port 7861 (--wait-for-zoo: build first)
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh requirements.txt
echo "demo: environment ready; starting Graft Studio"
export HF_HUB_OFFLINE=1 GRADIO_ANALYTICS_ENABLED=False TOKENIZERS_PARALLELISM=false
exec .venv/bin/python app.py "$@"
