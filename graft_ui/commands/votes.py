"""`python -m graft_ui votes ...`: export votes, print the leaderboard.

    python -m graft_ui votes export --db votes.sqlite --format jsonl --out votes.jsonl
    python -m graft_ui votes leaderboard --db votes.sqlite [--domain math] [--expertise math]

`--db` takes a SQLite path or a postgresql:// URL; default `$GRAFT_ARENA_DB` or
`~/.cache/graft_ui/arena/votes.sqlite`.
"""

from __future__ import annotations

import json
import logging
import math

from graft_ui.arena.export import export_votes
from graft_ui.arena.ratings import leaderboard
from graft_ui.arena.store import VoteStore

log = logging.getLogger(__name__)


def add_parser(subparsers) -> None:
    p = subparsers.add_parser("votes", help="arena votes: export, leaderboard", description=__doc__.splitlines()[0])
    sub = p.add_subparsers(dest="votes_command", metavar="SUBCOMMAND")
    p.set_defaults(func=lambda args: (p.print_help(), 2)[1])

    def db_arg(sp):
        sp.add_argument("--db", default=None, help="SQLite file or postgresql:// URL (default: $GRAFT_ARENA_DB or ~/.cache/graft_ui/arena/votes.sqlite)")

    e = sub.add_parser("export", help="write every vote as CSV or JSONL")
    db_arg(e)
    e.add_argument("--format", choices=("csv", "jsonl"), default=None, help="default: from --out's suffix")
    e.add_argument("--out", required=True, help="output file")
    e.add_argument("--blind-only", action="store_true", help="only blind votes (those the leaderboard counts)")
    e.set_defaults(func=_export)

    lb = sub.add_parser("leaderboard", help="Bradley-Terry ratings with bootstrap intervals")
    db_arg(lb)
    lb.add_argument("--domain", default=None, help="only prompts of this domain")
    lb.add_argument("--expertise", default=None, help="only voters who declared this expertise")
    lb.add_argument("--bootstrap", type=int, default=200, help="bootstrap resamples for the intervals (default 200)")
    lb.add_argument("--seed", type=int, default=0)
    lb.add_argument("--json", action="store_true", help="print the table as JSON")
    lb.set_defaults(func=_leaderboard)


def _open(args):
    return VoteStore.open(args.db, create=False)


def _export(args) -> int:
    with _open(args) as store:
        votes = store.votes(blind=True if args.blind_only else None)
    out = export_votes(votes, args.out, args.format)
    print(f"wrote {len(votes)} votes to {out}")
    return 0


def _leaderboard(args) -> int:
    with _open(args) as store:
        votes = store.votes(blind=True)
    lb = leaderboard(votes, domain=args.domain, expertise=args.expertise, n_bootstrap=args.bootstrap, seed=args.seed)
    rows = lb.rows()
    if args.json:
        print(json.dumps({"n_votes": lb.n_votes, "filters": lb.filters, "rows": rows}, indent=2,
                         default=lambda x: None if isinstance(x, float) and math.isnan(x) else x))
        return 0
    if not rows:
        print("no blind votes match" + (f" {lb.filters}" if any(lb.filters.values()) else ""))
        return 0
    print(f"{lb.n_votes} blind votes; ratings: 1000 = average, +400 = 10:1 odds; {lb.level:.0%} bootstrap intervals ({lb.n_bootstrap} resamples)")
    print(lb.table().to_string(index=False))
    return 0
