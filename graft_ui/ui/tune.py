"""③ Fuse's "Tune on target data" accordion: a live Pareto plot, progress, Stop; the best trial
becomes a named variant (graft_ui.tune does the work; this module only draws it)."""

from __future__ import annotations

import html
import time
from typing import Callable

import gradio as gr

from graft_ui.checks import number
from graft_ui.ui.common import guarded, hint, ok, warn
from graft_ui.ui.context import AppContext


def progress_html(done: int, total: int, elapsed: float, budget: float, phase: str = "") -> str:
    """A progress bar with the trial count and the elapsed time (plain HTML: it updates on every trial)."""
    return (f'<div id="gs-tune-progress-box"><progress value="{done}" max="{total}" style="width:100%"></progress>'
            f'<div>trial <b>{done}</b> / {total} · {elapsed:.0f} s elapsed of a {budget:.0f} s budget'
            f'{" · " + phase if phase else ""}</div></div>')


def result_md(result: dict, variant) -> str:
    from graft_ui.tune.report import heldout_table

    head = ok(f"Kept the best trial as **{variant.name}** (its recipe is in the Recipe box and in the variant's "
              f"folder).") if variant else warn("No trial finished; nothing was kept.")
    verdict = f"\n\n**{result['verdict']}** (the tuned recipe was chosen on dev data only)." if result.get("verdict") else ""
    return f"{head}\n\nSearch: {len(result['trials'])} trial(s), {result['stopped']}.{verdict}\n\n{heldout_table(result)}"


def shared_progress(snap: dict) -> str:
    done = len(snap["trials"])
    return (f'<div id="gs-tune-progress-box"><progress value="{done}" max="{snap["total"]}" style="width:100%">'
            f'</progress><div>shared study <b>{html.escape(snap["name"])}</b>: trial <b>{done}</b> / {snap["total"]} '
            f'finished · {snap["running"]} running · {snap["workers"]} worker(s)</div></div>')


def shared_figure(snap: dict):
    from graft_ui.tune.plots import pareto_figure

    return pareto_figure(snap["trials"], snap["domains"], None, best=snap["best"],
                         title=f"Shared study {snap['name']}: dev accuracy per trial")


