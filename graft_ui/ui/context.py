"""What every tab module gets: `render(ctx)` receives one `AppContext`.

    ctx.studio            graft_ui.studio.Studio — manifest, pool (chat ModelPool), variants
                          (name -> FusedVariant with .recipe, .out_dir, .kind), device_label,
                          chat_names(), expert_names(), dataset_names()
    ctx.pool              shortcut for ctx.studio.pool (the model pool may be replaced when
                          the manifest changes: read it at call time, not at build time)
    ctx.votes             vote store target (SQLite path or database URL; None = arena default)
    ctx.vote_store()      the opened graft_ui.arena.store.VoteStore (lazily, once)
    ctx.gpu               event kwargs for anything that runs a model: `btn.click(fn, ..., **ctx.gpu)`
    ctx.models_changed    a gr.State bumped whenever models or fused variants change;
    ctx.on_models_changed(fn, outputs, inputs=None)
                          register a refresh: fn(*inputs) -> updates for `outputs`, on every change
    ctx.arm(request, scope) / ctx.new_stop(request, scope) / ctx.finish(request, scope) / ctx.stop(request, scope)
                          per-browser-session, per-tab threading.Event for Stop buttons (see below)
    ctx.tabs / ctx.handoff
                          the gr.Tabs, and a gr.State carrying expert names from ② Analyze to ③ Fuse
    ctx.check_image(path) an uploaded image path, checked to be an image inside the upload area
    ctx.remote_routes     {api_name: fn(raw input values) -> bool}: a GPU event whose request needs no
                          local model (every column remote) skips the GPU line (ui/admission.py)
    ctx.pending_zoo       ui.zoo_wait.PendingZoo when the app started before its demo zoo was built, else None
    ctx.examples          example prompts: list of {"text", "image" (path or None), "domain", "label"};
                          from the zoo's showcase.json when it has one (load_showcase), else examples/
"""

from __future__ import annotations

import json
import logging
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import gradio as gr
from gradio.utils import get_upload_folder

from graft_ui.arena.store import open_store
from graft_ui.chat.session import check_image_upload
from graft_ui.studio import Studio
from graft_ui.ui.common import GPU_EVENT

log = logging.getLogger(__name__)

EXAMPLES_DIR = Path(__file__).resolve().parents[2] / "examples"


def load_examples(root: Path = EXAMPLES_DIR) -> list[dict]:
    """examples/prompts.json: [{"text", "image" (relative to examples/) or null, "domain"}]."""
    path = root / "prompts.json"
    if not path.is_file():
        return []
    out = []
    for item in json.loads(path.read_text()):
        image = item.get("image")
        out.append({
            "text": item["text"],
            "image": str((root / image).resolve()) if image else None,
            "domain": item.get("domain"),
            "label": item.get("label") or item["text"][:40],
        })
    return out


SHOWCASE = "showcase.json"


def load_showcase(zoo_dir: str | Path) -> list[dict]:
    """`<zoo>/showcase.json`, written by the zoo build: held-out items an expert answered correctly.

    Format: [{"domain", "label", "text", "image" (relative to the zoo folder) or null, "answer",
    "sample_id", "correct_by": [expert names]}]. Returns [] when the file is absent; raises
    ValueError naming the file and the item when it is malformed.
    """
    path = Path(zoo_dir) / SHOWCASE
    if not path.is_file():
        return []
    try:
        items = json.loads(path.read_text())
    except json.JSONDecodeError as exc:
        raise ValueError(f"{path} is not valid JSON: {exc}") from None
    if not isinstance(items, list):
        raise ValueError(f"{path} must hold a JSON list of examples, not a {type(items).__name__}")
    out = []
    for i, item in enumerate(items):
        if not isinstance(item, dict) or not isinstance(item.get("text"), str) or not item["text"].strip():
            raise ValueError(f"{path}: example {i} needs a non-empty 'text'")
        image = item.get("image")
        image_path = (Path(zoo_dir) / image).resolve() if image else None
        if image_path is not None and not image_path.is_file():
            raise ValueError(f"{path}: example {i} names the image {image!r}, which does not exist")
        correct_by = [str(x) for x in item.get("correct_by") or []]
        label = item.get("label") or item["text"][:40]
        out.append({"text": item["text"], "image": str(image_path) if image_path else None,
                    "domain": item.get("domain"), "label": label, "answer": item.get("answer"),
                    "sample_id": item.get("sample_id"), "correct_by": correct_by})
    return out


def examples_for(manifest_path: str | Path | None) -> list[dict]:
    """The showcase of the zoo holding `manifest_path` when it has one, else examples/prompts.json."""
    if manifest_path:
        folder = Path(manifest_path)
        folder = folder.parent if folder.suffix in (".yaml", ".yml", ".json") else folder
        try:
            showcase = load_showcase(folder)
        except ValueError as exc:  # a broken showcase must not keep the app from starting
            log.warning("ignoring the zoo's showcase: %s", exc)
            showcase = []
        if showcase:
            return showcase
    return load_examples()


