"""Leaderboard tab: Bradley-Terry ratings from the blind votes, 95% bootstrap intervals, the
win-fraction and battle-count heatmaps, filters by prompt domain and voter expertise, and the
vote exports (CSV / JSONL).

Everything is computed by `graft_ui.arena` (ratings, plots, export); this module only wires it.
The tab refreshes when it is opened, when a filter changes and on its Refresh button.
"""

from __future__ import annotations

import logging
import shutil
import tempfile
import threading
import time
from pathlib import Path

import gradio as gr
from gradio.context import Context

from graft_ui.arena.export import export_for_download
from graft_ui.arena.ratings import MIN_BATTLES
from graft_ui.ui.common import friendly, hint, section, table
from graft_ui.ui.context import AppContext

log = logging.getLogger(__name__)

TITLE = "⑥ Leaderboard"
ALL_DOMAINS = "all domains"
ALL_VOTERS = "all voters"
COLUMNS = ["rank", "variant", "rating", "95% interval", "battles", "wins", "losses", "ties", "both bad", "win rate"]
N_BOOTSTRAP = 200
EXPORT_KEEP_S = 600  # older exports in the app's export folder are removed at the next export

_export_lock = threading.Lock()


def _filter(value: str | None, everything: str) -> str | None:
    return None if value in (None, "", everything) else value


def filter_choices(store) -> tuple[list[str], list[str]]:
    return [ALL_DOMAINS] + store.distinct("domain"), [ALL_VOTERS] + store.distinct("expertise")


def rows_of(lb) -> list[dict]:
    """Rated variants first (ranked), then the provisional ones (no rank, no interval)."""
    out, rank = [], 0
    for r in sorted(lb.rows(), key=lambda r: r["provisional"]):
        if r["provisional"]:
            place, rating = "—", f"{r['rating']} (provisional)"
            interval = f"needs {MIN_BATTLES} battles"
        else:
            rank += 1
            place, rating, interval = rank, r["rating"], f"{r['ci_low']} – {r['ci_high']}"
        out.append({
            "rank": place, "variant": r["variant"], "rating": rating, "95% interval": interval,
            "battles": r["battles"], "wins": r["wins"], "losses": r["losses"], "ties": r["ties"],
            "both bad": r["both_bad"], "win rate": f"{r['win_rate']:.0%}",
        })
    return out


def compute(store, domain: str | None = None, expertise: str | None = None, n_bootstrap: int = N_BOOTSTRAP):
    """(summary markdown, table, rating figure, win-fraction figure, battle-count figure) for the filters."""
    # plotly and scipy load on the first refresh, not at app startup
    from graft_ui.arena.plots import battle_count_figure, rating_figure, win_fraction_figure
    from graft_ui.arena.ratings import leaderboard

    domain, expertise = _filter(domain, ALL_DOMAINS), _filter(expertise, ALL_VOTERS)
    votes = store.votes()
    lb = leaderboard(votes, domain=domain, expertise=expertise, n_bootstrap=n_bootstrap)
    named = sum(1 for v in votes if not v.blind)
    few = sum(1 for s in lb.standings if s.provisional)
    parts = (f"domain **{domain}**" if domain else "", f"voters in **{expertise}**" if expertise else "")
    scope = " · ".join(x for x in parts if x)
    if lb.n_votes:
        summary = (f"**{lb.n_votes}** blind vote{'s' if lb.n_votes != 1 else ''} · **{len(lb.standings)}** variants"
                   + (f" · {scope}" if scope else "")
                   + (f" · {named} named-mode vote{'s' if named != 1 else ''} not counted" if named else "")
                   + f" · intervals from {n_bootstrap} bootstrap resamples"
                   + (f" · **{few}** provisional (under {MIN_BATTLES} battles)" if few else ""))
    else:
        summary = ("No blind votes" + (f" for {scope}" if scope else " yet") + ": run blind battles in the Arena tab."
                   + (f" ({named} named-mode votes are not counted.)" if named else ""))
    return (summary, table(rows_of(lb), COLUMNS), rating_figure(lb), _title_clear(win_fraction_figure(lb)),
            _title_clear(battle_count_figure(lb)))


def _title_clear(fig):
    """The heatmaps put their x axis (and its title) on top: move the figure title above it."""
    if fig.data:
        top = (fig.layout.margin.t or 100) + 40
        fig.update_layout(margin={"t": top}, height=(fig.layout.height or 400) + 40,
                          title={"y": 0.99, "yanchor": "top", "yref": "container"})
    return fig


