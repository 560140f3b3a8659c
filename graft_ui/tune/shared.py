"""One tuning study shared by several `tune` processes on several machines (optuna's storages).

    storage = open_storage("postgresql://user@host/db")   # any SQLAlchemy URL (RDB), heartbeat on
    storage = open_storage("/shared/tune.journal")        # a file path: optuna's journal file
    study = join_study(storage, "graft-math-code", spec, seed=0)   # create it, or join it once ready
    trials = study_results(study, dims)                   # every finished trial, whoever ran it

The first process creates the study, stores its `spec` (method, experts, search space, dev
domains: what every joiner must share) as a study attribute and enqueues the recipe's own
values marked `default` (the reference trial). A joiner waits for the spec and refuses to join
with a different one, naming what differs.

A worker that dies mid-trial (killed, machine lost) stops sending heartbeats; any process that
then starts a trial (optuna's `Study.optimize` calls `fail_stale_trials` first), runs the report
or watches the study from the app marks that trial FAIL after `grace` seconds, so it never
hangs as RUNNING. RDB storages have optuna's native heartbeat; the journal file gets the same
through `JournalHeartbeat` (a heartbeat timestamp in the trial's system attributes: the
machines' clocks must agree within the grace period). Trial numbers are handed out by the
storage, so two workers never run the same trial, and each joiner's sampler is seeded apart from
the creator's so that they do not propose the same points; see Tuner.run for the trial count.
"""

from __future__ import annotations

import logging
import os
import socket
import time
import warnings
import zlib
from typing import Any, Callable, Sequence

import optuna
from optuna.storages import JournalStorage, RDBStorage, fail_stale_trials
from optuna.storages._heartbeat import BaseHeartbeat
from optuna.storages.journal import JournalFileBackend
from optuna.trial import FrozenTrial, TrialState

log = logging.getLogger(__name__)

SPEC_ATTR = "graft_tune"
HEARTBEAT_S = 20  # a killed worker's trial is failed after 2 x this


class JournalHeartbeat(JournalStorage, BaseHeartbeat):
    """optuna's journal storage with the heartbeat that its RDB storage has (see the module docstring)."""

    def __init__(self, path: str, heartbeat_interval: int, grace_period: int | None = None):
        super().__init__(JournalFileBackend(path))
        self.heartbeat_interval = heartbeat_interval
        self.grace_period = grace_period or 2 * heartbeat_interval

    def record_heartbeat(self, trial_id: int) -> None:
        self.set_trial_system_attr(trial_id, "heartbeat", time.time())

    def _get_stale_trial_ids(self, study_id: int) -> list[int]:
        now = time.time()
        running = self.get_all_trials(study_id, deepcopy=False, states=(TrialState.RUNNING,))
        # a trial with no heartbeat yet is left alone, as optuna's RDB storage does
        return [t._trial_id for t in running if now - t.system_attrs.get("heartbeat", now) > self.grace_period]

    def get_heartbeat_interval(self) -> int | None:
        return self.heartbeat_interval

    def get_heartbeat_stale_trial_callback(self) -> Callable | None:
        return None  # a lost trial stays failed: it is not retried


def open_storage(url: str, heartbeat_s: int = HEARTBEAT_S):
    """An optuna storage for `url`: a SQLAlchemy URL (postgresql://..., sqlite:///...) or a journal file path."""
    if not url or not str(url).strip():
        raise ValueError("the storage is empty: give a database URL (postgresql://USER@HOST/DB) or a journal file path")
    if int(heartbeat_s) < 1:
        raise ValueError(f"heartbeat={heartbeat_s!r} seconds must be at least 1")
    if "://" in url:
        for attempt in range(3):
            try:
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
                    return RDBStorage(url, heartbeat_interval=int(heartbeat_s), engine_kwargs={"pool_pre_ping": True})
            except Exception as exc:  # noqa: BLE001 - SQLAlchemy/driver errors: say which storage failed
                # workers started together on an empty database race to create optuna's tables: the
                # loser's CREATE fails once the winner's exist, and a second try finds them
                if attempt == 2:
                    raise ValueError(f"cannot open the tuning storage {redact(url)}: {type(exc).__name__}: "
                                     f"{str(exc).splitlines()[0][:200]}") from None
                time.sleep(1.0 + attempt)
    folder = os.path.dirname(os.path.abspath(url))
    if not os.path.isdir(folder):
        raise ValueError(f"the journal file's folder {folder!r} does not exist")
    return JournalHeartbeat(url, int(heartbeat_s))


def redact(url: str) -> str:
    """`url` without its password (errors and logs must not print it)."""
    if "://" not in url or "@" not in url:
        return url
    scheme, rest = url.split("://", 1)
    cred, host = rest.rsplit("@", 1)
    return f"{scheme}://{cred.split(':', 1)[0]}:***@{host}" if ":" in cred else url


def worker_name() -> str:
    return f"{socket.gethostname()}:{os.getpid()}"


