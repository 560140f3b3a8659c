"""Leaderboard tab: Bradley-Terry ratings from the blind votes, 95% bootstrap intervals, the
win-fraction and battle-count heatmaps, filters by prompt domain and voter expertise, and the
vote exports (CSV / JSONL). Also: style control (a toggle: ratings with answer length and
markdown as covariates beside the raw ones, and the style coefficients), the votes still needed
between neighbours, vote quality (flagged voters left out, restorable), the pairing weights of
the next blind battle, best-of-N tuning groups with fresh-vote confirmation, and ratings
against held-out accuracy (human vs automatic).

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
COLUMNS = ["rank", "variant", "rating", "95% interval", "battles", "wins", "losses", "ties", "both bad", "win rate",
           "vs next", "tuning"]
STYLE_COLUMNS = ["style-controlled", "controlled interval"]  # after "95% interval" when style control is on
FLAG_COLUMNS = ["voter", "votes tested", "e-value", "status"]
AGREE_COLUMNS = ["domain", "variant", "rating", "accuracy"]
N_BOOTSTRAP = 200
EXPORT_KEEP_S = 600  # older exports in the app's export folder are removed at the next export

_export_lock = threading.Lock()


def _filter(value: str | None, everything: str) -> str | None:
    return None if value in (None, "", everything) else value


def filter_choices(store) -> tuple[list[str], list[str]]:
    return [ALL_DOMAINS] + store.distinct("domain"), [ALL_VOTERS] + store.distinct("expertise")


def rows_of(lb, verdict=None) -> list[dict]:
    """Rated variants first (ranked), then the provisional ones (no rank, no interval)."""
    out, rank = [], 0
    extra = {r["variant"]: r for r in verdict.rows()} if verdict is not None else {}
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
        more = extra.get(r["variant"], {})
        if "style_rating" in more:
            out[-1]["style-controlled"] = more["style_rating"]
            out[-1]["controlled interval"] = f"{more['style_ci_low']} – {more['style_ci_high']}"
        out[-1]["vs next"] = more.get("vs_next", "")
        out[-1]["tuning"] = " · ".join(x for x in (more.get("tuning"), more.get("fresh")) if x)
    return out


def compute(store, domain: str | None = None, expertise: str | None = None, n_bootstrap: int = N_BOOTSTRAP,
            style_control: bool = False, drop_fast: bool = False, variant_dirs: dict | None = None):
    """(summary, table, rating figure, win-fraction figure, battle-count figure, style markdown, flagged table,
    flagged voter choices) for the filters."""
    # plotly and scipy load on the first refresh, not at app startup
    from graft_ui.arena.board import verdict
    from graft_ui.arena.plots import battle_count_figure, rating_figure, win_fraction_figure
    from graft_ui.arena.verdicts import FRESH, tuning_groups

    domain, expertise = _filter(domain, ALL_DOMAINS), _filter(expertise, ALL_VOTERS)
    votes = store.votes()
    v = verdict(votes, domain=domain, expertise=expertise, restored=store.marks("voter"),
                confirmed=store.marks(FRESH), style_control=style_control, drop_fast=drop_fast,
                groups=tuning_groups(variant_dirs or {}), n_bootstrap=n_bootstrap)
    lb = v.board
    named = sum(1 for x in votes if not x.blind)
    few = sum(1 for s in lb.standings if s.provisional)
    parts = (f"domain **{domain}**" if domain else "", f"voters in **{expertise}**" if expertise else "")
    scope = " · ".join(x for x in parts if x)
    unranked = sum(1 for s in v.separations if not s.separated)
    if lb.n_votes:
        summary = (f"**{lb.n_votes}** blind vote{'s' if lb.n_votes != 1 else ''} · **{len(lb.standings)}** variants"
                   + (f" · {scope}" if scope else "")
                   + (f" · {named} named-mode vote{'s' if named != 1 else ''} not counted" if named else "")
                   + f" · intervals from {n_bootstrap} bootstrap resamples"
                   + (f" · **{few}** provisional (under {MIN_BATTLES} battles)" if few else "")
                   + (f" · **{v.excluded_votes}** votes of flagged voters left out" if v.excluded_votes else "")
                   + (f" · {v.fast_votes} fast vote{'s' if v.fast_votes != 1 else ''} "
                      + ("left out" if drop_fast else "marked") if v.fast_votes else "")
                   + (f" · cannot yet rank **{unranked}** neighbouring pair{'s' if unranked != 1 else ''}"
                      if unranked else ""))
    else:
        summary = ("No blind votes" + (f" for {scope}" if scope else " yet") + ": run blind battles in the Arena tab."
                   + (f" ({named} named-mode votes are not counted.)" if named else ""))
    columns = COLUMNS[:4] + (STYLE_COLUMNS if v.style is not None else []) + COLUMNS[4:]
    return (summary, table(rows_of(lb, v), columns), rating_figure(lb), _title_clear(win_fraction_figure(lb)),
            _title_clear(battle_count_figure(lb)), style_md(v), table(flag_rows(v), FLAG_COLUMNS), voter_choices(v))


def style_md(v) -> str:
    if v.style is None:
        return ""
    coefs = ", ".join(f"{c['feature']} **{c['coef']:+.2f}** ({c['ci_low']:+.2f} – {c['ci_high']:+.2f})"
                      for c in v.style.coefficients())
    return ("Style control on: ratings with answer length (tokens) and markdown (headers, lists, bold) as covariates. "
            f"Fitted style coefficients, nats per standard deviation of the A − B difference: {coefs}.")


def flag_rows(v) -> list[dict]:
    return [{"voter": c.voter[:12], "votes tested": c.n_votes, "e-value": f"{c.e_value:.3g}",
             "status": "restored (counted)" if c.voter in v.quality.restored else "flagged (left out)"}
            for c in v.quality.flagged]


def voter_choices(v) -> list[tuple[str, str]]:
    return [(f"{c.voter[:12]} · {c.n_votes} votes · e-value {c.e_value:.3g}", c.voter) for c in v.quality.flagged]


def set_voter(store, voter: str | None, restore: bool) -> str:
    """Restore a flagged voter's votes to the fit, or exclude them again (a mark; the votes never change)."""
    from graft_ui.arena.quality import RESTORED

    if not voter:
        raise ValueError("choose a flagged voter first")
    if restore:
        store.set_mark("voter", voter, RESTORED)
        return f"voter {voter[:12]} restored: their votes count again"
    store.clear_mark("voter", voter)
    return f"voter {voter[:12]} excluded again"


