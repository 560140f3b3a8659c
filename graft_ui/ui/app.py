"""The Gradio app: one Blocks, one tab per module, each module exposing `render(ctx)` and `TITLE`.

Tabs are listed in `TABS` as (id, module), imported plainly: a tab module that is missing or
misspelt fails the import instead of dropping the tab silently. A new tab is
`graft_ui/ui/<name>.py` with `render(ctx: AppContext)` and `TITLE`, plus one line here.
See graft_ui/ui/context.py for what ctx offers.
"""

from __future__ import annotations

import dataclasses
import logging
import os
from pathlib import Path
from types import ModuleType

import gradio as gr

from graft_ui.arena.limits import RateLimiter
from graft_ui.models.manifest import ServerConfig, check_endpoint, load_manifest
from graft_ui.models.roots import AllowedRoots
from graft_ui.studio import Studio
from graft_ui.ui import analyze, arena, chat, experts, fuse, leaderboard
from graft_ui.ui import theme as T
from graft_ui.ui import zoo_wait
from graft_ui.ui.admission import limit_gpu_queue
from graft_ui.ui.context import EXAMPLES_DIR, AppContext, examples_for

log = logging.getLogger(__name__)

TABS: list[tuple[str, ModuleType]] = [
    ("experts", experts),
    ("analyze", analyze),
    ("fuse", fuse),
    ("chat", chat),
    ("arena", arena),
    ("leaderboard", leaderboard),
]
# uploads (and other gradio temp files) older than an hour are deleted every hour, and all of them
# when the server stops: an open instance cannot fill the temp folder 20 MiB at a time
UPLOAD_CACHE = (3600, 3600)
QUEUE_MAX_SIZE = 16  # model runs (GPU group) that may wait; others are never refused
MAX_FILE_SIZE = "20mb"


def header(ctx: AppContext) -> str:
    s = ctx.studio
    return T.header_html(s.device_label, s.manifest.name, len(s.manifest.experts), len(s.variants))


def build_app(ctx: AppContext, *, tabs=TABS) -> gr.Blocks:
    """Build the Blocks (not launched). Each tab's `render(ctx)` runs inside its own gr.Tab."""
    with gr.Blocks(title="Graft Studio", analytics_enabled=False, delete_cache=UPLOAD_CACHE) as app:
        head = gr.HTML(header(ctx), elem_id="gs-header-box", padding=False)
        zoo_wait.banner(ctx)  # the demo zoo's build progress, while it builds
        ctx.models_changed = gr.State(ctx.studio.version)
        ctx.handoff = gr.State(None)
        with gr.Tabs(elem_id="gs-tabs") as ctx.tabs:
            for name, module in tabs:
                with gr.Tab(module.TITLE, id=name, elem_id=f"gs-tab-{name}"), zoo_wait.tab_body(ctx, name):
                    module.render(ctx)
        ctx.on_models_changed(lambda: header(ctx), [head])
        ctx.wire_refreshers(app)
        zoo_wait.wire(ctx, app)
        app.load(lambda: header(ctx), None, head, api_visibility="private", queue=False)
    # gradio's max_size would count votes against the same cap as generations: only model runs are capped
    app.queue(max_size=None, default_concurrency_limit=4)
    ctx.admission = limit_gpu_queue(app, ctx_queue_size(ctx), ctx.remote_routes)
    return app


def ctx_queue_size(ctx: AppContext) -> int:
    return getattr(ctx, "queue_size", None) or QUEUE_MAX_SIZE


def exposure_warning(host: str, auth: tuple[str, str] | None) -> str | None:
    """A warning when the app is reachable from other machines and anyone there may use it."""
    import ipaddress

    if auth or host in ("localhost", ""):
        return None
    try:
        if ipaddress.ip_address(host).is_loopback:
            return None
    except ValueError:
        pass  # a host name: assume it is reachable
    return (f"Graft Studio is bound to {host} without --auth: anyone who can reach this machine can load models, "
            "run fusions and cast votes. Pass --auth user:password, or --host 127.0.0.1.")