@dataclass
class AppContext:
    studio: Studio
    votes: str | None = None
    gpu: dict = field(default_factory=lambda: dict(GPU_EVENT))
    examples: list[dict] = field(default_factory=load_examples)
    upload_roots: list[str] = field(default_factory=lambda: [get_upload_folder(), str(EXAMPLES_DIR)])
    models_changed: Any = None  # gr.State, created in build_app
    admission: Any = None  # ui.admission.GpuAdmission, set by build_app (refusals for the Retry buttons)
    _refreshers: list[tuple] = field(default_factory=list)
    remote_routes: dict[str, Callable[[list], bool]] = field(default_factory=dict)
    zoo_manifest: str | None = None  # the demo zoo's manifest, for 'back to the zoo'
    tabs: Any = None  # the gr.Tabs (created in build_app): an output selects a tab with gr.Tabs(selected=id)
    handoff: Any = None  # gr.State: expert names ② Analyze's advisor sends to ③ Fuse (None without both tabs)
    pending_zoo: Any = None  # ui.zoo_wait.PendingZoo while the demo zoo builds in the background, else None
    _stops: dict[str, threading.Event] = field(default_factory=dict)
    limiter: Any = None  # graft_ui.arena.limits.RateLimiter: votes and new battles per client (set by make_context)
    pairing: str = "adaptive"  # how blind battles draw their pair (arena.pairing.PAIRINGS); the operator's choice
    _store: Any = None
    _lock: threading.Lock = field(default_factory=threading.Lock)

    @property
    def pool(self):
        return self.studio.pool

    # ---- cross-tab refresh -----------------------------------------------------------

    def on_models_changed(self, fn: Callable[..., Any], outputs: list, inputs: list | None = None) -> None:
        self._refreshers.append((fn, outputs, inputs))

    def bump(self) -> int:
        """The value to write into `models_changed` after changing models/variants."""
        return self.studio.version

    def wire_refreshers(self, app: gr.Blocks | None = None) -> None:
        """Run each refresh on every change, and on every page load when `app` is given: a reloaded
        page (or a second browser) shows the models and fused variants the server has now, not
        those it had when the UI was built."""
        for fn, outputs, inputs in self._refreshers:
            kw = dict(inputs=inputs, outputs=outputs, api_visibility="private", show_progress="hidden", queue=False)
            self.models_changed.change(fn, **kw)
            if app is not None:
                app.load(fn, **kw)

    # ---- stop events -----------------------------------------------------------------
    # One event per browser session *and tab* (scope "chat", "arena", "tune"): Chat's Stop never stops an
    # Arena battle. `arm` runs (outside the queue) when a request is sent, so a Stop pressed while
    # it still waits in the queue is seen when it starts; `finish` marks it done, so a Stop after
    # the answers are complete changes nothing.

    @staticmethod
    def _session(request: gr.Request | None, scope: str = "") -> str:
        return f"{getattr(request, 'session_hash', None) or 'default'}:{scope}"

    def arm(self, request: gr.Request | None, scope: str = "") -> threading.Event:
        """The stop event of the request being sent (queued or running) in `scope`: the pending one
        when the request started first (this runs beside it, outside the queue), else a fresh one."""
        key = self._session(request, scope)
        with self._lock:
            ev = self._stops.get(key)
            if ev is None or ev.is_set():
                ev = self._stops[key] = threading.Event()
            return ev

    def new_stop(self, request: gr.Request | None, scope: str = "") -> threading.Event:
        """The event armed for this request (set already if Stop was pressed while it was queued),
        or a fresh one when none is pending (an API call that skipped `arm`)."""
        with self._lock:
            ev = self._stops.get(self._session(request, scope))
            if ev is None:
                ev = self._stops[self._session(request, scope)] = threading.Event()
            return ev

    def finish(self, request: gr.Request | None, scope: str = "", ev: threading.Event | None = None) -> None:
        """The request in `scope` is over: a later Stop has nothing to stop."""
        with self._lock:
            key = self._session(request, scope)
            if ev is None or self._stops.get(key) is ev:
                self._stops.pop(key, None)

    def stop(self, request: gr.Request | None, scope: str = "") -> bool:
        """Stop the request sent (queued or running) in `scope`; False when there is none."""
        with self._lock:
            ev = self._stops.get(self._session(request, scope))
        if ev is not None:
            ev.set()
        return ev is not None

    # ---- uploads and votes -----------------------------------------------------------

    def check_image(self, path: str) -> str:
        return check_image_upload(path, self.upload_roots)

    def vote_store(self):
        with self._lock:
            if self._store is None:
                self._store = open_store(self.votes)
            return self._store
