"""Worker process of a zoo build: `python -m graft_ui.zoo.worker TASK_JSON`.

Trains one expert design as LoRA and full (`stages.train_expert_pair`), runs one
data-parallel rank of the base training (`stages.train_base`, task `job: base`), or scores a
share of the self-check's models (`job: eval`, `stages.evaluate_in_workers`). Started with
subprocess rather than multiprocessing, so a caller's main module is never re-imported
(a script calling `ensure_zoo()` at top level needs no `if __name__ == "__main__"` guard).
Protocol on stdout: one `progress N` line per N finished steps, then `result {json}`.
"""

from __future__ import annotations

import json
import sys


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if len(argv) != 1:
        print("usage: python -m graft_ui.zoo.worker TASK_JSON", file=sys.stderr)
        return 2
    task = json.loads(argv[0])
    from graft_ui.zoo.stages import train_base, train_expert_pair

    def report(n: int) -> None:
        sys.stdout.write(f"progress {n}\n")
        sys.stdout.flush()

    if task.get("job") == "base":  # a data-parallel rank >= 1 of the base training
        train_base(task)
        result = {}
    elif task.get("job") == "eval":  # a share of the self-check's models, scored into task["out"]
        from pathlib import Path

        from graft_ui.models.manifest import load_manifest
        from graft_ui.zoo.evaluate import evaluate_specs

        rows = evaluate_specs(task["names"], load_manifest(task["manifest"]), **task["kwargs"])["models"]
        Path(task["out"]).write_text(json.dumps(rows))
        result = {}
    else:
        result = train_expert_pair(task, report)
    sys.stdout.write("result " + json.dumps(result) + "\n")
    sys.stdout.flush()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