def launch_kwargs(*, host: str = "127.0.0.1", port: int | None = 7860, auth: tuple[str, str] | None = None,
                  max_file_size: str = MAX_FILE_SIZE, quiet: bool = False) -> dict:
    """Keyword arguments for `Blocks.launch` with the app's safety defaults and look."""
    kw = dict(
        server_name=host, server_port=port, auth=auth, max_file_size=max_file_size, theme=T.theme(), css=T.css(),
        head=T.head_html(),
        favicon_path=str(T.LOGO) if T.LOGO.is_file() else None, show_error=True, quiet=quiet,
        footer_links=[], allowed_paths=[str(Path(__file__).resolve().parents[2] / "examples")],
        ssr_mode=False, mcp_server=False, pwa=False,
    )
    if auth:
        kw["auth_message"] = "Graft Studio — sign in"
    return kw


def default_roots() -> list[Path]:
    """Where loadable folders may be when `--allow-dir` is not given: the demo zoo and the HF cache."""
    from huggingface_hub.constants import HF_HUB_CACHE

    from graft_ui.zoo import zoo_root

    return [zoo_root(), Path(HF_HUB_CACHE)]


def allowed_roots(studio: Studio, allow_dirs: list[str | Path] | None = None) -> AllowedRoots:
    """`allow_dirs` (default: `default_roots()`), plus what the app itself uses: its work dir, the
    examples, and the folders of the manifest it was started with (the operator chose them)."""
    m = studio.manifest
    own = [studio.work_dir, EXAMPLES_DIR]
    own += [Path(p) if Path(p).is_dir() else Path(p).parent
            for p in [m.source, m.base.path, *(e.path for e in m.experts)] if p and Path(p).exists()]
    return AllowedRoots([*(allow_dirs or default_roots()), *own])


def make_context(
    manifest: str | Path | None,
    *,
    device: str = "auto",
    work_dir: str | Path | None = None,
    votes: str | None = None,
    zoo_manifest: str | None = None,
    allow_dirs: list[str | Path] | None = None,
    backend: str | None = None,
    arena_rate: str | None = None,
    zoo_build=None,
) -> AppContext:
    """The app's state on `manifest`; server paths users give must lie under `allow_dirs` (see
    `allowed_roots`) and are otherwise refused with one generic message. `backend`: None or "local"
    (the manifest as written), or the URL of an OpenAI-compatible server that answers every LoRA
    expert (the manifest's `server:` endpoint, replaced). `arena_rate`: the Arena's per-client limits
    (graft_ui.arena.limits spec; None: $GRAFT_ARENA_RATE, else the defaults). `zoo_build` (a
    graft_ui.zoo.background.ZooBuild whose zoo is not complete, with `manifest` None): start on a
    stand-in and take the zoo when it is in (ui/zoo_wait.py)."""
    pending = zoo_wait.PendingZoo(zoo_build) if zoo_build is not None and not zoo_build.ready() else None
    if zoo_build is not None and pending is None:
        manifest = zoo_build.manifest
    m = pending.placeholder if pending else load_manifest(manifest)
    if backend and backend != "local":
        m = dataclasses.replace(m, server=dataclasses.replace(m.server, endpoint=check_endpoint(backend, "--backend"))
                                if m.server else ServerConfig(endpoint=backend))
    studio = Studio(m, device=device, work_dir=work_dir, votes=votes, check=pending is None)
    studio.roots = allowed_roots(studio, allow_dirs)
    if pending:  # the zoo's folder, as its manifest's folders would be had it been there at start
        studio.roots = AllowedRoots([*studio.roots.roots, zoo_build.path])
    log.info("loadable folders: %s", ", ".join(str(r) for r in studio.roots.roots))
    examples = examples_for(studio.manifest.source)
    ctx = AppContext(studio=studio, votes=votes, zoo_manifest=zoo_manifest, examples=examples, pending_zoo=pending)
    ctx.limiter = RateLimiter(arena_rate if arena_rate is not None else os.environ.get("GRAFT_ARENA_RATE"))
    images = {str(Path(e["image"]).parent) for e in examples if e.get("image")}
    outside = sorted(p for p in images if not Path(p).is_relative_to(EXAMPLES_DIR))
    if outside:  # the zoo's showcase images: servable, and accepted back as chat inputs
        gr.set_static_paths(outside)
        ctx.upload_roots.extend(outside)
    return ctx
