"""gradio_client helpers for the arena endpoints (one Client = one browser-like session)."""

from __future__ import annotations

import random
import time
from pathlib import Path

ARTIFACTS = Path(__file__).resolve().parents[2] / "test-artifacts"  # gitignored: screenshots, numbers
BLIND, NAMED = "Blind battle", "Named side by side"
POOL = ["base", "math-lora", "code-lora", "finance-lora", "medical-lora"]


def client(url: str):
    from gradio_client import Client

    # ssl_verify=False: the app is plain http on 127.0.0.1, and with verification on, httpx builds an
    # SSL context (loading the CA bundle) for every request: ~0.1 s of CPU per call, 10x the call itself
    return Client(url, verbose=False, ssl_verify=False)


def call_all(c, *args, api_name: str, retries: int = 200, stats: dict | None = None) -> list:
    """Every output frame of one call (a generator yields several), retried while the server sheds
    load with "queue full" (HTTP 503). A retried send just asks again; a retried vote is safe because
    votes are idempotent per turn."""
    from gradio_client.utils import QueueError

    delay = 0.2  # the queue frees a slot per finished generation: hammering it only burns CPU
    for _ in range(retries):
        try:
            job = c.submit(*args, api_name=api_name)
            job.result()
            return list(job.outputs())
        except QueueError:
            if stats is not None:
                stats["queue_full"] = stats.get("queue_full", 0) + 1
            time.sleep(delay * (1 + random.random()))
            delay = min(delay * 1.5, 2.0)
    raise AssertionError(f"{api_name}: queue still full after {retries} tries")


def call(c, *args, api_name: str, retries: int = 200, stats: dict | None = None):
    """The final outputs of one call (see call_all)."""
    return call_all(c, *args, api_name=api_name, retries=retries, stats=stats)[-1]


def send_all(c, text: str, *, mode: str = BLIND, pool=POOL, a: str | None = None, b: str | None = None,
             domain: str | None = None, max_new_tokens: int = 4, stats: dict | None = None) -> list:
    """One prompt to both sides; every output frame of /arena_send (the first one sets the labels)."""
    return call_all(c, {"text": text, "files": []}, mode, list(pool), a, b, domain, max_new_tokens, 0.7, True,
                    api_name="/arena_send", stats=stats)


def send(c, text: str, **kwargs):
    """The final outputs of /arena_send."""
    return send_all(c, text, **kwargs)[-1]


def vote(c, choice: str, note: str = "", expertise: str | None = None, stats: dict | None = None,
         retries: int = 1) -> dict:
    """Vote on the session's current turn; returns the receipt (the last output). Not retried by
    default: a vote is never refused for capacity (it skips the queue), so a refusal is a failure."""
    out = call(c, choice, note, expertise, api_name="/arena_vote", stats=stats, retries=retries)
    return out[-1]


def _label(header: str) -> str:
    return header.removeprefix("### ").strip()


def send_outputs(frames: list) -> dict:
    """Named view of /arena_send's last frame (the client drops the State and the Buttons)."""
    head_a, head_b, bot_a, bot_b, reveal, status, receipt = frames[-1]
    return {"labels": (_label(head_a), _label(head_b)), "bot_a": bot_a, "bot_b": bot_b, "reveal": reveal,
            "status": status, "receipt": receipt, "frames": frames}


def vote_outputs(out) -> dict:
    head_a, head_b, bot_a, bot_b, reveal, status, receipt = out
    return {"labels": (_label(head_a), _label(head_b)), "bot_a": bot_a, "bot_b": bot_b, "reveal": reveal,
            "status": status, "receipt": receipt}
