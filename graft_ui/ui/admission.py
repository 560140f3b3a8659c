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
again." (its fixed text) and the prompt can be sent again; gradio_client raises QueueError.
"""

from __future__ import annotations

import logging
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


def limit_gpu_queue(app: gr.Blocks, max_waiting: int, routes: Mapping[str, RemoteRoute] | None = None) -> None:
    """Admit every event, except a GPU event when `max_waiting` of them already wait (see module doc);
    a GPU event whose `routes[api_name]` says it is remote-only goes to the remote line instead.
    Call after `app.queue(max_size=None, ...)`."""
    queue = app._queue
    push = queue.push
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
            if waiting >= max_waiting:
                log.warning("refused %s: %d model runs already waiting", fn.api_name or fn.name, waiting)
                return False, busy_message(waiting), "queue_full"
        return await push(body=body, request=request, username=username)

    queue.push = admit
