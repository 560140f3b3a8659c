"""graft_ui/ui/admission.py: only model runs (the GPU group) are capped; everything else is admitted."""

from __future__ import annotations

import asyncio
from types import SimpleNamespace

import gradio as gr

from graft_ui.ui.admission import busy_message, limit_gpu_queue
from graft_ui.ui.common import GPU_EVENT


def test_a_full_gpu_queue_refuses_model_runs_in_words_and_admits_the_rest():
    with gr.Blocks() as app:
        box = gr.Textbox()
        gen, light = gr.Button(), gr.Button()
        gen.click(lambda x: x, box, box, api_name="gen", **GPU_EVENT)
        light.click(lambda x: x, box, box, api_name="light", concurrency_id="votes")
    app.queue(max_size=None)
    queue = app._queue
    admitted = []

    async def fake_push(body, request, username):
        admitted.append(body.fn_index)
        return True, "event", "success"

    queue.push = fake_push
    limit_gpu_queue(app, 2)
    index = {fn.api_name: i for i, fn in app.fns.items()}
    for fn in app.fns.values():
        queue.create_event_queue_for_fn(fn)
    queue.event_queue_per_concurrency_id["gpu"].queue.extend([object(), object()])  # two runs waiting

    def push(name):
        return asyncio.run(queue.push(SimpleNamespace(fn_index=index[name], session_hash=None), None, None))

    assert push("gen") == (False, busy_message(2), "queue_full")
    assert busy_message(2) == "The server is busy: 2 requests are waiting. Try again in a moment."
    for _ in range(50):  # never refused, however long the GPU line
        assert push("light")[0] is True
    queue.event_queue_per_concurrency_id["gpu"].queue.pop()
    assert push("gen")[0] is True
    assert admitted.count(index["light"]) == 50 and admitted.count(index["gen"]) == 1


def test_uploads_expire_and_are_deleted_on_exit():
    from graft_ui.ui.app import UPLOAD_CACHE, build_app

    # build_app passes it to gr.Blocks(delete_cache=...): hourly sweep, everything at shutdown
    assert UPLOAD_CACHE == (3600, 3600)
    import inspect

    assert "delete_cache=UPLOAD_CACHE" in inspect.getsource(build_app)
