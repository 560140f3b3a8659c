"""Arena: blind battles between variants, a durable vote store, Bradley-Terry leaderboard, exports.

Modules: `store` (VoteStore, Vote), `battle` (start_battle, record_battle_vote, reveal),
`ratings` (leaderboard, bradley_terry, bootstrap), `style` (style-controlled fit), `quality`
(e-value voter test, fast votes), `limits` (per-client rate limits), `pairing` (adaptive pair
weights), `verdicts` (votes needed, best-of-N groups), `agreement` (ratings vs held-out accuracy),
`board` (all of it for the Leaderboard), `plots` (plotly figures), `export` (CSV / JSONL); the CLI
is graft_ui/commands/votes.py (`python -m graft_ui votes ...`). This package imports only the
light store and battle modules; ratings/plots pull numpy, scipy and plotly when imported.
"""

from graft_ui.arena.battle import (
    Battle,
    Reveal,
    Turn,
    Variant,
    VoteNotRecordedError,
    named_battle,
    record_battle_vote,
    reveal,
    sample_pair,
    start_battle,
)
from graft_ui.arena.store import VOTE_CHOICES, Vote, VoteStore, default_db_path, open_store

__all__ = [
    "Battle", "Reveal", "Turn", "Variant", "VoteNotRecordedError", "named_battle", "record_battle_vote", "reveal",
    "sample_pair", "start_battle", "VOTE_CHOICES", "Vote", "VoteStore", "default_db_path", "open_store",
]