def export_file(store, fmt: str, root: str | Path) -> str:
    """A fresh export of every vote (blind and named) in its own subfolder of `root` (the app's
    `<work_dir>/exports/votes`); exports older than EXPORT_KEEP_S are removed first, so the folder
    holds only recent downloads and nothing is left in the system temp folder."""
    root = Path(root)
    with _export_lock:
        root.mkdir(parents=True, exist_ok=True)
        cutoff = time.time() - EXPORT_KEEP_S
        for old in root.glob("votes-*"):
            try:
                if old.stat().st_mtime < cutoff:
                    shutil.rmtree(old) if old.is_dir() else old.unlink()
            except OSError as exc:
                log.warning("could not remove the old vote export %s: %s", old, exc)
        # a per-export subfolder: two exports in the same second never share a file name
        folder = Path(tempfile.mkdtemp(prefix="votes-", dir=root))
    return str(export_for_download(store, fmt, folder))


def render(ctx: AppContext) -> None:
    hint("Bradley-Terry ratings from **blind** votes only (1000 = average, +400 = 10:1 odds), with 95% bootstrap "
         "intervals. Ties and “both bad” count as half a win for each side. Filter by the prompt's domain or the "
         "voter's declared expertise. A variant with fewer than " + str(MIN_BATTLES) + " battles is listed as "
         "provisional, below the ranked ones and without an interval.")
    with gr.Row(equal_height=True):
        domain = gr.Dropdown([ALL_DOMAINS], value=ALL_DOMAINS, label="Prompt domain", scale=1, min_width=180,
                             allow_custom_value=True, elem_id="gs-lb-domain")
        expertise = gr.Dropdown([ALL_VOTERS], value=ALL_VOTERS, label="Voter expertise", scale=1, min_width=180,
                                allow_custom_value=True, elem_id="gs-lb-expertise")
    with gr.Row(equal_height=True):
        summary = gr.Markdown("", elem_classes=["gs-status-box"], elem_id="gs-lb-summary")
        refresh_btn = gr.Button("↻ Refresh", size="sm", scale=0, min_width=110, elem_id="gs-lb-refresh")
    board = gr.Dataframe(headers=COLUMNS, interactive=False, wrap=True, show_label=False, elem_id="gs-lb-table",
                         max_height=420)
    rating_plot = gr.Plot(show_label=False, elem_id="gs-lb-ratings")
    with gr.Row(equal_height=False):
        win_plot = gr.Plot(show_label=False, elem_id="gs-lb-winfrac", min_width=420)
        count_plot = gr.Plot(show_label=False, elem_id="gs-lb-counts", min_width=420)
    section("Export votes")
    with gr.Row(equal_height=False):
        with gr.Column(scale=0, min_width=180):
            csv_btn = gr.Button("⬇ Votes as CSV", size="sm", elem_id="gs-lb-export-csv")
            jsonl_btn = gr.Button("⬇ Votes as JSONL", size="sm", elem_id="gs-lb-export-jsonl")
        # shown once there is a file to download: no empty box before that
        exported = gr.File(label="Download", interactive=False, height=90, scale=1, elem_id="gs-lb-export-file",
                           visible=False)
    hint("Exports hold every vote, blind and named (column `blind`), with prompts, answers, settings and fused "
         "recipes; voters' addresses appear only as salted hashes.")

    @friendly
    def refresh(domain_, expertise_):
        store = ctx.vote_store()
        domains, experts = filter_choices(store)
        d = domain_ if domain_ in domains else ALL_DOMAINS
        e = expertise_ if expertise_ in experts else ALL_VOTERS
        return [gr.update(choices=domains, value=d), gr.update(choices=experts, value=e)] + list(compute(store, d, e))

    outputs = [domain, expertise, summary, board, rating_plot, win_plot, count_plot]
    # own concurrency group: a leaderboard never waits behind model runs
    lb_kwargs = dict(concurrency_id="leaderboard", concurrency_limit=2, show_progress="minimal")
    refresh_btn.click(refresh, [domain, expertise], outputs, api_name="leaderboard", **lb_kwargs)
    for dd in (domain, expertise):
        dd.input(refresh, [domain, expertise], outputs, api_visibility="private", **lb_kwargs)
    parent = Context.block
    if isinstance(parent, gr.Tab):  # opening the tab shows the votes cast since it was last seen
        parent.select(refresh, [domain, expertise], outputs, api_visibility="private", **lb_kwargs)
    elif Context.root_block is not None:
        Context.root_block.load(refresh, [domain, expertise], outputs, api_visibility="private", **lb_kwargs)

    def export_for(fmt: str):
        @friendly
        def run():
            return export_file(ctx.vote_store(), fmt, ctx.studio.work_dir / "exports" / "votes")

        return run

    # the endpoints answer the file's path (what an API client wants); the hidden download box shows after
    for btn, fmt in ((csv_btn, "csv"), (jsonl_btn, "jsonl")):
        btn.click(export_for(fmt), None, exported, api_name=f"export_votes_{fmt}", concurrency_id="leaderboard").success(
            lambda: gr.update(visible=True), None, exported, api_visibility="private", queue=False,
            show_progress="hidden")
