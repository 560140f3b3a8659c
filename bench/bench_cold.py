"""The app's cold path as a user meets it: start, first Analyze, first Fuse, first Chat answer.

    .venv/bin/python bench/bench_cold.py                   # the ci zoo (GRAFT_ZOO_DIR), CPU
    .venv/bin/python bench/bench_cold.py --zoo-profile full --device cuda

Starts `app.py` as a subprocess (a fresh work dir and vote file, and a fresh `GRAFT_NATIVE_DIR`
unless `--keep-native-cache`, in which the kernels are built first as scripts/setup.sh does,
unless `--fresh-native` or `--no-warm-up`), waits until its page answers ("ready"), then through gradio_client times, each right after the previous:

- the first Analyze of two LoRA experts on one domain (K = 16), then the same again (warm);
- the first Fuse (Graft of the two LoRA experts, examples/recipe-graft.yaml), then a second (warm);
- the first Chat answer of the base model (time to its first streamed text and to the end).

The app warms up in the background from startup (graft_ui/warmup.py); `--no-warm-up`
starts it without, for the before/after comparison.

Each warm repeat is measured in the same run, so the cold cost is the difference. Targets
(2 CPU cores): first Analyze <= 5 s after ready, first Fuse <= 3 s.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
EXPERTS = ["math-lora", "code-lora"]
PLACEHOLDERS = ("*waiting…*", "*loading model…*", "")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_url(url: str, proc: subprocess.Popen, timeout: float, what: str = "the app", poll: float = 0.05) -> None:
    """Until `url` answers 200 (also used by bench_arena_load.py); `proc` exiting first is an error."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"{what} exited with {proc.returncode} before it answered at {url}")
        try:
            with urllib.request.urlopen(url, timeout=2) as r:
                if r.status == 200:
                    return
        except OSError:
            pass
        time.sleep(poll)
    raise TimeoutError(f"{what} did not answer at {url} within {timeout:.0f} s")


def timed(fn):
    t = time.perf_counter()
    out = fn()
    return time.perf_counter() - t, out


def first_chat(client, text: str, max_new: int) -> tuple[float, float, str]:
    """(seconds to the first streamed text, seconds to the end, the answer)."""
    t = time.perf_counter()
    job = client.submit({"text": text, "files": []}, ["base"], max_new, 0.7, True, api_name="/chat")
    first = None
    while not job.done():
        outs = job.outputs()
        if first is None and outs:
            bot = outs[-1][0]
            if bot and bot[-1]["role"] == "assistant" and bot[-1]["content"][0]["text"] not in PLACEHOLDERS:
                first = time.perf_counter() - t
        time.sleep(0.01)
    final = job.result()
    end = time.perf_counter() - t
    return first if first is not None else end, end, final[0][-1]["content"][0]["text"]


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--zoo-profile", default="ci", choices=["ci", "full"])
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--dataset", default="math")
    ap.add_argument("-k", type=int, default=16)
    ap.add_argument("--keep-native-cache", action="store_true", help="use the user's built native kernels")
    ap.add_argument("--fresh-native", action="store_true",
                    help="an empty native-kernel cache at startup (default: built first, as scripts/setup.sh does)")
    ap.add_argument("--no-warm-up", action="store_true", help="start the app with --no-warm-up (the old cold path)")
    ap.add_argument("--timeout", type=float, default=600)
    ap.add_argument("--json", help="also write the timings here")
    ap.add_argument("--log", help="keep the app's log here")
    a = ap.parse_args(argv)

    work = Path(tempfile.mkdtemp(prefix="graft-cold-"))
    env = dict(os.environ, HF_HUB_OFFLINE="1", GRADIO_ANALYTICS_ENABLED="False", TOKENIZERS_PARALLELISM="false")
    if not a.keep_native_cache:
        env["GRAFT_NATIVE_DIR"] = str(work / "native")
    port = free_port()
    url = f"http://127.0.0.1:{port}/"
    log_path = Path(a.log) if a.log else work / "app.log"
    cmd = [sys.executable, str(ROOT / "app.py"), "--zoo-profile", a.zoo_profile, "--port", str(port),
           "--device", a.device, "--work-dir", str(work / "studio"), "--votes", str(work / "votes.sqlite")]
    if a.no_warm_up:
        cmd.append("--no-warm-up")
    times: dict[str, float] = {}
    if not (a.keep_native_cache or a.fresh_native or a.no_warm_up):  # what scripts/setup.sh does, untimed by the app
        t = time.perf_counter()
        subprocess.run([sys.executable, "-c", "from graft_ui.warmup import build_kernels; build_kernels()"],
                       cwd=ROOT, env=env, check=True)
        times["setup: native kernels (scripts/setup.sh)"] = time.perf_counter() - t
    t0 = time.perf_counter()
    with open(log_path, "w") as logf:
        proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=logf, stderr=subprocess.STDOUT)
    try:
        wait_url(url, proc, a.timeout)
        times["start -> ready"] = time.perf_counter() - t0
        from gradio_client import Client

        times["client connect"], client = timed(lambda: Client(url, verbose=False))
        analyze = lambda: client.predict(a.dataset, None, EXPERTS, a.k, 1e-3, 0.2, api_name="/run_analysis")  # noqa: E731
        for label in ("first Analyze", "second Analyze (warm)"):
            times[label], out = timed(analyze)
            if "Analysed 2 expert" not in out[-1]:
                raise RuntimeError(f"{label} failed: {out[-1]}")
        recipe = (ROOT / "examples" / "recipe-graft.yaml").read_text()
        for i, label in enumerate(("first Fuse", "second Fuse (warm)")):
            times[label], out = timed(lambda: client.predict(recipe, f"cold-{i}", api_name="/run_fusion"))
            if "Fused." not in out[0]:
                raise RuntimeError(f"{label} failed: {out[0]}")
        first, end, answer = first_chat(client, "What is 2 + 3?", 24)
        times["first Chat: first text"], times["first Chat: answer done"] = first, end
        first, end, _ = first_chat(client, "What is 4 + 4?", 24)
        times["second Chat (warm): first text"], times["second Chat (warm): answer done"] = first, end
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
        if not a.log:
            shutil.rmtree(work, ignore_errors=True)
    print(f"\nGraft Studio cold path{' (--no-warm-up)' if a.no_warm_up else ''}: {a.zoo_profile} zoo, "
          f"device {a.device}, {os.cpu_count()} CPUs, "
          f"K={a.k}, {' + '.join(EXPERTS)} on {a.dataset}")
    print("| step | seconds |")
    print("|---|---:|")
    for label, s in times.items():
        print(f"| {label} | {s:.2f} |")
    for label, target in (("first Analyze", 5.0), ("first Fuse", 3.0)):
        print(f"{label}: {times[label]:.2f} s after ready (target <= {target:g} s: "
              f"{'met' if times[label] <= target else 'NOT met'})")
    if a.json:
        Path(a.json).write_text(json.dumps(times, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
