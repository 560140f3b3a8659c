"""Run independent jobs here, in local worker processes, or as tasks on a Ray cluster.

    run_jobs(jobs, fn, Backend(workers=2), on_event=progress, on_result=store)
    run_jobs(jobs, fn_portable, Backend(ray="auto"), on_event=progress, on_result=store)

`fn(job, report) -> result` does one job: a module-level function (it is pickled to the
workers), `job` and `result` plain picklable data, `report(event)` a progress dict back to the
caller. `on_event(event)` and `on_result(job, result)` run in the calling process, as events
arrive and as each job ends, so a caller can store each result the moment it streams in (an
interrupted run keeps every finished job). The backends:

- in process (workers 1, no ray): the jobs in order;
- local processes (workers > 1): a spawned pool (fork after torch has started threads can
  deadlock); events come back through a manager queue as they happen;
- Ray (`ray` = "auto", "HOST:PORT" or "ray://HOST:PORT"): one task per job, asking for `threads`
  CPUs and `gpus` GPUs (None: 1 when the cluster has GPUs, else 0). A task's events come back
  with its result. Ray is imported only here, only for this backend.

The project code reaches Ray's workers as a runtime-env `py_modules` upload of the graft_ui
package, so a worker on another machine needs the same Python packages installed (the pinned
requirements + requirements-ray.txt) and the same paths for the data the jobs name (manifest,
zoo): a shared filesystem or an identical layout. `initializer(*initargs)` runs once per
worker process (pool) or at the start of every task (Ray), e.g. to set torch's thread count.
"""

from __future__ import annotations

import contextlib
import logging
import multiprocessing as mp
import os
import queue as queue_mod
import socket
from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

log = logging.getLogger(__name__)

Job = Any
Report = Callable[[dict], None]
JobFn = Callable[[Job, Report], Any]

# passed to Ray's workers (the cluster's processes do not inherit this shell's environment)
WORKER_ENV = ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE", "TQDM_DISABLE", "TOKENIZERS_PARALLELISM", "GRAFT_ZOO_DIR",
              "HF_HOME", "HF_HUB_CACHE")


@dataclass(frozen=True)
class Backend:
    workers: int = 1
    threads: int = 1
    ray: str | None = None
    gpus: float | None = None  # per Ray task; None: 1 when the cluster has GPUs
    env: dict = field(default_factory=dict)  # extra environment variables for Ray's workers

    def __post_init__(self):
        if self.workers < 1 or self.threads < 1:
            raise ValueError(f"workers={self.workers} and threads={self.threads} must be at least 1")
        if self.ray is not None and not str(self.ray).strip():
            raise ValueError("ray address is empty: give 'auto', HOST:PORT or ray://HOST:PORT")
        if self.gpus is not None and self.gpus < 0:
            raise ValueError(f"gpus={self.gpus} per task must not be negative")

    def describe(self) -> str:
        if self.ray:
            return f"Ray at {self.ray}"
        return "this process" if self.workers == 1 else f"{self.workers} local worker processes"


def run_jobs(jobs: Sequence[Job], fn: JobFn, backend: Backend = Backend(), *, on_event: Report = lambda ev: None,
             on_result: Callable[[Job, Any], None] = lambda job, res: None,
             initializer: Callable | None = None, initargs: tuple = ()) -> None:
    """Run every job (see the module docstring); the first job error is raised here once the
    jobs already running have ended (their results are still delivered)."""
    jobs = list(jobs)
    if not jobs:
        return
    if backend.ray:
        _run_ray(jobs, fn, backend, on_event, on_result, initializer, initargs)
    elif backend.workers <= 1 or len(jobs) == 1:
        for job in jobs:
            on_result(job, fn(job, on_event))
    else:
        _run_pool(jobs, fn, backend, on_event, on_result, initializer, initargs)


# ---------------------------------------------------------------- local processes


def _queued(fn: JobFn, job: Job, q) -> Any:
    return fn(job, q.put)


