"""Worker processes of a zoo build, started once and handed one task after another.

A fresh Python process pays for its imports (torch, transformers, peft, torchvision: ~15 CPU
seconds where no bytecode cache can be written) before it trains anything; a build that
started one process per base rank, per expert design and per evaluation share paid that
nine times. A `WorkerPool` starts its processes once, at the start of the build, so their
imports overlap the data and tokenizer stages that the building process runs on one core,
and feeds them every later task (`python -m graft_ui.zoo.worker --serve`).

Protocol: one task as a JSON line on the worker's stdin; the worker answers `progress N`
lines, a `cpu SECONDS` line (its CPU time since the last) and one `result {json}` line, then
reads the next task; it exits when stdin closes.
A task that fails ends its worker (exit status != 0), and the pool raises with its stderr.
Each task sets its own torch threads and seeds, so a task gives the same bytes whichever
worker runs it and whatever that worker ran before.
"""

from __future__ import annotations

import json
import logging
import os
import queue
import subprocess
import sys
import tempfile
import threading
from contextlib import contextmanager
from pathlib import Path
from typing import Callable, Sequence

log = logging.getLogger(__name__)


def process_cpu_seconds() -> float:
    """CPU time (user + system) of this process and its finished children."""
    import resource

    own, kids = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + kids.ru_utime + kids.ru_stime


class WorkerFailed(RuntimeError):
    """A worker process ended before answering its task; the message holds its stderr's tail."""


class _Worker:
    def __init__(self, index: int, events: queue.Queue):
        pkg_root = str(Path(__file__).resolve().parents[2])
        env = dict(os.environ, OMP_NUM_THREADS="1", TOKENIZERS_PARALLELISM="false")
        env["PYTHONPATH"] = os.pathsep.join(p for p in (pkg_root, env.get("PYTHONPATH")) if p)
        self.index = index
        self.err = tempfile.TemporaryFile(mode="w+")
        self.proc = subprocess.Popen([sys.executable, "-m", "graft_ui.zoo.worker", "--serve"],
                                     stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=self.err,
                                     text=True, env=env)
        self.task: dict | None = None
        self.reader = threading.Thread(target=self._pump, args=(events,), daemon=True)
        self.reader.start()

    def _pump(self, events: queue.Queue) -> None:
        for line in self.proc.stdout:
            if line.startswith("progress "):
                events.put(("progress", self.index, int(line.split()[1])))
            elif line.startswith("cpu "):
                events.put(("cpu", self.index, float(line.split()[1])))
            elif line.startswith("result "):
                events.put(("result", self.index, json.loads(line[len("result "):])))
        events.put(("eof", self.index, None))

    def send(self, task: dict) -> None:
        self.task = task
        try:
            self.proc.stdin.write(json.dumps(task) + "\n")
            self.proc.stdin.flush()
        except (BrokenPipeError, OSError):
            pass  # it died already: its reader reports the end and the pool raises with its stderr

    def stderr_tail(self) -> str:
        try:
            self.err.seek(0)
            return self.err.read()[-3000:]
        except ValueError:  # closed
            return ""

    def stop(self, kill: bool) -> None:
        if self.proc.poll() is None:
            if kill:
                self.proc.kill()
            else:
                try:
                    self.proc.stdin.close()
                except OSError:
                    pass
            try:
                self.proc.wait(timeout=None if kill else 30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.reader.join(timeout=5)
        self.err.close()


class WorkerPool:
    """`size` worker processes, started now; use as a context manager (an error kills them)."""

    def __init__(self, size: int):
        if size < 1:
            raise ValueError(f"a worker pool needs at least one process, not size={size}")
        self._events: queue.Queue = queue.Queue()
        self._workers = [_Worker(i, self._events) for i in range(size)]
        self._reports: dict[int, Callable[[int], None]] = {}
        self._results: dict[int, object] = {}
        self.cpu_seconds = 0.0  # CPU time of the workers (and their children) up to their last answered task

    @property
    def size(self) -> int:
        return len(self._workers)

    def __enter__(self) -> "WorkerPool":
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        self.close(kill=exc_type is not None)

    def close(self, kill: bool = False) -> None:
        """Stop the workers: let them exit (stdin closed), or kill them (an error, an interrupt)."""
        for w in self._workers:
            w.stop(kill or w.task is not None)

    def idle(self) -> list[int]:
        return [w.index for w in self._workers if w.task is None]

    def submit(self, index: int, task: dict, report: Callable[[int], None] | None = None) -> None:
        """Hand `task` to idle worker `index`; `report(n)` gets its progress (in `wait`)."""
        w = self._workers[index]
        if w.task is not None:
            raise RuntimeError(f"worker {index} is still busy with a task")
        self._reports[index] = report or (lambda n: None)
        w.send(task)

    def wait(self, index: int | None = None) -> tuple[int, object]:
        """Block until worker `index` (any busy worker for None) answers: (index, result).

        Progress lines are passed on meanwhile. Raises WorkerFailed when a busy worker's process ends
        first."""
        while True:
            if index is None:
                done = next((i for i in self._results), None)
            else:
                done = index if index in self._results else None
            if done is not None:
                return done, self._results.pop(done)
            if not any(w.task is not None for w in self._workers):
                raise RuntimeError("no worker of the pool has a task to wait for")
            try:
                kind, i, value = self._events.get(timeout=0.5)  # a timeout keeps Ctrl-C responsive
            except queue.Empty:
                continue
            w = self._workers[i]
            if kind == "progress":
                self._reports.get(i, lambda n: None)(value)
            elif kind == "cpu":
                self.cpu_seconds += value
            elif kind == "result":
                w.task = None
                self._results[i] = value
            elif kind == "eof":
                w.proc.wait()
                task, w.task = w.task, None
                raise WorkerFailed(f"worker {i} ended (exit {w.proc.returncode})"
                                   + (f" during task {_describe(task)}" if task else "")
                                   + f":\n{w.stderr_tail()}")

    def stderr_tail(self, index: int) -> str:
        return self._workers[index].stderr_tail()

    def exit_code(self, index: int) -> int | None:
        """The exit status of worker `index`'s process; None while it runs."""
        return self._workers[index].proc.poll()

    def map(self, tasks: Sequence[dict], report_for: Callable[[dict], Callable[[int], None]] | None = None,
            on_done: Callable[[dict, object], None] | None = None, workers: int | None = None) -> list:
        """Run `tasks` on the (first `workers`) workers as they come free, in order; results in the
        order of `tasks`.

        `report_for(task)` gives the progress callback of a task, `on_done(task, result)` is called
        as each finishes."""
        limit = self.size if workers is None else max(1, workers)
        pending = list(enumerate(tasks))
        running: dict[int, int] = {}  # worker -> position in tasks
        results: list = [None] * len(tasks)
        while pending or running:
            for i in [i for i in self.idle() if i < limit]:
                if not pending:
                    break
                pos, task = pending.pop(0)
                self.submit(i, task, report_for(task) if report_for else None)
                running[i] = pos
            i, result = self.wait()
            pos = running.pop(i)
            results[pos] = result
            if on_done is not None:
                on_done(tasks[pos], result)
        return results


@contextmanager
def pool_or_own(pool: WorkerPool | None, size: int):
    """`pool` itself, or a pool of `size` workers started for the block (stopped after it, killed
    when it raises)."""
    if pool is not None:
        yield pool
        return
    with WorkerPool(size) as own:
        yield own


def _describe(task: dict) -> str:
    return str(task.get("label") or task.get("job") or "?")
