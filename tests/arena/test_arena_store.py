"""Vote store: contents, one vote per turn, concurrency (threads, processes), durability, privacy."""

from __future__ import annotations

import hashlib
import io
import os
import signal
import sqlite3
import stat
import subprocess
import sys
import threading
import time

import numpy as np
import pytest
from PIL import Image

from graft_ui.arena.store import VoteStore
from graft_ui.recipe import ExpertRef, Recipe

from _arena_helpers import WORKER, worker_env

ADDRESS = "203.0.113.77"


def _vote(store, turn_id="b1:0", vote="a", **kw):
    args = dict(turn_id=turn_id, battle_id=turn_id.split(":")[0], variant_a="fused", variant_b="math-lora", vote=vote,
                prompt="How many circles?", answer_a="3", answer_b="three")
    args.update(kw)
    return store.record_vote(**args)


def _png(color=(255, 0, 0)) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (8, 6), color).save(buf, format="PNG")
    return buf.getvalue()


def test_vote_records_everything(store):
    recipe = Recipe(method="average", experts=(ExpertRef("math-lora"), ExpertRef("code-lora")), name="avg")
    v = _vote(
        store, turn_index=0, image=_png(), settings={"max_new_tokens": 64, "greedy": True, "temperature": 0.7},
        recipe_a=recipe, recipe_b=None, note="  the left one counted right  ", expertise="math", domain="math",
        client_address=ADDRESS, prompt="line one\nline two, with 'quotes' and \"more\"",
    )
    assert v.new and v.id is not None
    assert v.recipe_a == recipe.to_dict() and v.recipe_b is None
    assert v.settings == {"max_new_tokens": 64, "greedy": True, "temperature": 0.7}
    assert v.note == "the left one counted right"
    assert v.created_at.endswith("+00:00")
    assert v.client_hash and ADDRESS not in v.client_hash and len(v.client_hash) == 64
    assert v.image_sha256 == hashlib.sha256(_png()).hexdigest()
    assert store.image_path(v.image_sha256).read_bytes() == _png()
    # what a fresh read gives is what record_vote returned
    assert store.get_vote("b1:0") == v
    assert store.votes() == [v]
    assert v.winner == "fused"


def test_raw_address_never_stored(tmp_path):
    store = VoteStore.open(tmp_path / "votes.sqlite")
    _vote(store, client_address=ADDRESS)
    store.close()
    for f in tmp_path.iterdir():
        if f.is_file():
            assert ADDRESS.encode() not in f.read_bytes(), f.name


def test_salt_file_private_created_once_and_stable(tmp_path):
    a = VoteStore.open(tmp_path / "votes.sqlite")
    h1 = a.hash_client(ADDRESS)
    salt = tmp_path / "client_salt"
    assert stat.S_IMODE(salt.stat().st_mode) == 0o600
    content = salt.read_text()
    b = VoteStore.open(tmp_path / "votes.sqlite")
    assert b.hash_client(ADDRESS) == h1 and b.hash_client(f" {ADDRESS} ") == h1
    assert salt.read_text() == content
    assert b.hash_client("198.51.100.1") != h1
    assert b.hash_client(None) is None and b.hash_client("") is None
    other = VoteStore.open(tmp_path / "other" / "votes.sqlite")
    assert other.hash_client(ADDRESS) != h1  # a different store, a different salt
    for s in (a, b, other):
        s.close()


def test_one_vote_per_turn_double_submit_counts_once(store):
    first = _vote(store, vote="a")
    again = _vote(store, vote="a")
    changed = _vote(store, vote="b", note="clicked the other one")
    assert again == first and changed == first
    assert first.new and not again.new and not changed.new
    assert changed.vote == "a" and changed.note == ""
    assert store.count() == 1
    _vote(store, turn_id="b1:1", vote="b", turn_index=1)
    assert store.count() == 2 and [v.vote for v in store.votes(battle_id="b1")] == ["a", "b"]


