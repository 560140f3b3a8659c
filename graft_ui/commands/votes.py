"""`python -m graft_ui votes ...`: export votes, print the leaderboard.

    python -m graft_ui votes export --db votes.sqlite --format jsonl --out votes.jsonl
    python -m graft_ui votes leaderboard --db votes.sqlite [--domain math] [--expertise math]
    python -m graft_ui votes leaderboard --db votes.sqlite --style-control   # raw and controlled side by side

`--db` takes a SQLite path or a postgresql:// URL; default `$GRAFT_ARENA_DB` or
`~/.cache/graft_ui/arena/votes.sqlite`.
"""

from __future__ import annotations

import json
import logging
import math

from graft_ui.arena.export import export_votes
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
    lb.add_argument("--style-control", action="store_true",
                    help="also fit with answer-style covariates (length, markdown) and print the style coefficients")
    lb.add_argument("--keep-flagged", action="store_true", help="count the votes of voters the e-value test flags")
    lb.add_argument("--drop-fast", action="store_true", help="leave out votes cast faster than the answers could be read")
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
    from graft_ui.arena.board import verdict  # numpy/scipy only when a leaderboard is asked for
    from graft_ui.arena.verdicts import FRESH

    with _open(args) as store:
        votes = store.votes(blind=True)
        restored, confirmed = store.marks("voter"), store.marks(FRESH)
    v = verdict(votes, domain=args.domain, expertise=args.expertise, restored=restored, confirmed=confirmed,
                drop_flagged=not args.keep_flagged, drop_fast=args.drop_fast, style_control=args.style_control,
                n_bootstrap=args.bootstrap, seed=args.seed)
    lb, rows = v.board, v.rows()
    flagged = [{"voter": c.voter[:12], "votes": c.n_votes, "e_value": round(c.e_value, 2),
                "restored": c.voter in v.quality.restored} for c in v.quality.flagged]
    if args.json:
        out = {"n_votes": lb.n_votes, "filters": lb.filters, "rows": rows, "flagged_voters": flagged,
               "excluded_votes": v.excluded_votes, "fast_votes": v.fast_votes,
               "style_coefficients": v.style.coefficients() if v.style is not None else None}
        print(json.dumps(out, indent=2, default=lambda x: None if isinstance(x, float) and math.isnan(x) else x))
        return 0
    if not rows:
        print("no blind votes match" + (f" {lb.filters}" if any(lb.filters.values()) else ""))
        return 0
    print(f"{lb.n_votes} blind votes counted; ratings: 1000 = average, +400 = 10:1 odds; {lb.level:.0%} bootstrap "
          f"intervals ({lb.n_bootstrap} resamples)")
    if flagged:
        left = sum(1 for f in flagged if not f["restored"])
        print(f"{len(flagged)} voter session(s) flagged by the e-value test; {left} left out "
              f"({v.excluded_votes} votes; --keep-flagged counts them)")
    if v.fast_votes:
        print(f"{v.fast_votes} vote(s) cast faster than the answers could be read"
              + (" (left out)" if args.drop_fast else " (counted; --drop-fast leaves them out)"))
    cols = ["rank", "variant", "rating", "ci_low", "ci_high"]
    if v.style is not None:
        cols += ["style_rating", "style_ci_low", "style_ci_high"]
    cols += ["battles", "wins", "losses", "ties", "both_bad", "win_rate", "vs_next"]
    if any(r["tuning"] for r in rows):
        cols.append("tuning")
    if any(r["fresh"] for r in rows):
        cols.append("fresh")
    import pandas as pd

    print(pd.DataFrame(rows).reindex(columns=cols).to_string(index=False))
    if v.style is not None:
        print("\nstyle coefficients (nats per standard deviation of the A-B difference; > 0: more of it wins):")
        print(pd.DataFrame(v.style.coefficients()).to_string(index=False))
    return 0
