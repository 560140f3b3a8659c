"""The demo zoo built by a background process while the app serves: `python -m graft_ui.zoo.background PROFILE`.

    build = ZooBuild("full")
    build.start()       # launches the builder unless the zoo is built or a live builder reports
    build.status()      # {"state": "starting"|"waiting"|"building"|"ready"|"failed", ...} (zoo/progress.py)

The builder is a process of its own (a crash, or the GIL of a training step, never touches
the server), started in its own session, so stopping the app leaves it running and the next
start of the app attaches to it instead of starting over. It takes the zoo's build lock (the
one `ensure_zoo` takes), so one build runs at a time whoever started it, and it runs at a lower
priority (`NICE`) so the page stays quick while it trains. Its progress goes to
`<zoo root>/.<profile>.progress.json`, its log to `.<profile>.build.log` beside it. A builder
that died without a word (killed, out of memory) shows as failed, naming its log; starting
again (the app's next start) builds again.
"""

from __future__ import annotations

import logging
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from graft_ui.atomic import pid_alive
from graft_ui.zoo import get_profile, is_built, zoo_dir
from graft_ui.zoo.progress import ProgressFile

log = logging.getLogger(__name__)

NICE = 10  # the builder's niceness: the server (0) gets ~90% of a contended core, the build the rest
LIVE = ("starting", "waiting", "building")


class ZooBuild:
    """The background build of one zoo profile: where it reports, and how to start it."""

    def __init__(self, profile: str = "full"):
        get_profile(profile)
        self.profile = profile
        self.path = zoo_dir(profile)
        self.progress = ProgressFile(self.path.parent / f".{profile}.progress.json")
        self.log_file = self.path.parent / f".{profile}.build.log"
        self.lock_file = self.path.parent / f".{profile}.lock"

    @property
    def manifest(self) -> Path:
        return self.path / "manifest.yaml"

    def ready(self) -> bool:
        return is_built(self.path)

    def status(self) -> dict:
        """The builder's last snapshot; "ready" once the zoo is complete; "failed" when the builder
        said so, or is gone without saying it."""
        if self.ready():
            return {"state": "ready", "profile": self.profile}
        snap = self.progress.read() or {"state": "starting", "profile": self.profile}
        pid = int(snap.get("pid") or 0)
        if snap.get("state") in LIVE and pid and not pid_alive(pid):
            return dict(snap, state="failed", error=f"the zoo builder (process {pid}) stopped without finishing; "
                                                      f"its log: {self.log_file}")
        return snap

    def running(self) -> bool:
        snap = self.progress.read() or {}
        return snap.get("state") in LIVE and pid_alive(int(snap.get("pid") or 0))

    def start(self) -> int | None:
        """Launch the builder (PID), unless the zoo is built (None) or a live builder reports (its PID)."""
        if self.ready():
            return None
        snap = self.progress.read() or {}
        if self.running():
            log.info("the %s zoo is being built by process %s; attaching to its progress", self.profile, snap["pid"])
            return int(snap["pid"])
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with open(self.log_file, "ab") as out:
            proc = subprocess.Popen([sys.executable, "-m", "graft_ui.zoo.background", self.profile],
                                    stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT,
                                    start_new_session=True, env=_child_env(),
                                    preexec_fn=lambda: os.nice(NICE))
        if (self.progress.read() or {}).get("pid") != proc.pid:  # unless the builder spoke first
            self.progress.write({"state": "starting", "profile": self.profile, "pid": proc.pid, "updated": time.time()})
        log.info("building the %s zoo in the background (process %d, log %s)", self.profile, proc.pid, self.log_file)
        return proc.pid

    def stop(self) -> None:
        """Stop a running builder (SIGTERM: it removes its half-built folder and stops its workers)."""
        snap = self.progress.read() or {}
        pid = int(snap.get("pid") or 0)
        if snap.get("state") in LIVE and pid_alive(pid):
            os.kill(pid, signal.SIGTERM)


def _child_env() -> dict:
    pkg_root = str(Path(__file__).resolve().parents[2])
    env = dict(os.environ, TOKENIZERS_PARALLELISM="false", PYTHONUNBUFFERED="1")
    env["PYTHONPATH"] = os.pathsep.join(p for p in (pkg_root, env.get("PYTHONPATH")) if p)
    return env


def run_builder(profile: str) -> int:
    """The builder process: take the build lock, build with progress, report ready or failed."""
    import fcntl

    from graft_ui.zoo.build import build_zoo

    build = ZooBuild(profile)
    me = os.getpid()

    def say(state: str, **extra) -> None:
        build.progress.write({"state": state, "profile": profile, "pid": me, "updated": time.time(), **extra})

    build.path.parent.mkdir(parents=True, exist_ok=True)
    with open(build.lock_file, "w") as lock:
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            other = build.progress.read() or {}
            if other.get("pid") != me and build.running():
                log.info("process %s is building the %s zoo already", other.get("pid"), profile)
                return 0
            say("waiting")  # e.g. `python -m graft_ui zoo build` in a terminal: wait for its zoo
            fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            if build.ready():
                say("ready")
                return 0
            say("building", stage="starting")
            t = time.time()
            build_zoo(build.path, profile, force=True, progress=False, report=build.progress.write)
        except BaseException as exc:  # noqa: BLE001 - every way out is reported to the app
            log.exception("building the %s zoo failed", profile)
            say("failed", error=f"{type(exc).__name__}: {exc}"[-2000:])
            return 1
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)
    log.info("the %s zoo is ready (%.0f s)", profile, time.time() - t)
    say("ready")
    return 0


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if len(argv) != 1:
        print("usage: python -m graft_ui.zoo.background PROFILE", file=sys.stderr)
        return 2
    from graft_ui.logs import setup_logging

    setup_logging(logging.INFO)

    def stop(signum, frame):  # SIGTERM: unwind, so the build removes its temp folder and stops its workers
        raise SystemExit(f"stopped by signal {signum}")

    signal.signal(signal.SIGTERM, stop)
    return run_builder(argv[0])


if __name__ == "__main__":
    raise SystemExit(main())
