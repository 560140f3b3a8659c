"""A version-1 store (no voter_hash / read_s columns, no marks table) opens as version 2 with every vote kept."""

from __future__ import annotations

from graft_ui.arena.store import VoteStore
from graft_ui.arena.vote import COLUMNS, SCHEMA_VERSION, TABLE

V1_COLUMNS = [c for c in COLUMNS if c not in ("voter_hash", "read_s")]


def _make_v1(store_target) -> None:
    """Write the version-1 schema and two votes with the target's own driver."""
    target, _ = store_target
    col = 0 if not str(target).startswith("postgres") else 1
    cols = ", ".join(f"{n} {COLUMNS[n][col]}" for n in V1_COLUMNS)
    rows = [("t1", "b1", 0, "2026-01-01T00:00:00", "x", "y", "a", 1, "p", "ax", "ay", None, "{}", None, None, "", None,
             "math", "h1"),
            ("t2", "b2", 0, "2026-01-01T00:00:01", "y", "x", "tie", 1, "p", "ay", "ax", None, "{}", None, None, "n", None,
             None, None)]
    names = [n for n in V1_COLUMNS if n != "id"]
    if col == 0:
        import sqlite3

        conn = sqlite3.connect(target)
        mark = "?"
    else:
        import psycopg

        conn = psycopg.connect(target, autocommit=True)
        mark = "%s"
    conn.execute(f"CREATE TABLE {TABLE} ({cols})")
    conn.execute("CREATE TABLE arena_meta (key TEXT PRIMARY KEY, value TEXT NOT NULL)")
    conn.execute(f"INSERT INTO arena_meta (key, value) VALUES ('schema_version', {mark})", ("1",))
    for r in rows:
        conn.execute(f"INSERT INTO {TABLE} ({', '.join(names)}) VALUES ({', '.join([mark] * len(names))})", r)
    if col == 0:
        conn.commit()
    conn.close()


def test_v1_store_migrates_without_losing_a_vote(store_target):
    target, store_dir = store_target
    _make_v1(store_target)
    with VoteStore.open(target, store_dir=store_dir) as store:
        old = store.votes()
        assert [v.turn_id for v in old] == ["t1", "t2"] and old[0].client_hash == "h1" and old[0].domain == "math"
        assert all(v.voter_hash is None and v.read_s is None for v in old)
        assert store._query("SELECT value FROM arena_meta WHERE key = 'schema_version'")[0]["value"] == str(SCHEMA_VERSION)
        new = store.record_vote(turn_id="t3", battle_id="b3", variant_a="x", variant_b="y", vote="b", prompt="p",
                                answer_a="a", answer_b="b", voter_id="session-1", read_s=4.5)
        assert new.voter_hash == store.hash_client("session-1") and new.read_s == 4.5 and new.voter == new.voter_hash
        store.set_mark("voter", new.voter_hash, "restored")
        assert store.marks("voter") == {new.voter_hash: "restored"}
    with VoteStore.open(target, store_dir=store_dir) as again:  # a second open is a no-op
        assert [v.turn_id for v in again.votes()] == ["t1", "t2", "t3"]
        again.clear_mark("voter", new.voter_hash)
        assert again.marks("voter") == {}