def test_sqlite_is_wal_with_busy_timeout(tmp_path):
    store = VoteStore.open(tmp_path / "votes.sqlite")
    _vote(store)
    conn = sqlite3.connect(tmp_path / "votes.sqlite")
    assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    assert store._backend.conn.execute("PRAGMA busy_timeout").fetchone()[0] == 30000
    assert store._backend.conn.execute("PRAGMA synchronous").fetchone()[0] == 2  # FULL
    conn.close()
    store.close()


def test_filters_and_distinct(store):
    _vote(store, "b1:0", domain="math", expertise="math")
    _vote(store, "b2:0", domain="code", expertise="none", variant_a="code-lora")
    _vote(store, "b3:0", domain="math", expertise="none", blind=False)
    assert [v.turn_id for v in store.votes(domain="math")] == ["b1:0", "b3:0"]
    assert [v.turn_id for v in store.votes(expertise="none", blind=True)] == ["b2:0"]
    assert store.count(blind=False) == 1 and store.count(blind=True) == 2
    assert store.distinct("domain") == ["code", "math"]
    assert store.distinct("variant") == ["code-lora", "fused", "math-lora"]


@pytest.mark.parametrize(
    "kw, bad",
    [
        ({"vote": "left"}, "'left'"),
        ({"variant_b": "fused"}, "'fused'"),
        ({"turn_id": ""}, "turn_id=''"),
        ({"turn_index": -1}, "-1"),
        ({"answer_a": None}, "answer_a"),
        ({"settings": {"device": object()}}, "settings"),
        ({"recipe_a": ["not", "a", "mapping"]}, "list"),
        ({"expertise": 3}, "expertise=3"),
    ],
)
def test_bad_values_are_named(tmp_path, kw, bad):
    store = VoteStore.open(tmp_path / "votes.sqlite")
    with pytest.raises(ValueError, match=bad.replace("(", r"\(")):
        _vote(store, **kw)
    assert store.count() == 0


def test_open_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="missing.sqlite"):
        VoteStore.open(tmp_path / "missing.sqlite", create=False)
    with pytest.raises(ValueError, match="is a folder"):
        VoteStore.open(tmp_path)
    with pytest.raises(ValueError, match="mysql://x"):
        VoteStore.open("mysql://x")
    with pytest.raises(ValueError, match=":memory:"):
        VoteStore.open(":memory:")
    s = VoteStore.open(f"sqlite:///{tmp_path}/by-url.sqlite")
    assert (tmp_path / "by-url.sqlite").exists()
    s.close()


def test_postgres_url_without_driver_says_what_to_install(monkeypatch):
    monkeypatch.setitem(sys.modules, "psycopg", None)
    with pytest.raises(ValueError, match=r"psycopg.*pip install"):
        VoteStore.open("postgresql://someone:secret@db.invalid/votes")


def test_images_content_addressed(tmp_path):
    store = VoteStore.open(tmp_path / "votes.sqlite")
    png = _png()
    sha = store.put_image(png)
    assert store.put_image(png) == sha
    src = tmp_path / "in.png"
    src.write_bytes(png)
    assert store.put_image(src) == sha
    path = store.image_path(sha)
    assert path == tmp_path / "images" / sha[:2] / f"{sha}.png"
    assert len(list((tmp_path / "images").rglob("*.png"))) == 1
    # non-PNG input is stored as PNG under the hash of the PNG bytes
    buf = io.BytesIO()
    Image.new("RGB", (4, 4), (0, 0, 255)).save(buf, format="JPEG")
    jsha = store.put_image(buf.getvalue())
    stored = store.image_path(jsha).read_bytes()
    assert stored.startswith(b"\x89PNG") and hashlib.sha256(stored).hexdigest() == jsha
    asha = store.put_image(np.zeros((5, 7, 3), dtype=np.uint8))
    assert Image.open(store.image_path(asha)).size == (7, 5)
    # a vote may name an image already stored; an unknown hash is refused
    assert _vote(store, image_sha256=sha).image_sha256 == sha
    with pytest.raises(FileNotFoundError, match="f" * 64):
        _vote(store, "b2:0", image_sha256="f" * 64)
    with pytest.raises(ValueError, match="not-a-hash"):
        store.image_path("../not-a-hash")
    with pytest.raises(ValueError, match="not a readable image"):
        store.put_image(b"definitely not an image")
    store.close()