def render(ctx: AppContext, recipe_from_form: Callable, form: list, kept_outputs: list, kept: Callable) -> None:
    """`recipe_from_form(*form values)` gives the recipe to tune; `kept(variant)` gives updates for `kept_outputs`
    (the Fuse tab's summary, recipe box, variants table, ...) once the best trial is a variant."""
    studio = ctx.studio
    names = studio.dataset_names()
    with gr.Accordion("Tune on target data", open=False, elem_id="gs-tune"):
        hint("Searches the method's parameters (Graft: a, c, bins, gates, α/β, scale, plus the layer range and "
             "module types) with optuna's TPE sampler, seeded, on a dev split of the target domains carved from "
             "their train split (never the held-out eval split: checked), then scores the defaults and the best "
             "trials on held-out data. `scale` is an extension, not in the paper.")
        with gr.Row():
            domains = gr.Dropdown(names, value=[], multiselect=True, label="Target domains",
                                  info="empty: the experts' own domains", elem_id="gs-tune-domains")
            trials = gr.Slider(2, 200, value=40, step=1, label="trials", elem_id="gs-tune-trials")
            budget = gr.Number(120, minimum=1, label="time budget (s)", elem_id="gs-tune-budget")
            dev_size = gr.Slider(2, 128, value=32, step=1, label="dev items per domain")
        with gr.Row():
            start_btn = gr.Button("Tune", variant="primary", elem_id="gs-tune-start")
            stop_btn = gr.Button("■ Stop", variant="stop", elem_id="gs-tune-stop")
        progress = gr.HTML("", elem_id="gs-tune-progress")
        pareto = gr.Plot(label="Dev accuracy per trial (experts ★, defaults ◆)", elem_id="gs-tune-pareto")
        outcome = gr.Markdown("", elem_id="gs-tune-result")
        hint("**Watch a shared study**: a study that `python -m graft_ui tune ... --storage URL --study-name NAME` "
             "workers fill on other machines; its trials are drawn here as they finish (every 5 s).")
        with gr.Row():
            storage = gr.Textbox(label="storage", placeholder="postgresql://USER@HOST/DB or a journal file",
                                 elem_id="gs-tune-storage", scale=3)
            study_name = gr.Textbox(label="study name", elem_id="gs-tune-study", scale=1)
            attach_btn = gr.Button("Attach", elem_id="gs-tune-attach", scale=0)
            detach_btn = gr.Button("Detach", elem_id="gs-tune-detach", scale=0)
        timer = gr.Timer(5, active=False)

    outputs = [progress, pareto, outcome] + kept_outputs

    @guarded(len(outputs), status=2)
    def start(doms, n, seconds, size, request: gr.Request, *values):  # gradio fills `request` by its type
        from graft_ui.tune.plots import pareto_figure
        from graft_ui.tune.session import expert_domains, tune_in_studio
        from graft_ui.tune.tuner import TuneConfig

        try:
            recipe = recipe_from_form(*values)
            config = TuneConfig(tuple(doms or expert_domains(studio.manifest, recipe)),
                                trials=number("trials", n, integer=True, low=1),
                                budget_s=number("time budget", seconds, low=1), dev_size=int(size),
                                device="cuda" if studio.device.type == "cuda" else "cpu")
        except Exception:
            ctx.finish(request, "tune")  # nothing runs: a later Stop has nothing to stop
            raise
        skip, t0 = [gr.skip()] * len(kept_outputs), time.perf_counter()
        stop_ev = ctx.new_stop(request, "tune")  # already set when Stop was pressed while this waited in the queue
        try:
            for ev in tune_in_studio(studio, recipe, config, stop_ev):
                t = ev["tuner"]
                fig = pareto_figure([r.to_dict() for r in t.results], list(t.splits), t.experts_dev,
                                    best=getattr(t.best(), "number", None))
                phase = {"trial": "", "heldout": "scoring on held-out data…", "done": "done"}[ev["phase"]]
                bar = progress_html(len(t.results), config.trials, time.perf_counter() - t0, config.budget_s, phase)
                done = ev["phase"] == "done"
                yield [bar, fig, result_md(ev["result"], ev["variant"]) if done else gr.skip()] + (
                    list(kept(ev["variant"])) if done and ev["variant"] else skip)
        finally:
            ctx.finish(request, "tune", stop_ev)

    def stop(request: gr.Request):
        # the per-tab Stop protocol of Chat and Arena (ui/context.py): only a search that is queued or running
        return "■ stopping after the running trial…" if ctx.stop(request, "tune") else gr.skip()

    def arm(request: gr.Request):  # beside the queued request: a Stop while it waits is seen when it starts
        ctx.arm(request, "tune")

    @guarded(4, status=2)
    def watch(url, name):
        from graft_ui.tune.shared import snapshot

        url = (url or "").strip()
        # a database server, or a journal file under the allowed folders (a sqlite:// URL is a server path: refused)
        snap = snapshot(url if url.startswith(("postgresql", "mysql")) else studio.allowed(url), (name or "").strip())
        return shared_progress(snap), shared_figure(snap), gr.skip(), gr.Timer(active=True)

    attach_btn.click(watch, [storage, study_name], [progress, pareto, outcome, timer], api_visibility="private")
    timer.tick(watch, [storage, study_name], [progress, pareto, outcome, timer], api_visibility="private",
               show_progress="hidden")
    detach_btn.click(lambda: gr.Timer(active=False), None, timer, api_visibility="private", queue=False)

    start_btn.click(arm, None, None, api_visibility="private", queue=False, show_progress="hidden")
    # not a named API endpoint: a search holds the GPU queue for its whole budget (headless: `python -m graft_ui tune`)
    start_btn.click(start, [domains, trials, budget, dev_size] + form, outputs, api_visibility="private", **ctx.gpu)
    # Stop runs outside the GPU queue, so it is never stuck behind the search it stops
    stop_btn.click(stop, None, outcome, api_name="stop_tuning", concurrency_limit=None, queue=False)
