"""Arena under N concurrent voters: answers generated in the app (LOCAL) vs an OpenAI-compatible server (SERVER).

    .venv/bin/python bench/bench_arena_load.py                          # 4 voters x 3 battles, the ci zoo
    .venv/bin/python bench/bench_arena_load.py --voters 8 --battles 2 --json arena-load.json

One run, one machine. Starts `transformers serve --device cpu` once (it answers any local full
checkpoint named in the request's `model` field), then for each backend in turn starts `app.py`
(`--no-warm-up`; a fresh work dir and vote file) on a manifest the bench writes:

- local:  base + two full experts as folder entries: every answer is generated in the app process,
  one request at a time through the GPU queue slot;
- server: the same two experts as remote entries (`endpoint:`, `model:` = the checkpoint's path) and
  the base through `server: {base_model}`: a battle whose sides are all remote skips the GPU slot.

Each voter is a thread with its own gradio_client session. A battle is /arena_new, then /arena_send in
named mode (the two experts, fixed sides; greedy, --max-new tokens), then /arena_vote. Time to first
token = from the submit to the first streamed frame in which a side shows answer text (the Arena sends
at most ~7 frames a second, so the resolution is ~0.15 s: with the ci zoo's tiny models a whole answer
often fits in that, and TTFT is then the time to the full answer). One untimed battle per backend first loads
the models (the app's, or the server's). Prints battles per minute (completed battles / wall time of
the voters), p50/p95 time to first token, p50 time to the full answer and failures per backend, and
the ratios server/local.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import yaml

from bench_cold import free_port, wait_url  # run as a script: bench/ is on sys.path

ROOT = Path(__file__).resolve().parents[1]
NAMED = "Named side by side"
PLACEHOLDERS = ("*waiting…*", "*loading model…*")
PROMPTS = ["What is 2 + 3?", "Write a Python function that adds two numbers.", "What is 12 times 7?",
           "Explain a for loop in one sentence.", "What is the square root of 81?", "Name a sorting algorithm."]


def stop(proc: subprocess.Popen | None) -> None:
    if proc is None or proc.poll() is not None:
        return
    try:
        os.killpg(proc.pid, signal.SIGTERM)  # its own session: the server's and the app's children too
        proc.wait(timeout=20)
    except (subprocess.TimeoutExpired, ProcessLookupError):
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        proc.wait(timeout=10)


def write_manifests(zoo: Path, experts: list[str], endpoint: str, out: Path) -> dict[str, Path]:
    zoo_manifest = yaml.safe_load((zoo / "manifest.yaml").read_text())
    by_name = {e["name"]: e for e in zoo_manifest["experts"]}
    base = {"name": "base", "path": str(zoo / "base"), "kind": "full"}
    local = [{"name": n, "path": str(zoo / by_name[n]["path"]), "kind": "full", "domain": by_name[n]["domain"]}
             for n in experts]
    remote = [{"name": e["name"], "endpoint": endpoint, "model": e["path"], "kind": "full", "domain": e["domain"]}
              for e in local]
    paths = {}
    for label, data in (("local", {"name": "arena-load-local", "base": base, "experts": local}),
                        ("server", {"name": "arena-load-server", "base": base, "experts": remote,
                                    "server": {"endpoint": endpoint, "base_model": base["path"]}})):
        paths[label] = out / f"manifest-{label}.yaml"
        paths[label].write_text(yaml.safe_dump(data, sort_keys=False))
    return paths


def answer_texts(frame) -> list[str]:
    """The last assistant text of each side in one /arena_send frame ('' while it waits)."""
    texts = []
    for bot in frame[2:4]:
        text = bot[-1]["content"][0].get("text", "") if bot and bot[-1]["role"] == "assistant" else ""
        texts.append("" if text in PLACEHOLDERS else text)
    return texts


def battle(client, prompt: str, a: str, b: str, max_new: int) -> tuple[float, float]:
    """One battle on this session: new, send (streamed), vote. Returns (time to first token, time to
    the last answer frame), seconds from the submit."""
    client.predict(api_name="/arena_new")
    t0 = time.perf_counter()
    job = client.submit({"text": prompt, "files": []}, NAMED, [a, b], a, b, None, max_new, 0.7, True,
                        api_name="/arena_send")
    ttft, seen = None, 0
    while True:
        done = job.done()
        outs = job.outputs()
        if ttft is None:
            for frame in outs[seen:]:
                if any(answer_texts(frame)):
                    ttft = time.perf_counter() - t0
                    break
            seen = len(outs)
        if done:
            break
        time.sleep(0.02)
    final = job.result()  # raises when the send failed
    done_s = time.perf_counter() - t0
    errors = [t for t in answer_texts(final) if t.startswith("⚠") or not t]
    if errors:
        raise RuntimeError(f"a side failed: {errors[0][:200]!r}")
    receipt = client.predict(random.choice(["a", "b", "tie"]), "", None, api_name="/arena_vote")[-1]
    if not receipt:
        raise RuntimeError("the vote returned no receipt")
    return (ttft if ttft is not None else done_s), done_s


def run_backend(label: str, manifest: Path, a: argparse.Namespace, env: dict, work: Path) -> dict:
    from gradio_client import Client

    port = free_port()
    url = f"http://127.0.0.1:{port}/"
    cmd = [sys.executable, str(ROOT / "app.py"), "--manifest", str(manifest), "--port", str(port), "--device", "cpu",
           "--no-warm-up", "--work-dir", str(work / f"studio-{label}"), "--votes", str(work / f"votes-{label}.sqlite")]
    proc = None
    try:
        with open(work / f"app-{label}.log", "w") as logf:
            proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=logf, stderr=subprocess.STDOUT,
                                    start_new_session=True)
        wait_url(url, proc, a.timeout, f"the app ({label})")
        clients = [Client(url, verbose=False, ssl_verify=False) for _ in range(a.voters)]
        t = time.perf_counter()
        battle(clients[0], "Say hello.", *a.experts, a.max_new)  # untimed: loads the models
        warm_s = time.perf_counter() - t
        ttfts: list[float] = []
        dones: list[float] = []
        failures: list[str] = []
        lock = threading.Lock()

        def voter(i: int) -> None:
            for j in range(a.battles):
                try:
                    ttft, done = battle(clients[i], PROMPTS[(i + j) % len(PROMPTS)], *a.experts, a.max_new)
                    with lock:
                        ttfts.append(ttft)
                        dones.append(done)
                except Exception as exc:  # counted, and the voter goes on with its next battle
                    with lock:
                        failures.append(f"voter {i} battle {j}: {type(exc).__name__}: {str(exc)[:200]}")

        threads = [threading.Thread(target=voter, args=(i,), daemon=True) for i in range(a.voters)]
        t = time.perf_counter()
        for th in threads:
            th.start()
        for th in threads:
            th.join(a.timeout)
        wall = time.perf_counter() - t
    finally:
        stop(proc)
    q = statistics.quantiles(ttfts, n=20, method="inclusive") if len(ttfts) >= 2 else ttfts * 19
    return {"backend": label, "voters": a.voters, "battles": len(ttfts), "failures": len(failures),
            "failure_messages": failures, "wall_s": wall, "warm_battle_s": warm_s,
            "battles_per_min": 60 * len(ttfts) / wall if wall else 0.0,
            "ttft_p50_s": statistics.median(ttfts) if ttfts else None, "ttft_p95_s": q[18] if q else None,
            "answer_p50_s": statistics.median(dones) if dones else None, "ttfts_s": ttfts, "answers_s": dones}


def fmt(x: float | None) -> str:
    return "-" if x is None else f"{x:.2f}"


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--voters", type=int, default=4)
    ap.add_argument("--battles", type=int, default=3, help="battles per voter")
    ap.add_argument("--max-new", type=int, default=24)
    ap.add_argument("--experts", nargs=2, default=["math-full", "code-full"], help="the two sides (full experts)")
    ap.add_argument("--zoo-dir", help="the ci zoo folder (default: $GRAFT_ZOO_DIR/ci)")
    ap.add_argument("--timeout", type=float, default=600, help="seconds for a start, and for the voters")
    ap.add_argument("--json", help="also write every number here")
    ap.add_argument("--keep", action="store_true", help="keep the temp dir (manifests, logs)")
    a = ap.parse_args(argv)

    env = dict(os.environ, HF_HUB_OFFLINE="1", GRADIO_ANALYTICS_ENABLED="False", TOKENIZERS_PARALLELISM="false")
    if a.zoo_dir:
        zoo = Path(a.zoo_dir)
    else:
        sys.path.insert(0, str(ROOT))
        from graft_ui.zoo import ensure_zoo

        zoo = Path(ensure_zoo("ci"))
    work = Path(tempfile.mkdtemp(prefix="graft-arena-load-"))
    server = None
    results = []
    try:
        sport = free_port()
        endpoint = f"http://127.0.0.1:{sport}/v1"
        manifests = write_manifests(zoo.resolve(), a.experts, endpoint, work)
        cli = Path(sys.executable).parent / "transformers"
        with open(work / "server.log", "w") as logf:
            server = subprocess.Popen([str(cli), "serve", "--device", "cpu", "--host", "127.0.0.1", "--port",
                                       str(sport), "--log-level", "warning"], env=env, stdout=logf,
                                      stderr=subprocess.STDOUT, start_new_session=True)
        # /health, not /v1/models: that one scans the Hugging Face cache and fails when there is none
        wait_url(f"http://127.0.0.1:{sport}/health", server, a.timeout, "transformers serve")
        for label in ("local", "server"):
            results.append(run_backend(label, manifests[label], a, env, work))
    finally:
        stop(server)
        if a.keep:
            print(f"kept {work}")
        else:
            shutil.rmtree(work, ignore_errors=True)

    loc, srv = results
    print(f"\nGraft Studio Arena under load: {a.voters} voters x {a.battles} battles, named "
          f"{a.experts[0]} vs {a.experts[1]}, max_new_tokens {a.max_new}, greedy; {os.cpu_count()} CPUs, "
          "server and app on the same machine")
    print("| backend | battles | failures | wall s | battles/min | TTFT p50 s | TTFT p95 s | answer p50 s "
          "| warm-up battle s |")
    print("|---|---|---|---|---|---|---|---|---|")
    for r in results:
        print(f"| {r['backend']} | {r['battles']} | {r['failures']} | {r['wall_s']:.1f} | {r['battles_per_min']:.2f} "
              f"| {fmt(r['ttft_p50_s'])} | {fmt(r['ttft_p95_s'])} | {fmt(r['answer_p50_s'])} "
              f"| {r['warm_battle_s']:.1f} |")
    ratios = {}
    if loc["battles_per_min"] and srv["battles_per_min"]:
        ratios["battles_per_min"] = srv["battles_per_min"] / loc["battles_per_min"]
        print(f"server/local battles per minute: {ratios['battles_per_min']:.2f}x")
    if loc["ttft_p50_s"] and srv["ttft_p50_s"]:
        ratios["ttft_p50"] = srv["ttft_p50_s"] / loc["ttft_p50_s"]
        print(f"server/local p50 TTFT: {ratios['ttft_p50']:.2f}x")
    for r in results:
        for msg in r["failure_messages"]:
            print(f"  {r['backend']} failure: {msg}")
    if a.json:
        Path(a.json).write_text(json.dumps({"voters": a.voters, "battles_per_voter": a.battles, "max_new": a.max_new,
                                            "experts": a.experts, "cpus": os.cpu_count(), "results": results,
                                            "ratios": ratios}, indent=2))
    return 0 if not (loc["failures"] or srv["failures"]) else 1


if __name__ == "__main__":
    sys.exit(main())
