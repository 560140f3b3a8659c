"""Run mergekit-yaml's own command (mergekit.scripts.run_yaml.main) on several configs in ONE
process of the mergekit venv, so mergekit and torch are imported once, not per config.

    MERGEKIT_VENV/bin/python tests/merging/mergekit_many.py CONFIG OUT [CONFIG OUT ...] -- [options]

Prints one JSON line per config: {"config", "ok", "error"}.
"""

import json
import sys
import traceback

from mergekit.scripts.run_yaml import main

if __name__ == "__main__":
    args = sys.argv[1:]
    opts = args[args.index("--") + 1:] if "--" in args else []
    pairs = args[: args.index("--")] if "--" in args else args
    for cfg, out in zip(pairs[::2], pairs[1::2]):
        try:
            main([cfg, out, *opts], standalone_mode=False)
            print(json.dumps({"config": cfg, "ok": True}), flush=True)
        except Exception:  # report and go on: one bad config must not hide the others
            print(json.dumps({"config": cfg, "ok": False, "error": traceback.format_exc()[-1500:]}), flush=True)
