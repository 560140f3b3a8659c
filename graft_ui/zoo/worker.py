"""Worker process of a zoo build: `python -m graft_ui.zoo.worker --serve` (or `... TASK_JSON`, one task).

A task trains one expert design as LoRA and full (`stages.train_expert_pair`), runs one
data-parallel rank of the base training (`stages.train_base`, task `job: base`), or scores
models of the self-check or one of its fusions (`job: eval` / `fusion`, `selfcheck._score`). Started with
subprocess rather than multiprocessing, so a caller's main module is never re-imported
(a script calling `ensure_zoo()` at top level needs no `if __name__ == "__main__"` guard).
With `--serve` the process takes task after task as JSON lines on stdin (graft_ui/zoo/pool.py)
and imports what the tasks need before the first arrives. Protocol on stdout: one
`progress N` line per N finished steps, then `cpu SECONDS` and `result {json}` per task.
"""

from __future__ import annotations

import json
import sys


def _report(n: int) -> None:
    sys.stdout.write(f"progress {n}\n")
    sys.stdout.flush()


def run_task(task: dict, in_worker: bool = False) -> dict:
    """A task's result; `in_worker`: this is a worker process (scoring then runs on one thread)."""
    from graft_ui.zoo.stages import train_base, train_expert_pair

    if task.get("job") == "base":  # a data-parallel rank >= 1 of the base training
        train_base(task)
        return {}
    if task.get("job") in ("eval", "fusion"):  # models of the self-check, or a default fusion, scored
        from graft_ui.zoo.selfcheck import fusion_task
        from graft_ui.zoo.stages import evaluate_task

        if in_worker:  # one thread, as a fresh worker has it (OMP_NUM_THREADS=1), whatever ran before
            import torch

            torch.set_num_threads(1)
        return (evaluate_task if task["job"] == "eval" else fusion_task)(task)
    return train_expert_pair(task, _report)


def _warm_imports() -> None:
    """What every task imports, loaded while the building process works on its own stages."""
    import peft  # noqa: F401
    import qwen_vl_utils  # noqa: F401
    from transformers import Qwen2VLForConditionalGeneration, Qwen2VLProcessor  # noqa: F401
    from transformers.models.qwen2_vl import image_processing_qwen2_vl, video_processing_qwen2_vl  # noqa: F401

    import graft_ui.models.loading  # noqa: F401
    import graft_ui.models.merge  # noqa: F401
    import graft_ui.zoo.evaluate  # noqa: F401
    import graft_ui.zoo.selfcheck  # noqa: F401
    import graft_ui.zoo.stages  # noqa: F401


_cpu_reported = [0.0]


def _answer(result: dict) -> None:
    """`cpu SECONDS` (this process's and its children's CPU time since the last answer), `result {json}`."""
    from graft_ui.zoo.pool import process_cpu_seconds

    total = process_cpu_seconds()
    sys.stdout.write(f"cpu {total - _cpu_reported[0]:.3f}\nresult " + json.dumps(result) + "\n")
    sys.stdout.flush()
    _cpu_reported[0] = total


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if len(argv) != 1:
        print("usage: python -m graft_ui.zoo.worker --serve | TASK_JSON", file=sys.stderr)
        return 2
    if argv[0] != "--serve":
        _answer(run_task(json.loads(argv[0]), in_worker=True))
        return 0
    _warm_imports()
    for line in sys.stdin:
        if line.strip():
            _answer(run_task(json.loads(line), in_worker=True))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