def join_study(storage, name: str, spec: dict, *, seed: int, defaults: dict | None = None, attrs: dict | None = None,
               wait_s: float = 60.0) -> tuple[optuna.Study, bool]:
    """(the study `name` in `storage`, whether this process created it); the creator also stores
    `attrs` (e.g. the recipe, for the report); see the module docstring."""
    if not name or not name.strip():
        raise ValueError("--study-name is empty: every worker of a shared study names the same study")
    try:
        study = optuna.create_study(storage=storage, study_name=name, direction="maximize",
                                    sampler=optuna.samplers.TPESampler(seed=seed))
    except optuna.exceptions.DuplicatedStudyError:
        # samplers seeded alike propose the same points until they see each other's trials: a joiner's is
        # seeded apart (so a shared study is not reproducible trial by trial, only its creator's first trials)
        sampler = optuna.samplers.TPESampler(seed=(seed + zlib.crc32(worker_name().encode())) % 2**32)
        study = optuna.load_study(study_name=name, storage=storage, sampler=sampler)
        stored = wait_for_spec(study, wait_s)
        differ = sorted(k for k in set(spec) | set(stored) if spec.get(k) != stored.get(k))
        if differ:
            raise ValueError(f"study {name!r} tunes something else: {', '.join(differ)} differ "
                             f"(it has {', '.join(f'{k}={stored.get(k)!r}' for k in differ)})") from None
        return study, False
    for key, value in (attrs or {}).items():
        study.set_user_attr(key, value)
    if defaults is not None:
        study.enqueue_trial(defaults, user_attrs={"default": True})  # trial 0, whoever asks first
    study.set_user_attr(SPEC_ATTR, spec)  # last: a joiner waits for it
    return study, True


def wait_for_spec(study: optuna.Study, wait_s: float = 60.0) -> dict:
    """The spec the creator stored (it is written just after the study is created)."""
    deadline = time.monotonic() + wait_s
    while SPEC_ATTR not in study.user_attrs:
        if time.monotonic() > deadline:
            raise ValueError(f"study {study.study_name!r} has no tuning spec after {wait_s:.0f} s: it was not "
                             "created by `python -m graft_ui tune`")
        time.sleep(0.5)
    return study.user_attrs[SPEC_ATTR]


def load_shared(storage_url: str, name: str, heartbeat_s: int = HEARTBEAT_S) -> tuple[optuna.Study, dict]:
    """(the existing study, its spec) for the report and the app; its stale trials are failed first."""
    if "://" not in storage_url and not os.path.isfile(storage_url):
        raise ValueError(f"no journal file {storage_url!r}: give the file the tune workers write")
    storage = open_storage(storage_url, heartbeat_s)
    try:
        study = optuna.load_study(study_name=name, storage=storage)
    except KeyError:
        names = [s.study_name for s in optuna.get_all_study_summaries(storage)]
        raise ValueError(f"no study {name!r} in {redact(storage_url)} (it has: {', '.join(names) or 'none'})") from None
    fail_stale(study)
    return study, wait_for_spec(study, 0.0)


def fail_stale(study: optuna.Study) -> None:
    """Mark trials whose worker stopped sending heartbeats as failed (see the module docstring)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        fail_stale_trials(study)


def trial_record(t: FrozenTrial, dim_names: Sequence[str]) -> dict[str, Any]:
    """One finished trial as the tuner's TrialResult fields (tuner.TrialResult(**record))."""
    attrs = t.user_attrs
    error = attrs.get("error")
    if t.state == TrialState.FAIL and not error:
        error = "its worker stopped (no heartbeat): marked failed"
    seconds = attrs.get("seconds")
    if seconds is None and t.datetime_start and t.datetime_complete:
        seconds = (t.datetime_complete - t.datetime_start).total_seconds()
    return {"number": t.number, "values": {n: t.params[n] for n in dim_names if n in t.params},
            "dev": dict(attrs.get("dev", {})), "mean": t.value if t.state == TrialState.COMPLETE else None,
            "seconds": float(seconds or 0.0), "elapsed": float(attrs.get("elapsed", 0.0)),
            "default": bool(attrs.get("default", False)), "error": error, "worker": attrs.get("worker")}


def finished(study: optuna.Study) -> list[FrozenTrial]:
    """Trials that ran to an end (complete or failed), by number; pruned ones (asked past the trial
    count, never run) are left out."""
    return sorted(study.get_trials(deepcopy=False, states=(TrialState.COMPLETE, TrialState.FAIL)),
                  key=lambda t: t.number)


def started(study: optuna.Study) -> int:
    """How many of the study's trials have started (running or finished, pruned ones aside)."""
    return len(study.get_trials(deepcopy=False, states=(TrialState.RUNNING, TrialState.COMPLETE, TrialState.FAIL)))


def snapshot(storage_url: str, name: str) -> dict[str, Any]:
    """What the app draws of a running shared study: its finished trials (tuner records), its dev
    domains, the best trial on dev, how many trials it wants, run now and by how many workers."""
    study, spec = load_shared(storage_url, name)
    names = [d["name"] for d in spec["dims"]]
    trials = [trial_record(t, names) for t in finished(study)]
    ok = [t for t in trials if t["mean"] is not None]
    best = min(ok, key=lambda t: (-t["mean"], t["number"]))["number"] if ok else None
    return {"name": name, "domains": list(spec["dev_domains"]), "total": int(spec["trials"]), "trials": trials,
            "best": best, "running": len(study.get_trials(deepcopy=False, states=(TrialState.RUNNING,))),
            "workers": len({t["worker"] for t in trials if t["worker"]})}
