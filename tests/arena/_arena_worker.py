"""Subprocess writer for the multi-process and kill -9 tests (not a test module).

usage: _arena_worker.py TARGET STORE_DIR PREFIX COUNT [--dup PREFIX2] [--go FILE] [--forever]

Records COUNT votes with turn ids PREFIX:0..COUNT-1 (and, with --dup, also submits the
same turn numbers under PREFIX2, racing the process that owns them), printing
"ACK <turn_id>" only after record_vote returned. --go waits for FILE to exist first (a
start barrier); --forever keeps writing until killed.
"""

import argparse
import itertools
import sys
import time
from pathlib import Path

from graft_ui.arena.store import VoteStore


def main() -> int:
    p = argparse.ArgumentParser()
    p.add_argument("target")
    p.add_argument("store_dir")
    p.add_argument("prefix")
    p.add_argument("count", type=int)
    p.add_argument("--dup")
    p.add_argument("--go")
    p.add_argument("--forever", action="store_true")
    args = p.parse_args()
    store = VoteStore.open(args.target, store_dir=args.store_dir)
    if args.go:
        deadline = time.monotonic() + 60
        while not Path(args.go).exists():
            if time.monotonic() > deadline:
                return 3
            time.sleep(0.005)
    numbers = itertools.count() if args.forever else range(args.count)
    for i in numbers:
        for prefix, vote in ((args.prefix, "a"), (args.dup, "b")):
            if prefix is None:
                continue
            turn = f"{prefix}:{i}"
            store.record_vote(
                turn_id=turn, battle_id=prefix, turn_index=i, variant_a=f"m{i % 3}", variant_b="ref",
                vote=vote, prompt=f"prompt {turn}", answer_a="left answer", answer_b="right answer",
                settings={"max_new_tokens": 16}, client_address="127.0.0.1",
            )
            sys.stdout.write(f"ACK {turn}\n")
            sys.stdout.flush()
    store.close()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
