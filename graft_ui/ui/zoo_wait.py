"""While the demo zoo builds in the background: a progress banner, and tabs that say what they wait for.

Used only when the app starts before its zoo is complete (app.py: the page first, the zoo after;
graft_ui/zoo/background.py builds it). `build_app` renders each tab inside `tab_body(ctx, name)`:
the tabs in `WAITS` show a note naming what they need, their controls hidden until the zoo is in.
`wire(ctx)` polls the builder's progress every `POLL` seconds (gr.Timer);
once the zoo is complete the studio switches to it (once, whichever browser sees it first),
the session's `models_changed` is bumped so every tab refreshes its choices, and the tabs
show: no reload. A failed build shows its message and the app keeps serving (① Experts can
still load another manifest). A manifest loaded by hand during the build is kept.
"""

from __future__ import annotations

import html
import threading
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import gradio as gr

from graft_ui.models.manifest import Manifest, ModelEntry, load_manifest
from graft_ui.ui.context import AppContext
from graft_ui.warmup import start_warm_up
from graft_ui.zoo.background import LIVE, ZooBuild
from graft_ui.zoo.progress import describe

POLL = 2.0  # seconds between progress reads (a small JSON file)
WAITS = {
    "analyze": "the base model and its experts to analyse",
    "fuse": "the experts to fuse",
    "chat": "the base, its experts and fused variants to chat with",
    "arena": "the models to compare",
}
# the stand-in base's name: not a name in the zoo, so the tabs' refreshes pick their zoo defaults
# (Chat's columns, Arena's pool) instead of keeping a selection of the stand-in
STAND_IN = "base (zoo building)"
_adopting = threading.Lock()


@dataclass
class PendingZoo:
    """The app's view of a zoo still being built: the build, the studio's stand-in model set,
    and the components the poll updates (set by `banner` and `tab_body`)."""

    build: ZooBuild
    placeholder: Manifest = None
    banner: Any = None
    parts: list = field(default_factory=list)  # (tab id, note, body)
    warm_up: bool = True  # warm the zoo's models up once it is taken (app.py --no-warm-up: not)

    def __post_init__(self):
        if self.placeholder is None:  # the zoo's future base (not there yet), no experts, no datasets
            self.placeholder = Manifest(base=ModelEntry(name=STAND_IN, path=str(self.build.path / "base"), kind="full"),
                                        name=f"demo zoo ({self.build.profile}, building)")


def waiting(ctx: AppContext) -> bool:
    """Whether the studio still holds the stand-in (the zoo not adopted, no manifest loaded by hand)."""
    return ctx.pending_zoo is not None and ctx.studio.manifest is ctx.pending_zoo.placeholder


def adopt_if_ready(ctx: AppContext) -> None:
    """Switch the studio to the built zoo (once) and warm it up in the background."""
    with _adopting:
        if waiting(ctx) and ctx.pending_zoo.build.ready():
            ctx.studio.set_manifest(load_manifest(ctx.pending_zoo.build.manifest))
            if ctx.pending_zoo.warm_up:
                start_warm_up(ctx.studio)


def banner_html(status: dict, pending: bool) -> str:
    state = status.get("state")
    if state == "ready" or (not pending and state not in LIVE and state != "failed"):
        return ""
    if state == "failed":
        return (f'<div class="gs-zoo-progress gs-zoo-failed" role="alert"><b>The demo zoo could not be built.</b> '
                f'{html.escape(status.get("error") or "")}<br>The app keeps serving: ① Experts can load another '
                "manifest; start scripts/demo.sh again to retry the build.</div>")
    total = status.get("total_steps") or 0
    pct = 100 * (status.get("steps") or 0) // total if total else 0
    return (f'<div class="gs-zoo-progress" role="status"><b>Building the demo zoo</b> — '
            f'<span class="gs-zoo-line">{html.escape(describe(status))}</span>'
            f'<progress max="100" value="{pct}" style="width:100%;height:10px;accent-color:#059669"></progress>'
            "The tabs below open by themselves when it is ready; no need to reload.</div>")


def note_text(name: str, status: dict) -> str:
    state = status.get("state")
    if state == "failed":
        return f"⚠ This tab needs {WAITS[name]}, and the demo zoo build failed: {status.get('error') or 'see the banner'}"
    return f"**Waiting for the demo zoo:** this tab needs {WAITS[name]}. Now: {describe(status)}."


def banner(ctx: AppContext) -> None:
    """The progress banner, under the header (nothing when the zoo was complete at start)."""
    if ctx.pending_zoo is not None:
        ctx.pending_zoo.banner = gr.HTML(banner_html(ctx.pending_zoo.build.status(), waiting(ctx)),
                                         elem_id="gs-zoo-banner", padding=False)


@contextmanager
def tab_body(ctx: AppContext, name: str):
    """Render a tab; while the zoo builds, a tab in WAITS gets a note and its controls start hidden."""
    if ctx.pending_zoo is None or name not in WAITS:
        yield
        return
    pending = waiting(ctx)
    note = gr.Markdown(note_text(name, ctx.pending_zoo.build.status()) if pending else "", visible=pending,
                       elem_id=f"gs-wait-{name}", elem_classes=["gs-wait"])
    with gr.Column(visible=not pending, elem_id=f"gs-body-{name}") as body:
        yield
    ctx.pending_zoo.parts.append((name, note, body))


def wire(ctx: AppContext, app: gr.Blocks) -> None:
    """The timer that refreshes the banner and the waiting tabs, and adopts the zoo when it is in."""
    pz = ctx.pending_zoo
    if pz is None:
        return
    timer = gr.Timer(POLL, active=True)

    def poll():
        st = pz.build.status()
        if st.get("state") == "ready":
            adopt_if_ready(ctx)
        pending = waiting(ctx)
        out = [banner_html(st, pending)]
        for name, _, _ in pz.parts:
            out += [gr.update(value=note_text(name, st) if pending else "", visible=pending), gr.update(visible=not pending)]
        # the bump refreshes every tab's choices (a no-op when this session has seen this version)
        return [*out, ctx.bump(), gr.Timer(active=st.get("state") in LIVE)]

    outputs = [pz.banner, *(c for _, note, body in pz.parts for c in (note, body)), ctx.models_changed, timer]
    # queued (never waiting: no concurrency limit): gradio fires a State's change events only after
    # a queued event, and the bump of models_changed must reach every tab's refresh
    kw = dict(outputs=outputs, api_visibility="private", show_progress="hidden", concurrency_limit=None)
    timer.tick(poll, **kw)
    app.load(poll, **kw)