def test_threads_lose_and_duplicate_nothing(store_target):
    target, store_dir = store_target
    shared = VoteStore.open(target, store_dir=store_dir)
    own = [VoteStore.open(target, store_dir=store_dir) for _ in range(3)]
    stores = [shared] * 5 + own  # 5 threads share one connection, 3 have their own
    errors = []
    barrier = threading.Barrier(len(stores))

    def work(k, s):
        try:
            barrier.wait()
            for i in range(25):
                _vote(s, f"t{k}:{i}", turn_index=i)
                _vote(s, f"t{(k + 1) % len(stores)}:{i}", vote="b", turn_index=i)  # races the owner
        except Exception as exc:  # pragma: no cover - reported below
            errors.append(exc)

    threads = [threading.Thread(target=work, args=(k, s)) for k, s in enumerate(stores)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert not errors, errors
    votes = shared.votes()
    turn_ids = [v.turn_id for v in votes]
    assert len(turn_ids) == len(set(turn_ids)) == 8 * 25
    assert set(turn_ids) == {f"t{k}:{i}" for k in range(8) for i in range(25)}
    for s in own + [shared]:
        s.close()


def _spawn(args):
    return subprocess.Popen([sys.executable, str(WORKER), *map(str, args)], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env=worker_env())


def test_processes_lose_and_duplicate_nothing(store_target, tmp_path):
    target, store_dir = store_target
    # no store opened first: the workers also race to create the schema (and the salt file)
    go = tmp_path / "go"
    n_proc, n_votes = 8, 25
    procs = [_spawn([target, store_dir, f"p{k}", n_votes, "--dup", f"p{(k + 1) % n_proc}", "--go", go])
             for k in range(n_proc)]
    time.sleep(0.3)
    go.touch()
    acked = set()
    for p in procs:
        out, err = p.communicate(timeout=120)
        assert p.returncode == 0, err[-2000:]
        acked |= {line.split()[1] for line in out.splitlines() if line.startswith("ACK ")}
    expected = {f"p{k}:{i}" for k in range(n_proc) for i in range(n_votes)}
    assert acked == expected
    with VoteStore.open(target, store_dir=store_dir) as s:
        turn_ids = [v.turn_id for v in s.votes()]
    assert len(turn_ids) == len(set(turn_ids)) == n_proc * n_votes
    assert set(turn_ids) == expected


def test_acknowledged_vote_survives_kill_9(store_target):
    target, store_dir = store_target
    p = _spawn([target, store_dir, "k", 0, "--forever"])
    acked = []
    try:
        deadline = time.monotonic() + 60
        while len(acked) < 5 and time.monotonic() < deadline:
            line = p.stdout.readline()
            if not line:
                break
            if line.startswith("ACK "):
                acked.append(line.split()[1])
    finally:
        os.kill(p.pid, signal.SIGKILL)  # right after the 5th acknowledgement, mid-stream
        p.wait(30)
    assert len(acked) == 5, p.stderr.read()[-2000:]
    assert p.returncode == -signal.SIGKILL
    with VoteStore.open(target, store_dir=store_dir) as s:
        stored = {v.turn_id for v in s.votes()}
        assert set(acked) <= stored
        assert all(s.get_vote(t).prompt == f"prompt {t}" for t in acked)


def test_postgres_reconnects_after_losing_its_connection(pg_url, tmp_path):
    import psycopg

    store = VoteStore.open(pg_url, store_dir=tmp_path)
    _vote(store, "r:0")
    with psycopg.connect(pg_url, autocommit=True) as admin:  # e.g. a server restart or failover
        admin.execute("SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                      "WHERE datname = current_database() AND pid <> pg_backend_pid()")
    assert _vote(store, "r:1").new
    assert _vote(store, "r:1").new is False
    assert [v.turn_id for v in store.votes()] == ["r:0", "r:1"]
    store.close()
