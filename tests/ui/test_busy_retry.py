"""A generation refused for capacity says so in words, keeps the refused prompt and
offers a Retry button (as Chat and Arena wire it with `wire_retry`), in a real browser; the retry then
runs. A small Blocks with the app's admission stands in for the model runs (no model is loaded)."""

from __future__ import annotations

import socket
from types import SimpleNamespace

import gradio as gr
import pytest

from _browser import MARKS, app_page

pytestmark = MARKS


def test_a_refusal_is_remembered_once_with_its_prompt():
    from graft_ui.ui.admission import GpuAdmission, prompt_back, refused_status

    a = GpuAdmission(2)
    a.refuse("s1", 2, [{"text": "hi", "files": [{"path": "/tmp/gradio/x/a.png", "meta": {}}]}, None])
    r = a.take(SimpleNamespace(session_hash="s1"))
    assert r is not None and a.take(SimpleNamespace(session_hash="s1")) is None  # taken once
    assert prompt_back(r.data[0]) == {"text": "hi", "files": ["/tmp/gradio/x/a.png"]}
    assert "2 requests are waiting" in refused_status(r) and "Retry" in refused_status(r)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.parametrize("clears_at_once", [False, True], ids=["chat-like", "arena-like"])
def test_a_refused_prompt_stays_and_retry_sends_it(clears_at_once):
    from playwright.sync_api import expect

    from graft_ui.ui.admission import CLEAR_BOX_JS, limit_gpu_queue, wire_retry
    from graft_ui.ui.common import GPU_EVENT

    ctx = SimpleNamespace(admission=None)
    with gr.Blocks() as app:
        box = gr.MultimodalTextbox(elem_id="t-input", file_types=["image"], submit_btn="Send")
        out = gr.Markdown(elem_id="t-out")
        retry = gr.Button("↻ Retry", visible=False, elem_id="t-retry")
        status = gr.Markdown(elem_id="t-status")

        def answer(value):
            return f"answered: {value['text']}", "done"

        sent = box.submit(answer, box, [out, status], **GPU_EVENT)
        retried = retry.click(answer, box, [out, status], **GPU_EVENT)
        if clears_at_once:  # as the Arena does: the box empties as soon as a prompt is sent
            for trigger in (box.submit, retry.click):
                trigger(None, None, box, js=CLEAR_BOX_JS, queue=False)
        wire_retry(ctx, [sent, retried], box, status, retry)
    app.queue(max_size=None)
    ctx.admission = limit_gpu_queue(app, 0)  # every model run refused, as when 16 already wait
    port = _free_port()
    app.launch(server_port=port, prevent_thread_lock=True, quiet=True)
    expect.set_options(timeout=30_000)
    try:
        with app_page(f"http://127.0.0.1:{port}/", ready="#t-input") as page:
            text = page.locator("#t-input textarea").first
            text.fill("What is 2 + 3?")
            text.press("Enter")
            expect(page.locator("#t-status")).to_contain_text("The server is busy")
            expect(page.locator("#t-status")).to_contain_text("Retry")
            expect(text).to_have_value("What is 2 + 3?")
            expect(page.locator("#t-retry")).to_be_visible()
            ctx.admission.max_waiting = 16
            page.locator("#t-retry").click()
            expect(page.locator("#t-out")).to_contain_text("answered: What is 2 + 3?")
            expect(page.locator("#t-retry")).to_be_hidden()
            if clears_at_once:  # the browser-side clear did run; the restore came after it
                expect(text).to_have_value("")
    finally:
        app.close()
