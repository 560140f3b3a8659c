"""Killing the app (SIGKILL) between votes loses nothing that was acknowledged.

An app of its own (its own SQLite store) takes votes from a gradio_client voter; right after an
acknowledgement, while the voter is already on its next battle, the process is killed with -9.
Reopening the store (WAL recovery) must show every acknowledged vote, as acknowledged.
"""

from __future__ import annotations

import os
import signal
import sqlite3
import threading
import time

import _arena_ui_api as _api

ACKED_BEFORE_KILL = 6


def test_sigkill_loses_no_acknowledged_vote(launch_app, open_store):
    app = launch_app()
    acked: list[dict] = []
    sent: dict[str, str] = {}
    stop = threading.Event()
    ack_event = threading.Event()

    def voter():
        c = _api.client(app.url)
        i = 0
        while not stop.is_set():
            try:
                _api.send(c, f"durable {i}: what is {i} * 2?", max_new_tokens=2)
                choice = ["a", "b", "tie", "both_bad"][i % 4]
                r = _api.vote(c, choice, note=f"note {i}")
            except Exception:  # noqa: BLE001 - the server was killed under us
                return
            sent[r["turn_id"]] = choice
            acked.append(r)
            if len(acked) >= ACKED_BEFORE_KILL:
                ack_event.set()
            i += 1

    t = threading.Thread(target=voter, daemon=True)
    t.start()
    assert ack_event.wait(180), f"only {len(acked)} votes acknowledged:\n{app.log_tail()}"
    time.sleep(0.05)  # the voter is on to its next battle
    os.kill(app.proc.pid, signal.SIGKILL)
    app.proc.wait(30)
    stop.set()
    t.join(60)
    assert app.proc.returncode == -signal.SIGKILL

    with sqlite3.connect(app.votes) as db:  # what the app left on disk is a sound database
        assert db.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
    store = open_store(app.votes)
    ack_ids = [r["turn_id"] for r in list(acked)]
    assert len(ack_ids) >= ACKED_BEFORE_KILL
    for turn_id in ack_ids:
        v = store.get_vote(turn_id)
        assert v is not None, f"acknowledged vote {turn_id} was lost"
        assert v.vote == sent[turn_id] and v.blind
    assert store.count() in (len(ack_ids), len(ack_ids) + 1)  # at most the in-flight one on top