def _run_pool(jobs, fn, backend, on_event, on_result, initializer, initargs) -> None:
    ctx = mp.get_context("spawn")
    error = None
    # the children's OpenMP pools are sized when they import torch, before any initializer runs:
    # without this each of them starts one thread per core (measured: a 2-worker study 1.5x slower)
    n = min(backend.workers, len(jobs))
    with _env(OMP_NUM_THREADS=str(backend.threads)), ctx.Manager() as manager, \
            ProcessPoolExecutor(n, mp_context=ctx, initializer=initializer, initargs=initargs) as pool:
        q = manager.Queue()
        pending = {pool.submit(_queued, fn, job, q): job for job in jobs}
        while pending:
            done, _ = wait(pending, timeout=1.0, return_when=FIRST_COMPLETED)
            _drain(q, on_event)
            for f in done:
                job = pending.pop(f)
                try:
                    on_result(job, f.result())
                except Exception as exc:  # noqa: BLE001 - raised below, after the running jobs end
                    if error is None:
                        error = exc
                        for other in pending:
                            other.cancel()  # jobs not started yet
        _drain(q, on_event)
    if error is not None:
        raise error


@contextlib.contextmanager
def _env(**values: str):
    """These environment variables (where not set already) while the block runs, for spawned children."""
    added = {k: v for k, v in values.items() if k not in os.environ}
    os.environ.update(added)
    try:
        yield
    finally:
        for k in added:
            os.environ.pop(k, None)


def _drain(q, on_event: Report) -> None:
    while True:
        try:
            on_event(q.get_nowait())
        except queue_mod.Empty:
            return


# ---------------------------------------------------------------- Ray


def _collected(fn: JobFn, job: Job, initializer, initargs) -> tuple[list[dict], Any]:
    """A Ray task's body: the job's events travel back with its result."""
    if initializer is not None:
        initializer(*initargs)
    events: list[dict] = []
    return events, fn(job, events.append)


def runtime_env(extra: dict | None = None) -> dict:
    """Ray's runtime env: the graft_ui package uploaded to every worker, and our environment switches."""
    env = {k: os.environ[k] for k in WORKER_ENV if k in os.environ}
    env.update({k: str(v) for k, v in (extra or {}).items()})
    package = Path(__file__).resolve().parent
    return {"py_modules": [str(package)], "env_vars": env,
            "excludes": ["__pycache__", "*.pyc", "*.so", "*.o"]}


def connect(address: str, extra_env: dict | None = None):
    """ray.init on `address` with our runtime env; returns the ray module."""
    try:
        import ray
    except ImportError:
        raise ValueError(f"--ray {address} needs Ray: pip install -r requirements-ray.txt") from None
    if ray.is_initialized():
        ray.shutdown()  # a runtime env is fixed per connection
    if address != "auto":
        _check_reachable(address)  # ray.init retries an address that does not answer for minutes
    try:
        ray.init(address=address, runtime_env=runtime_env(extra_env), log_to_driver=False,
                 logging_level=logging.WARNING, configure_logging=False)
    except ConnectionError as exc:
        raise ValueError(f"no Ray cluster at {address!r} ({exc}); start one with `ray start --head` "
                         "or give its address") from None
    return ray


def _check_reachable(address: str, timeout: float = 5.0) -> None:
    host, _, port = address.split("://", 1)[-1].rpartition(":")
    if not host or not port.isdigit():
        raise ValueError(f"ray address {address!r} is not 'auto', HOST:PORT or ray://HOST:PORT")
    try:
        socket.create_connection((host.strip("[]"), int(port)), timeout=timeout).close()
    except OSError as exc:
        raise ValueError(f"no Ray cluster at {address!r} ({exc.strerror or exc}); start one with "
                         "`ray start --head` or give its address") from None


def _run_ray(jobs, fn, backend, on_event, on_result, initializer, initargs) -> None:
    ray = connect(backend.ray, {"OMP_NUM_THREADS": backend.threads, **backend.env})
    try:
        gpus = backend.gpus
        if gpus is None:
            gpus = 1 if ray.cluster_resources().get("GPU", 0) > 0 else 0
        task = ray.remote(num_cpus=backend.threads, num_gpus=gpus, max_retries=0)(_collected)
        log.info("Ray: %d task(s), %d CPU(s) and %g GPU(s) each, on %s", len(jobs), backend.threads, gpus,
                 {k: v for k, v in ray.cluster_resources().items() if k in ("CPU", "GPU")})
        pending = {task.remote(fn, job, initializer, initargs): job for job in jobs}
        error = None
        while pending:
            done, _ = ray.wait(list(pending), num_returns=1, timeout=1.0)
            for ref in done:
                job = pending.pop(ref)
                try:
                    events, result = ray.get(ref)
                except Exception as exc:  # noqa: BLE001 - a task error: the others still report
                    if error is None:
                        error = exc
                        for other in pending:
                            ray.cancel(other)
                    continue
                for ev in events:
                    on_event(ev)
                on_result(job, result)
        if error is not None:
            raise error
    finally:
        ray.shutdown()
