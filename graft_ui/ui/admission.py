"""Queue admission: only model runs wait in line, and only they can be turned away.

Gradio's `queue(max_size=N)` counts every queued event of every concurrency group against one
cap, so a vote (a millisecond of SQLite) was refused with "Queue is full" while generations
filled the queue. Here gradio's cap is off (`max_size=None`) and `limit_gpu_queue` wraps the
queue's `push`: an event of the GPU group (`GPU_EVENT`) is refused when `max_waiting` GPU events
already wait, with a sentence saying so; every other event (votes, leaderboard, exports) is
always admitted. The vote endpoints also skip the queue entirely (`queue=False`).

Requests that only use remote columns (an OpenAI-compatible server answers them, chat/remote.py)
do not need the local GPU: a tab registers a `RemoteRoute` for its event (`ctx.remote_routes`),
and such a request is moved from the GPU line to the `REMOTE_EVENT` line at once, which has no
concurrency limit, so many voters stream side by side; it is never refused for capacity.

A refusal answers HTTP 503: the browser shows "This application is currently busy. Please try
again." (its fixed text); gradio_client raises QueueError. The refusal is remembered per browser
session (`GpuAdmission.take`), so that `wire_retry` can answer the event's failure with the reason in
words, put the refused prompt back in its box and show a Retry button (Chat and Arena).
"""

from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass
from typing import Any, Callable, Mapping, Sequence

import gradio as gr
from gradio import route_utils
from gradio.queueing import EventQueue

from graft_ui.ui.common import GPU_EVENT

log = logging.getLogger(__name__)


REMOTE_EVENT = "remote"
# api_name -> whether the request's raw input values need no local model (all columns remote)
RemoteRoute = Callable[[Sequence[Any]], bool]


def busy_message(waiting: int) -> str:
    return f"The server is busy: {waiting} requests are waiting. Try again in a moment."


def gpu_waiting(queue) -> int:
    """How many GPU-group events wait for the slot (not counting the one running)."""
    events = queue.event_queue_per_concurrency_id.get(GPU_EVENT["concurrency_id"])
    return len(events.queue) if events is not None else 0


REFUSAL_KEEP_S = 120  # a refusal not picked up by its session's failure handler by then is forgotten


@dataclass
class Refusal:
    waiting: int  # model runs that were waiting
    data: list  # the refused event's inputs, as sent
    at: float


class GpuAdmission:
    """The cap on waiting model runs, and the refusals it made, per browser session."""

    def __init__(self, max_waiting: int):
        self.max_waiting = max_waiting
        self._refused: dict[str, Refusal] = {}
        self._lock = threading.Lock()

    def refuse(self, session: str | None, waiting: int, data: Any) -> None:
        now = time.monotonic()
        with self._lock:
            for key in [k for k, r in self._refused.items() if now - r.at > REFUSAL_KEEP_S]:
                del self._refused[key]
            if session:
                self._refused[session] = Refusal(waiting, list(data or []), now)

    def take(self, request: gr.Request | None) -> Refusal | None:
        """The refusal this browser session got last (once), if it is recent."""
        session = getattr(request, "session_hash", None)
        with self._lock:
            r = self._refused.pop(session, None) if session else None
        return r if r is not None and time.monotonic() - r.at <= REFUSAL_KEEP_S else None


def _remote_only(route: RemoteRoute | None, data: Any) -> bool:
    if route is None or not isinstance(data, (list, tuple)):
        return False
    try:
        return bool(route(data))
    except Exception:  # noqa: BLE001 - a malformed request takes the ordinary GPU line
        log.debug("remote route failed; using the GPU line", exc_info=True)
        return False


def _move_to_remote_line(queue, event_id: str) -> None:
    """Move the just-queued event `event_id` from the GPU line to the remote line (no await in between,
    so the queue's worker cannot have taken it yet)."""
    gpu = queue.event_queue_per_concurrency_id.get(GPU_EVENT["concurrency_id"])
    event = next((e for e in (gpu.queue if gpu else []) if e._id == event_id), None)
    if event is None:
        return
    gpu.queue.remove(event)
    event.concurrency_id = REMOTE_EVENT
    if REMOTE_EVENT not in queue.event_queue_per_concurrency_id:
        queue.event_queue_per_concurrency_id[REMOTE_EVENT] = EventQueue(REMOTE_EVENT, None)
    queue.event_queue_per_concurrency_id[REMOTE_EVENT].queue.append(event)


def limit_gpu_queue(app: gr.Blocks, max_waiting: int,
                    routes: Mapping[str, RemoteRoute] | None = None) -> GpuAdmission:
    """Admit every event, except a GPU event when `max_waiting` of them already wait (see module doc);
    a GPU event whose `routes[api_name]` says it is remote-only goes to the remote line instead.
    Call after `app.queue(max_size=None, ...)`. Returns the admission (its cap can be changed later)."""
    queue = app._queue
    push = queue.push
    admission = GpuAdmission(max_waiting)
    routes = routes if routes is not None else {}

    async def admit(body, request, username):
        try:
            fn = route_utils.get_fn(app, None, body)
        except Exception:  # noqa: BLE001 - an unknown function: gradio's own push answers it
            return await push(body=body, request=request, username=username)
        if fn.concurrency_id == GPU_EVENT["concurrency_id"] and _remote_only(routes.get(fn.api_name), getattr(body, "data", None)):
            result = await push(body=body, request=request, username=username)
            if result[0]:
                _move_to_remote_line(queue, result[1])
            return result
        if fn.concurrency_id == GPU_EVENT["concurrency_id"]:
            waiting = gpu_waiting(queue)
            if waiting >= admission.max_waiting:
                log.warning("refused %s: %d model runs already waiting", fn.api_name or fn.name, waiting)
                admission.refuse(getattr(body, "session_hash", None), waiting, getattr(body, "data", None))
                return False, busy_message(waiting), "queue_full"
        return await push(body=body, request=request, username=username)

    queue.push = admit
    return admission


CLEAR_BOX_JS = "() => ({text: '', files: []})"  # empties a MultimodalTextbox in the browser, no round trip


def prompt_back(value: Any) -> dict:
    """A MultimodalTextbox value as it was sent ({"text", "files": [FileData dicts]}) -> a value to show again."""
    value = value if isinstance(value, dict) else {"text": str(value or "")}
    files = [f.get("path") if isinstance(f, dict) else f for f in value.get("files") or []]
    return {"text": str(value.get("text") or ""), "files": [f for f in files if isinstance(f, str) and f]}


def refused_status(r: Refusal) -> str:
    return (f"⚠ {busy_message(r.waiting)} Your prompt was not sent; it is back in the box. "
            "Press **↻ Retry** to send it again.")


def wire_retry(ctx, events: list, box: gr.MultimodalTextbox, status: gr.Markdown, retry: gr.Button) -> None:
    """After a model-run event of `events` is refused for capacity: the reason in `status`, the refused
    prompt (the event's first input) back in `box`, and the `retry` button shown; hidden again after a
    run goes through. Other failures are left to gradio's own message."""

    def on_failure(request: gr.Request):
        admission = getattr(ctx, "admission", None)
        r = admission.take(request) if admission is not None else None
        if r is None:
            return gr.update(), gr.update(), gr.update()
        return prompt_back(r.data[0] if r.data else None), refused_status(r), gr.update(visible=True)

    for ev in events:
        ev.failure(on_failure, None, [box, status, retry], api_visibility="private", queue=False,
                   show_progress="hidden")
        ev.success(lambda: gr.update(visible=False), None, retry, api_visibility="private", queue=False,
                   show_progress="hidden")
