"""Queue admission: only model runs wait in line, and only they can be turned away.

Gradio's `queue(max_size=N)` counts every queued event of every concurrency group against one
cap, so a vote (a millisecond of SQLite) was refused with "Queue is full" while generations
filled the queue. Here gradio's cap is off (`max_size=None`) and `limit_gpu_queue` wraps the
queue's `push`: an event of the GPU group (`GPU_EVENT`) is refused when `max_waiting` GPU events
already wait, with a sentence saying so; every other event (votes, leaderboard, exports) is
always admitted. The vote endpoints also skip the queue entirely (`queue=False`).

A refusal answers HTTP 503: the browser shows "This application is currently busy. Please try
again." (its fixed text) and the prompt can be sent again; gradio_client raises QueueError.
"""

from __future__ import annotations

import logging

import gradio as gr
from gradio import route_utils

from graft_ui.ui.common import GPU_EVENT

log = logging.getLogger(__name__)


def busy_message(waiting: int) -> str:
    return f"The server is busy: {waiting} requests are waiting. Try again in a moment."


def gpu_waiting(queue) -> int:
    """How many GPU-group events wait for the slot (not counting the one running)."""
    events = queue.event_queue_per_concurrency_id.get(GPU_EVENT["concurrency_id"])
    return len(events.queue) if events is not None else 0


def limit_gpu_queue(app: gr.Blocks, max_waiting: int) -> None:
    """Admit every event, except a GPU event when `max_waiting` of them already wait (see module doc).
    Call after `app.queue(max_size=None, ...)`."""
    queue = app._queue
    push = queue.push

    async def admit(body, request, username):
        try:
            fn = route_utils.get_fn(app, None, body)
        except Exception:  # noqa: BLE001 - an unknown function: gradio's own push answers it
            return await push(body=body, request=request, username=username)
        if fn.concurrency_id == GPU_EVENT["concurrency_id"]:
            waiting = gpu_waiting(queue)
            if waiting >= max_waiting:
                log.warning("refused %s: %d model runs already waiting", fn.api_name or fn.name, waiting)
                return False, busy_message(waiting), "queue_full"
        return await push(body=body, request=request, username=username)

    queue.push = admit
