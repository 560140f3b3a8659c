"""Chat and Arena with remote columns, through gradio_client against a launched app whose manifest
mixes local models with models on a real `transformers serve` (and a broken server)."""

from __future__ import annotations

import threading
import time

import pytest
import yaml
from PIL import Image

from graft_ui.models.manifest import RemoteModel
from tests.ui.conftest import free_port

N_BOTS = 6
BLIND, NAMED = "Blind battle", "Named side by side"


@pytest.fixture(scope="module")
def app(zoo_dir, tserve, chatty, broken, tmp_path_factory):
    """(url, ctx) of Graft Studio on a mixed manifest: local base + math-lora, remote srv-*."""
    from graft_ui.ui.app import build_app, launch_kwargs, make_context

    folder = tmp_path_factory.mktemp("mixed")
    manifest = {
        "name": "mixed",
        "base": {"name": "base", "path": str(zoo_dir / "base")},
        "experts": [
            {"name": "math-lora", "path": str(zoo_dir / "experts/math-lora"), "kind": "lora", "domain": "math"},
            {"name": "srv-base", "endpoint": tserve, "model": str(zoo_dir / "base")},
            {"name": "srv-math", "endpoint": tserve, "model": str(zoo_dir / "experts/math-full"), "domain": "math"},
            {"name": "srv-chatty", "endpoint": tserve, "model": chatty},
            {"name": "srv-bad", "endpoint": broken, "model": "overloaded"},
        ],
    }
    path = folder / "manifest.yaml"
    path.write_text(yaml.safe_dump(manifest))
    ctx = make_context(str(path), device="cpu", work_dir=folder / "work", votes=str(folder / "votes.sqlite"))
    ui = build_app(ctx)
    kw = launch_kwargs(port=free_port(), quiet=True)
    ui.launch(prevent_thread_lock=True, **kw)
    yield f"http://127.0.0.1:{kw['server_port']}/", ctx
    ui.close()
    ctx.studio.close()


def client(url):
    from gradio_client import Client

    return Client(url, verbose=False, ssl_verify=False, httpx_kwargs={"timeout": 120})


def chat(c, text, columns, image=None, max_new=12):
    from gradio_client import handle_file

    files = [handle_file(str(image))] if image else []
    job = c.submit({"text": text, "files": files}, list(columns), max_new, 0.7, True, api_name="/chat")
    frames = list(job)
    return frames, job.result()


def answer(bot) -> str:
    assert bot and bot[-1]["role"] == "assistant", bot
    return bot[-1]["content"][0]["text"]


def test_chat_mixes_local_and_remote_columns(app):
    c = client(app[0])
    _, final = chat(c, "what is 2+3?", ["base", "math-lora", "srv-base", "srv-math"])
    assert final[N_BOTS].startswith("4/4 answered"), final[N_BOTS]
    texts = [answer(final[j]) for j in range(4)]
    assert all(t.strip() and not t.startswith("⚠") for t in texts), texts
    assert texts[0] == texts[2]  # the same checkpoint, greedy: the server answers as this process does


def test_chat_image_turn_on_the_server(app, tmp_path):
    img = tmp_path / "shapes.png"
    Image.new("RGB", (640, 480), (30, 60, 200)).save(img)
    c = client(app[0])
    _, final = chat(c, "what colour is this?", ["base", "srv-base"], image=img)
    assert final[N_BOTS].startswith("2/2 answered"), final[N_BOTS]
    assert final[1][0]["content"][0]["type"] == "file"  # the user turn shows the image
    assert answer(final[0]) == answer(final[1])


def test_chat_failing_server_fails_its_column_only(app):
    c = client(app[0])
    _, final = chat(c, "hello", ["srv-bad", "srv-base", "base"])
    assert "HTTP 503" in answer(final[0]) and answer(final[0]).startswith("⚠")
    assert not answer(final[1]).startswith("⚠") and not answer(final[2]).startswith("⚠")
    assert "2/3 answered" in final[N_BOTS] and "1 failed" in final[N_BOTS]
    _, again = chat(c, "and now?", ["srv-base"])  # the app keeps serving
    assert again[N_BOTS].startswith("1/1 answered")


def test_chat_server_killed_mid_stream(app, doomed_tserve, chatty):
    endpoint, proc = doomed_tserve
    app[1].studio.pool.register("srv-doomed", "", "full", remote=RemoteModel(endpoint, chatty))
    c = client(app[0])
    job = c.submit({"text": "tell me everything", "files": []}, ["srv-doomed", "base"], 300, 0.7, True,
                   api_name="/chat")
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:  # wait for the doomed column's first words, then kill its server
        frames = job.outputs()
        if frames and frames[-1][0] and frames[-1][0][-1]["role"] == "assistant" \
                and answer(frames[-1][0]) not in ("*waiting…*", "*loading model…*"):
            break
        time.sleep(0.05)
    proc.kill()
    final = job.result()
    assert answer(final[0]).startswith("⚠") and ("broke off" in answer(final[0]) or "cannot reach" in answer(final[0]))
    assert not answer(final[1]).startswith("⚠")


def test_remote_only_chats_stream_side_by_side(app):
    """Two sessions asking only remote columns run at once: the second starts streaming before the
    first ends (on the one GPU line it would wait for it)."""
    url = app[0]
    spans = {}

    def run(key):
        c = client(url)
        job = c.submit({"text": "tell me everything", "files": []}, ["srv-chatty"], 300, 0.7, True, api_name="/chat")
        first = None
        for _ in job:
            first = first or time.monotonic()
        spans[key] = (first, time.monotonic(), job.result()[N_BOTS])

    threads = [threading.Thread(target=run, args=(k,)) for k in "ab"]
    for t in threads:
        t.start()
    for t in threads:
        t.join(180)
    (a0, a1, sa), (b0, b1, sb) = spans["a"], spans["b"]
    assert sa.startswith("1/1 answered") and sb.startswith("1/1 answered")
    assert a0 < b1 and b0 < a1, spans  # each started before the other ended


def _arena(c, text, mode, pool=(), a=None, b=None):
    job = c.submit({"text": text, "files": []}, mode, list(pool), a, b, None, 8, 0.7, True, api_name="/arena_send")
    job.result()
    return list(job.outputs())[-1]


def test_arena_blind_battle_between_remote_models(app):
    url, ctx = app
    store = ctx.vote_store()
    before = store.count()
    c = client(url)
    head_a, head_b, bot_a, bot_b, reveal, status, _ = _arena(c, "what is 2+3?", BLIND, ["srv-base", "srv-math"])
    assert status.startswith("answered"), status
    assert answer(bot_a).strip() and answer(bot_b).strip()
    receipt = c.predict("a", "", None, api_name="/arena_vote")[-1]
    assert {receipt["variant_a"], receipt["variant_b"]} == {"srv-base", "srv-math"}
    assert store.count() == before + 1


def test_arena_failed_turn_writes_no_vote(app):
    from gradio_client.exceptions import AppError

    url, ctx = app
    store = ctx.vote_store()
    before = store.count()
    c = client(url)
    out = _arena(c, "hello", NAMED, a="srv-bad", b="srv-base")
    bot_a, status = out[2], out[5]
    assert "HTTP 503" in answer(bot_a) and "could not answer" in status
    with pytest.raises(AppError, match="cannot be voted"):
        c.predict("b", "", None, api_name="/arena_vote")
    assert store.count() == before
