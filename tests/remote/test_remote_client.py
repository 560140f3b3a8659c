"""chat/remote.py and chat/mixed.py against real servers: `transformers serve` on the ci zoo, and
broken_server.py for the misbehaviours. No mocks: every request goes over TCP."""

from __future__ import annotations

import base64
import io
import threading
import time

import pytest
from PIL import Image
from qwen_vl_utils import fetch_image

from graft_ui.chat import GenerationSettings, ModelPool, SideBySide
from graft_ui.chat.remote import RemoteError, RemoteStream, image_data_uri, openai_messages, request_params
from graft_ui.chat.settings import CHAT_MAX_PIXELS
from graft_ui.models.inputs import open_image
from graft_ui.models.manifest import RemoteModel

GREEDY = GenerationSettings(max_new_tokens=12)


@pytest.fixture(scope="module")
def pool(zoo_dir, tserve, chatty, broken):
    p = ModelPool(str(zoo_dir / "base"), device="cpu")
    p.register("math-full", str(zoo_dir / "experts/math-full"), "full")
    p.register("srv-base", "", "full", remote=RemoteModel(tserve, str(zoo_dir / "base")))
    p.register("srv-math", "", "full", remote=RemoteModel(tserve, str(zoo_dir / "experts/math-full")))
    p.register("srv-chatty", "", "full", remote=RemoteModel(tserve, chatty))
    for bad in ("malformed", "hang", "forbidden", "overloaded", "no-such-model"):
        p.register(f"bad-{bad}", "", "full", remote=RemoteModel(broken, bad))
    yield p
    p.close()


def run(pool, names, text="what is 2+3?", image=None, settings=GREEDY, stop=None):
    sess = SideBySide()
    sess.ask(text, image)
    last = None
    for last in sess.run(pool, names, settings, stop):
        pass
    return last, sess


def test_image_is_resized_like_the_local_path(tmp_path):
    big = tmp_path / "big.png"
    Image.new("RGB", (1500, 900), (10, 200, 30)).save(big)
    uri = image_data_uri(open_image(str(big)))
    sent = Image.open(io.BytesIO(base64.b64decode(uri.split("base64,", 1)[1])))
    local = fetch_image({"image": open_image(str(big)), "max_pixels": CHAT_MAX_PIXELS})
    assert sent.size == local.size and sent.size[0] * sent.size[1] <= CHAT_MAX_PIXELS
    assert sent.size[0] % 28 == 0 and sent.size[1] % 28 == 0
    msgs = openai_messages([{"role": "user", "content": [{"type": "image", "image": str(big)},
                                                         {"type": "text", "text": "colour?"}]}])
    assert msgs[0]["content"][0]["type"] == "image_url" and msgs[0]["content"][1] == {"type": "text", "text": "colour?"}


def test_settings_map_to_the_openai_request():
    assert request_params(GenerationSettings(max_new_tokens=7)) == {"max_tokens": 7, "temperature": 0.0}
    sampled = request_params(GenerationSettings(max_new_tokens=5, greedy=False, temperature=0.9, top_p=0.8, seed=3))
    assert sampled == {"max_tokens": 5, "temperature": 0.9, "top_p": 0.8, "seed": 3}


def test_remote_answers_match_the_local_ones(pool):
    """Greedy: the server and this process run the same checkpoint, so the answers are the same."""
    last, sess = run(pool, ["base", "srv-base", "math-full", "srv-math"])
    assert last.status == ["done"] * 4, last.errors
    assert last.texts[0] == last.texts[1] and last.texts[2] == last.texts[3]
    assert sess.turns[-1].answers["srv-math"] == last.texts[3]


def test_image_turn_on_the_server(pool, tmp_path):
    img = tmp_path / "red.png"
    Image.new("RGB", (300, 200), (220, 20, 20)).save(img)
    last, _ = run(pool, ["base", "srv-base"], text="what colour is this?", image=str(img))
    assert last.status == ["done", "done"], last.errors
    assert last.texts[0] == last.texts[1]