def confirm_fresh(store, variant: str | None) -> str:
    """From now on, rate `variant` on fresh votes too (its votes before this moment are left out of that rating)."""
    from graft_ui.arena.verdicts import FRESH
    from graft_ui.arena.vote import utc_now

    if not variant:
        raise ValueError("choose a variant to confirm")
    store.set_mark(FRESH, variant, utc_now())
    return f"{variant} will be confirmed on votes cast from now on (see the tuning column)"


def pairing_table(store, studio):
    """The next blind battle's pair weights over the Arena's default pool (what a new session draws from)."""
    from graft_ui.arena.board import counted_votes
    from graft_ui.arena.pairing import pair_weights, weights_table
    from graft_ui.arena.session import default_pool

    names = default_pool(studio)
    if len(names) < 2:
        return table([], ["pair", "chance"])
    return table(weights_table(pair_weights(counted_votes(store.votes(blind=True), store.marks("voter")), names)),
                 ["pair", "chance"])


def agreement(store, studio):
    """(table, figure, rho markdown): ratings against held-out accuracy."""
    from graft_ui.arena.agreement import accuracy_records, human_vs_auto
    from graft_ui.arena.plots import agreement_figure

    zoo = Path(studio.manifest.source).parent if studio.manifest.source else None
    acc = accuracy_records(zoo, {n: v.out_dir for n, v in studio.variants.items()})
    rows, rho = human_vs_auto(store.votes(blind=True), acc)
    text = ("Spearman ρ of rating vs held-out accuracy: " + ", ".join(f"{d} **{r:+.2f}**" for d, r in rho.items())
            if rho else "Needs three or more variants with both blind votes and a held-out accuracy per domain.")
    return table(rows, AGREE_COLUMNS), agreement_figure(rows, rho), text


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
        with gr.Column(scale=1, min_width=220):
            style_box = gr.Checkbox(False, label="Style control", elem_id="gs-lb-style",
                                    info="also rate with answer length and markdown as covariates")
            fast_box = gr.Checkbox(False, label="Leave out fast votes", elem_id="gs-lb-drop-fast",
                                   info="votes cast faster than both answers could be read")
    with gr.Row(equal_height=True):
        summary = gr.Markdown("", elem_classes=["gs-status-box"], elem_id="gs-lb-summary")
        refresh_btn = gr.Button("↻ Refresh", size="sm", scale=0, min_width=110, elem_id="gs-lb-refresh")
    board = gr.Dataframe(headers=COLUMNS, interactive=False, wrap=True, show_label=False, elem_id="gs-lb-table",
                         max_height=420)
    style_box_md = gr.Markdown("", elem_id="gs-lb-style-coefs")
    rating_plot = gr.Plot(show_label=False, elem_id="gs-lb-ratings")
    with gr.Row(equal_height=False):
        win_plot = gr.Plot(show_label=False, elem_id="gs-lb-winfrac", min_width=420)
        count_plot = gr.Plot(show_label=False, elem_id="gs-lb-counts", min_width=420)
    with gr.Accordion("Vote quality: flagged voters", open=False, elem_id="gs-lb-quality"):
        hint("A voter session with 5 or more votes is tested against each pair's record among the other voters "
             "(e-value test at α = 0.05). Flagged voters' votes are left out of the ratings unless restored here; "
             "nothing is deleted.")
        flagged = gr.Dataframe(headers=FLAG_COLUMNS, interactive=False, show_label=False, elem_id="gs-lb-flagged")
        with gr.Row(equal_height=True):
            voter = gr.Dropdown([], value=None, label="Flagged voter", scale=2, elem_id="gs-lb-voter")
            restore_btn = gr.Button("Restore their votes", size="sm", scale=0, min_width=160, elem_id="gs-lb-restore")
            exclude_btn = gr.Button("Exclude again", size="sm", scale=0, min_width=130, elem_id="gs-lb-exclude")
        voter_status = gr.Markdown("", elem_id="gs-lb-voter-status")
    with gr.Accordion("Pairing of the next blind battle", open=False, elem_id="gs-lb-pairing-box"):
        hint("Adaptive: a pair is drawn in proportion to how much one more vote would shrink the interval of its "
             "rating difference (settled pairs are drawn less). Uniform: every pair alike.")
        pairing = gr.Radio(["adaptive", "uniform"], value=ctx.pairing, label="Pairing", elem_id="gs-lb-pairing")
        weights = gr.Dataframe(headers=["pair", "chance"], interactive=False, show_label=False,
                               elem_id="gs-lb-weights")
    with gr.Accordion("Best-of-N: confirm a tuned winner on fresh votes", open=False, elem_id="gs-lb-fresh-box"):
        hint("A tuning run tries many recipes and enters its best; that winner's rating runs high. Confirming "
             "rates it again on the votes cast from now on only (the tuning column).")
        with gr.Row(equal_height=True):
            fresh_pick = gr.Dropdown([], value=None, label="Variant", scale=2, allow_custom_value=False,
                                     elem_id="gs-lb-fresh-variant")
            fresh_btn = gr.Button("Confirm on fresh votes", size="sm", scale=0, min_width=180, elem_id="gs-lb-confirm")
        fresh_status = gr.Markdown("", elem_id="gs-lb-fresh-status")
    with gr.Accordion("People vs the benchmark", open=False, elem_id="gs-lb-agree-box"):
        agree_md = gr.Markdown("", elem_id="gs-lb-agree-rho")
        agree_table = gr.Dataframe(headers=AGREE_COLUMNS, interactive=False, show_label=False, elem_id="gs-lb-agree")
        agree_plot = gr.Plot(show_label=False, elem_id="gs-lb-agree-plot")
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
    def refresh(domain_, expertise_, style_=False, fast_=False):
        store, studio = ctx.vote_store(), ctx.studio
        domains, experts = filter_choices(store)
        d = domain_ if domain_ in domains else ALL_DOMAINS
        e = expertise_ if expertise_ in experts else ALL_VOTERS
        dirs = {n: v.out_dir for n, v in studio.variants.items()}
        summary_, board_, r_fig, w_fig, c_fig, style_, flags, choices = compute(
            store, d, e, style_control=bool(style_), drop_fast=bool(fast_), variant_dirs=dirs)
        names = store.distinct("variant")
        return ([gr.update(choices=domains, value=d), gr.update(choices=experts, value=e), summary_, board_, r_fig,
                 w_fig, c_fig, style_, flags, gr.update(choices=choices, value=choices[0][1] if choices else None),
                 pairing_table(store, studio),
                 gr.update(choices=names, value=None)] + list(agreement(store, studio)))

    outputs = [domain, expertise, summary, board, rating_plot, win_plot, count_plot, style_box_md, flagged, voter,
               weights, fresh_pick, agree_table, agree_plot, agree_md]
    inputs = [domain, expertise, style_box, fast_box]
    # own concurrency group: a leaderboard never waits behind model runs
    lb_kwargs = dict(concurrency_id="leaderboard", concurrency_limit=2, show_progress="minimal")
    refresh_btn.click(refresh, inputs, outputs, api_name="leaderboard", **lb_kwargs)
    for dd in (domain, expertise, style_box, fast_box):
        dd.input(refresh, inputs, outputs, api_visibility="private", **lb_kwargs)
    parent = Context.block
    if isinstance(parent, gr.Tab):  # opening the tab shows the votes cast since it was last seen
        parent.select(refresh, inputs, outputs, api_visibility="private", **lb_kwargs)
    elif Context.root_block is not None:
        Context.root_block.load(refresh, inputs, outputs, api_visibility="private", **lb_kwargs)

    def mark_voter(restore: bool):
        @friendly
        def run(voter_):
            return set_voter(ctx.vote_store(), voter_, restore)

        return run

    for btn, restore in ((restore_btn, True), (exclude_btn, False)):
        btn.click(mark_voter(restore), voter, voter_status, api_name="restore_voter" if restore else "exclude_voter",
                  concurrency_id="leaderboard").success(refresh, inputs, outputs, api_visibility="private", **lb_kwargs)

    @friendly
    def confirm(variant_):
        return confirm_fresh(ctx.vote_store(), variant_)

    fresh_btn.click(confirm, fresh_pick, fresh_status, api_name="confirm_fresh", concurrency_id="leaderboard").success(
        refresh, inputs, outputs, api_visibility="private", **lb_kwargs)

    def set_pairing(mode_):
        from graft_ui.arena.pairing import PAIRINGS

        if mode_ not in PAIRINGS:
            raise gr.Error(f"pairing {mode_!r} is not one of {list(PAIRINGS)}")
        ctx.pairing = mode_
        log.info("arena pairing: %s", mode_)

    pairing.input(set_pairing, pairing, None, api_visibility="private", queue=False)

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
