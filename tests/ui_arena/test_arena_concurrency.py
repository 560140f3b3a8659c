"""20 concurrent gradio_client voters x 25 votes against the launched app: every vote stored exactly once.

Each voter is one client session running 25 blind battles (send a prompt with 1-4 new tokens,
then vote), through the same endpoints as the browser. The server sheds load with "queue full"
when many sends wait for the one model slot, and the client then retries the send; a vote is
never refused (it does not wait for the model slot) and is sent exactly once: a refused vote
fails the test. Numbers go to test-artifacts/arena-concurrency.json.
"""

from __future__ import annotations

import json
import os
import random
import resource
import threading
import time
import urllib.request
from collections import Counter

import _arena_ui_api as _api

VOTERS = 20
VOTES_EACH = 25


def cpu_seconds(pid: int) -> float:
    """utime + stime of a process (Linux /proc)."""
    fields = open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def own_cpu_seconds() -> float:
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


def test_concurrent_voters_every_vote_exactly_once(arena_app, open_store):
    store = open_store(arena_app.votes)
    before = {v.turn_id for v in store.votes()}
    clients = [_api.client(arena_app.url) for _ in range(VOTERS)]
    sent: list[dict] = []  # what each voter asked and chose, with the receipt it got back
    errors: list[str] = []
    stats: dict = {}
    lock = threading.Lock()
    start = threading.Barrier(VOTERS)

    def voter(i: int, c) -> None:
        rng = random.Random(i)
        local_stats: dict = {}
        try:
            start.wait()
            for j in range(VOTES_EACH):
                prompt = f"voter {i} turn {j}: what is {i} + {j}?"
                _api.send(c, prompt, max_new_tokens=1 + j % 4, domain=rng.choice(["math", "code", None]),
                          stats=local_stats)
                choice = rng.choice(["a", "b", "tie", "both_bad"])
                vote_stats: dict = {}
                try:
                    r = _api.vote(c, choice, expertise=rng.choice(["math", "other", None]), stats=vote_stats)
                finally:
                    local_stats["vote_refused"] = local_stats.get("vote_refused", 0) + vote_stats.get("queue_full", 0)
                with lock:
                    sent.append({"voter": i, "prompt": prompt, "choice": choice, "receipt": r})
        except Exception as exc:  # noqa: BLE001 - collected and asserted below
            with lock:
                errors.append(f"voter {i}: {type(exc).__name__}: {exc}")
        finally:
            with lock:
                for k, v in local_stats.items():
                    stats[k] = stats.get(k, 0) + v

    t0, server0, client0 = time.perf_counter(), cpu_seconds(arena_app.proc.pid), own_cpu_seconds()
    threads = [threading.Thread(target=voter, args=(i, c), daemon=True) for i, c in enumerate(clients)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(600)
    seconds = time.perf_counter() - t0
    server_cpu, client_cpu = cpu_seconds(arena_app.proc.pid) - server0, own_cpu_seconds() - client0
    assert not any(t.is_alive() for t in threads), "voters still running after 600 s"
    assert stats.get("vote_refused", 0) == 0, f"{stats['vote_refused']} vote(s) refused: {errors[:3]}"
    assert not errors, errors[:5]
    assert arena_app.alive(), arena_app.log_tail()

    # every acknowledged vote is in the store exactly once, with what that session sent
    assert len(sent) == VOTERS * VOTES_EACH
    assert all(s["receipt"]["new"] for s in sent)
    turn_ids = [s["receipt"]["turn_id"] for s in sent]
    assert len(set(turn_ids)) == len(turn_ids)
    rows = [v for v in store.votes() if v.turn_id not in before]
    counts = Counter(v.turn_id for v in rows)
    assert set(counts) >= set(turn_ids) and max(counts.values()) == 1
    by_id = {v.turn_id: v for v in rows}
    for s in sent:
        v = by_id[s["receipt"]["turn_id"]]
        assert (v.prompt, v.vote, v.blind) == (s["prompt"], s["choice"], True)  # no crossed sessions
        assert v.settings["max_new_tokens"] == 1 + int(s["prompt"].split("turn ")[1].split(":")[0]) % 4

    # and it keeps serving
    c = _api.client(arena_app.url)
    _api.send(c, "still there?")
    assert _api.vote(c, "tie")["new"]
    with urllib.request.urlopen(arena_app.url, timeout=10) as r:
        assert r.status == 200

    report = {"voters": VOTERS, "votes_each": VOTES_EACH, "votes": len(sent), "seconds": round(seconds, 1),
              "votes_per_s": round(len(sent) / seconds, 2), "send_queue_full_retries": stats.get("queue_full", 0),
              "votes_refused": stats.get("vote_refused", 0),
              "stored_new_rows": len(rows), "server_cpu_s": round(server_cpu, 1), "clients_cpu_s": round(client_cpu, 1),
              "load_average": os.getloadavg()}
    _api.ARTIFACTS.mkdir(exist_ok=True)
    (_api.ARTIFACTS / "arena-concurrency.json").write_text(json.dumps(report, indent=2) + "\n")
    print(f"arena concurrency: {len(rows)}/{len(sent)} acknowledged votes stored, {report['votes_refused']} refused, "
          f"{report['seconds']} s;", report)
