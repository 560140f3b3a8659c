"""`python -m graft_ui serve-plan --manifest M`: the vLLM command line that serves a manifest's
base with every LoRA expert (chat/serving.py), for Chat and Arena through `server:`."""

from __future__ import annotations

import argparse
import json

from graft_ui.chat.serving import plan_text, vllm_plan
from graft_ui.commands.common import add_manifest_args, load_manifest_arg


def run(args: argparse.Namespace) -> int:
    manifest = load_manifest_arg(args)
    if manifest is None:
        raise ValueError("serve-plan needs --manifest FILE or --zoo PROFILE_OR_DIR")
    if args.json:
        print(json.dumps(vllm_plan(manifest, port=args.port, host=args.host)))
    else:
        print(plan_text(manifest, port=args.port, host=args.host))
        print(f"\n# then in the manifest:  server: {{endpoint: http://THIS_HOST:{args.port}/v1}}")
    return 0


def add_parser(subparsers) -> None:
    p = subparsers.add_parser("serve-plan", help="print the vLLM command that serves a manifest's LoRA experts")
    add_manifest_args(p, required=True)
    p.add_argument("--port", type=int, default=8000, help="server port (default 8000)")
    p.add_argument("--host", default="0.0.0.0", help="server bind address (default 0.0.0.0)")
    p.add_argument("--json", action="store_true", help="the argv as a JSON list")
    p.set_defaults(func=run)
