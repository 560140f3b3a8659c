"""A zoo build's progress as a small JSON file that other processes read: stage, steps, expert k of n, time left.

`build_zoo(..., report=fn)` wraps its tqdm bar in `ProgressBar`, which calls `fn(snapshot)` on
every stage change and at most once a second while steps advance. The background builder
(graft_ui/zoo/background.py) passes `ProgressFile(path).write`, so the app, in another process,
shows the build without sharing its interpreter. The file is replaced atomically: a reader
sees the previous snapshot or the next one, never half of one.

Snapshot: {"state": "building", "profile", "stage", "steps", "total_steps", "experts_done",
"experts_total", "elapsed_s", "eta_s" (None until steps give a rate), "pid", "updated"}. The
builder adds the states "starting", "waiting" (another process holds the build lock), "ready"
and "failed" (with "error").
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import Callable

from graft_ui.atomic import replacing

STAGES = ("data", "tokenizer", "encode", "base", "experts", "self-check")


class ProgressBar:
    """Stands in for build_zoo's tqdm bar: forwards to it and reports snapshots to `report`.

    `task_steps(design, n)` counts an expert design's steps (graft_ui/zoo/stages.py calls it when
    the bar has it): each design trains its LoRA, then its full fine-tune, `steps` each, so the
    finished expert models follow from the counts even with designs training side by side.
    """

    def __init__(self, bar, expert_steps: list[int], kinds: int, report: Callable[[dict], None], *,
                 profile: str = "", every: float = 1.0):
        self.bar, self.report, self.every = bar, report, every
        self.profile = profile
        self.expert_steps, self.kinds = expert_steps, kinds
        self.total = int(bar.total or 0)
        self.done = 0
        self.stage = "starting"
        self.per_design: dict[int, int] = {}
        self.t0 = time.time()
        self._rate_from: tuple[float, int] | None = None  # (time, steps) when the current stage's steps began
        self._last = 0.0

    # -- the tqdm calls build_zoo and stages make --------------------------------------

    def update(self, n: int = 1) -> None:
        self.bar.update(n)
        if self._rate_from is None:
            self._rate_from = (time.time(), self.done)
        self.done += n
        self._emit()

    def set_postfix_str(self, s: str) -> None:
        self.bar.set_postfix_str(s)
        if s != self.stage:
            self.stage = s
            self._rate_from = None  # base and expert steps differ in cost: each stage measures its own rate
            self._emit(force=True)

    def close(self) -> None:
        self.bar.close()

    def reset(self, total: int) -> None:
        """A new total before any step ran (a build that will not train its base)."""
        self.bar.reset(total=total)
        self.total, self.done = int(total), 0

    def task_steps(self, design: int, n: int) -> None:
        self.per_design[design] = self.per_design.get(design, 0) + n

    # -- reporting ---------------------------------------------------------------------

    def experts_done(self) -> int:
        return sum(min(self.kinds, done // max(1, self.expert_steps[d])) for d, done in self.per_design.items())

    def eta(self) -> float | None:
        """Seconds left at the current stage's step rate (None before a rate is known)."""
        if self._rate_from is None:
            return None
        t, start = self._rate_from
        steps, dt = self.done - start, time.time() - t
        if steps < 3 or dt <= 0:
            return None
        return (self.total - self.done) * dt / steps

    def snapshot(self) -> dict:
        eta = self.eta()
        return {"state": "building", "profile": self.profile, "stage": self.stage, "steps": self.done,
                "total_steps": self.total, "experts_done": self.experts_done(),
                "experts_total": len(self.expert_steps) * self.kinds, "elapsed_s": round(time.time() - self.t0, 1),
                "eta_s": None if eta is None else round(eta), "pid": os.getpid(), "updated": time.time()}

    def _emit(self, force: bool = False) -> None:
        now = time.time()
        if force or now - self._last >= self.every:
            self._last = now
            self.report(self.snapshot())


class ProgressFile:
    """The progress file of one build: `write` replaces it atomically, `read` returns it or None."""

    def __init__(self, path: str | Path):
        self.path = Path(path)

    def write(self, snapshot: dict) -> None:
        # no fsync: a crash loses only a progress line, and the next snapshot comes within a second
        with replacing(self.path, fsync=False) as tmp:
            tmp.write_text(json.dumps(snapshot))

    def read(self) -> dict | None:
        try:
            data = json.loads(self.path.read_text())
        except (OSError, json.JSONDecodeError):
            return None
        return data if isinstance(data, dict) else None


def describe(status: dict) -> str:
    """One line for people: "stage 5 of 6: experts, experts: 3 of 8 trained, ..." and the like."""
    state = status.get("state")
    if state == "ready":
        return "ready"
    if state == "failed":
        return f"failed: {status.get('error') or 'unknown error'}"
    if state == "waiting":
        return "waiting for another build of this zoo to finish"
    if state != "building":
        return "starting the builder"
    stage = status.get("stage") or "starting"
    parts = [f"stage {stage}"]
    if status.get("stage") in STAGES:
        parts[0] = f"stage {STAGES.index(stage) + 1} of {len(STAGES)}: {stage}"
    if stage == "experts" or status.get("experts_done"):
        parts.append(f"experts: {status.get('experts_done', 0)} of {status.get('experts_total', 0)} trained")
    if status.get("total_steps"):
        parts.append(f"{100 * status.get('steps', 0) // status['total_steps']}% of the training steps")
    eta = status.get("eta_s")
    if eta is not None:
        parts.append(f"about {max(1, round(eta / 60))} min left" if eta >= 90 else f"about {max(5, int(eta))} s left")
    return ", ".join(parts)
