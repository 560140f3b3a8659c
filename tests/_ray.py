"""A private Ray head on 127.0.0.1 for the tests and the fan-out bench (`ray start --head --block`).

    with ray_head(num_cpus=2) as address:   # "127.0.0.1:PORT"
        run_study(..., ray=address)

The head runs in a session of its own with its own temp dir, dashboard off and a 100 MB object
store; on exit its process group (the head and every Ray process it started) is sent SIGTERM,
then SIGKILL after 2 s, so nothing of it outlives the block and no other Ray on the machine is
touched (unlike `ray stop`, which stops every Ray process of the user).
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

RAY = Path(sys.executable).with_name("ray")


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _reachable(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.settimeout(0.5)
        return s.connect_ex(("127.0.0.1", port)) == 0


@contextlib.contextmanager
def ray_head(num_cpus: int = 2, timeout: float = 120.0):
    if not RAY.exists():
        raise RuntimeError(f"{RAY} is missing: pip install -r requirements-ray.txt (scripts/test.sh does)")
    tmp = Path(tempfile.mkdtemp(prefix="ray-", dir="/tmp"))  # short: Ray's unix socket paths must fit 107 bytes
    port = _free_port()
    env = dict(os.environ, RAY_USAGE_STATS_ENABLED="0")
    log = open(tmp / "head.log", "w")
    head = subprocess.Popen(
        [str(RAY), "start", "--head", "--block", f"--port={port}", "--node-ip-address=127.0.0.1",
         f"--num-cpus={num_cpus}", "--num-gpus=0", "--include-dashboard=false", "--disable-usage-stats",
         "--object-store-memory=100000000", f"--temp-dir={tmp}"],
        env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        deadline = time.monotonic() + timeout
        while not _reachable(port):
            if head.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"the Ray head did not start: {(tmp / 'head.log').read_text()[-800:]}")
            time.sleep(0.5)
        yield f"127.0.0.1:{port}"
    finally:
        # Ray's own graceful stop takes ~30 s (the GCS drains); a private test cluster has nothing to save
        for sig, wait in ((signal.SIGTERM, 2), (signal.SIGKILL, 10)):
            with contextlib.suppress(ProcessLookupError):
                os.killpg(head.pid, sig)
            with contextlib.suppress(subprocess.TimeoutExpired):
                head.wait(wait)
                if not _group_alive(head.pid):
                    break
        log.close()
        shutil.rmtree(tmp, ignore_errors=True)


def _group_alive(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
        return True
    except ProcessLookupError:
        return False