def test_stop_closes_the_stream_at_once(pool):
    stop = threading.Event()
    sess = SideBySide()
    sess.ask("tell me everything")
    t_stop = None
    for u in sess.run(pool, ["srv-chatty"], GenerationSettings(max_new_tokens=300), stop):
        if u.texts[0] and t_stop is None:
            t_stop = time.monotonic()
            stop.set()
    assert time.monotonic() - t_stop < 1.0
    assert u.status == ["stopped"] and len(u.texts[0]) < 300  # far from the 300 tokens it was going to send


@pytest.mark.parametrize("name, words", [
    ("bad-no-such-model", ["404", "does not serve", "no-such-model"]),
    ("bad-forbidden", ["401", "refused the API key"]),
    ("bad-overloaded", ["HTTP 503", "overloaded"]),
    ("bad-malformed", ["malformed stream"]),
])
def test_a_bad_server_fails_its_column_only(pool, name, words):
    last, sess = run(pool, ["srv-base", name])
    assert last.status == ["done", "error"]
    assert all(w in last.errors[1] for w in words), last.errors[1]
    assert name in sess.turns[-1].errors and name not in sess.turns[-1].answers


def test_unknown_model_on_transformers_serve(pool, tserve):
    pool.register("srv-missing", "", "full", remote=RemoteModel(tserve, "/no/such/checkpoint"))
    last, _ = run(pool, ["srv-missing", "base"])
    assert last.status == ["error", "done"] and "HTTP 500" in last.errors[0]


def test_a_request_the_server_rejects(pool):
    """transformers serve answers 422 to vLLM's ignore_eos: a 4xx from a real server."""
    last, _ = run(pool, ["srv-base"], settings=GenerationSettings(max_new_tokens=4, ignore_eos=True))
    assert last.status == ["error"] and "HTTP 422" in last.errors[0] and "rejected" in last.errors[0]


def test_timeout(broken):
    t0 = time.monotonic()
    with pytest.raises(RemoteError, match="within 1 s"):
        list(RemoteStream(RemoteModel(broken, "hang"), [{"role": "user", "content": "hi"}], GREEDY, timeout=1))
    assert time.monotonic() - t0 < 5


def test_server_down_retries_connect_only(pool, dead_endpoint):
    pool.register("srv-down", "", "full", remote=RemoteModel(dead_endpoint, "x"))
    t0 = time.monotonic()
    last, _ = run(pool, ["srv-down", "srv-base"])
    assert last.status == ["error", "done"]
    assert "cannot reach" in last.errors[0] and "tried 3 times" in last.errors[0]
    assert time.monotonic() - t0 < 10


def test_missing_api_key_variable(pool, tserve, monkeypatch):
    monkeypatch.delenv("GRAFT_TEST_NO_KEY", raising=False)
    pool.register("srv-keyed", "", "full", remote=RemoteModel(tserve, "x", api_key_env="GRAFT_TEST_NO_KEY"))
    last, _ = run(pool, ["srv-keyed"])
    assert last.status == ["error"] and "GRAFT_TEST_NO_KEY is not set" in last.errors[0]


def test_server_killed_mid_stream(pool, doomed_tserve, chatty):
    endpoint, proc = doomed_tserve
    pool.register("srv-doomed", "", "full", remote=RemoteModel(endpoint, chatty))
    sess = SideBySide()
    sess.ask("tell me everything")
    killed = False
    for u in sess.run(pool, ["srv-doomed", "srv-base"], GenerationSettings(max_new_tokens=300)):
        if u.texts[0] and not killed:
            proc.kill()
            killed = True
    assert killed
    assert u.status == ["error", "done"], u.errors
    assert "broke off" in u.errors[0] or "cannot reach" in u.errors[0], u.errors[0]
