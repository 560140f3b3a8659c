"""Chat columns answered by an OpenAI-compatible server (vLLM, `transformers serve`, ...).

`RemoteStream(remote, conversation, settings)` yields the answer's text so far, using the
official `openai` client's streaming chat completions (chat/mixed.py runs one per remote column):

- images go as `image_url` data URIs (PNG) after the local path's resizing (`open_image`, then
  qwen_vl_utils' `fetch_image` with the chat's `max_pixels` cap), so both backends see the same pixels;
- the same `GenerationSettings`: max_tokens, temperature (0 when greedy), top_p, seed;
  `ignore_eos` adds vLLM's `ignore_eos`/`min_tokens` (servers without them answer 4xx);
- `timeout` seconds per request (connect, and between two chunks of the stream);
- retries only when the connection cannot be made (`CONNECT_RETRIES`), never once the server
  has answered; `stop` closes the HTTP stream at once (`RemoteStream.close`, from any thread).

Every failure is raised as `RemoteError` with a one-line message for the column.
"""

from __future__ import annotations

import base64
import io
import logging
import os
import threading
import time
from typing import Iterator, Sequence

import httpx2  # the openai client's HTTP library (its exceptions and Timeout)
import openai
from qwen_vl_utils import fetch_image

from graft_ui.chat.settings import CHAT_MAX_PIXELS, GenerationSettings
from graft_ui.models.inputs import resolve_messages
from graft_ui.models.manifest import RemoteModel

log = logging.getLogger(__name__)

DEFAULT_TIMEOUT_S = float(os.environ.get("GRAFT_REMOTE_TIMEOUT", 60))
CONNECT_TIMEOUT_S = 5.0
CONNECT_RETRIES = 2  # extra tries when the connection is refused or cannot be made
RETRY_BACKOFF_S = 0.5
NO_KEY = "EMPTY"  # servers without authentication (vLLM's default) accept any key


class RemoteError(RuntimeError):
    """A remote column failed; the message is written for the user."""


def image_data_uri(image, max_pixels: int = CHAT_MAX_PIXELS) -> str:
    """A PNG data URI of `image` (PIL or local path) resized exactly as the local chat path does."""
    resized = fetch_image({"image": image, "max_pixels": max_pixels})
    buf = io.BytesIO()
    resized.save(buf, format="PNG")
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode("ascii")


def openai_messages(conversation: Sequence[dict], max_pixels: int = CHAT_MAX_PIXELS) -> list[dict]:
    """Model-format messages (chat/session.py) as OpenAI chat messages; images as data URIs."""
    out = []
    for msg in resolve_messages(conversation):
        parts = []
        for item in msg["content"]:
            if item["type"] == "image":
                parts.append({"type": "image_url", "image_url": {"url": image_data_uri(item["image"], max_pixels)}})
            else:
                parts.append({"type": "text", "text": item.get("text") or ""})
        if msg["role"] == "assistant" or all(p["type"] == "text" for p in parts):
            out.append({"role": msg["role"], "content": "".join(p["text"] for p in parts)})
        else:
            out.append({"role": msg["role"], "content": parts})
    return out


def request_params(settings: GenerationSettings) -> dict:
    """`chat.completions.create` keyword arguments for the shared generation settings."""
    kw: dict = {"max_tokens": settings.max_new_tokens}
    if settings.greedy:
        kw["temperature"] = 0.0
    else:
        kw.update(temperature=settings.temperature, top_p=settings.top_p)
    if settings.seed is not None:
        kw["seed"] = int(settings.seed)
    if settings.ignore_eos:
        kw["extra_body"] = {"ignore_eos": True, "min_tokens": settings.max_new_tokens}
    return kw


_clients: dict[tuple, openai.OpenAI] = {}
_clients_lock = threading.Lock()


def client_for(remote: RemoteModel, timeout: float = DEFAULT_TIMEOUT_S) -> openai.OpenAI:
    """One `openai.OpenAI` per (endpoint, key, timeout), shared by threads (it is thread-safe)."""
    key = os.environ.get(remote.api_key_env, "") if remote.api_key_env else ""
    if remote.api_key_env and not key:
        raise RemoteError(f"the API key variable {remote.api_key_env} is not set for {remote.endpoint}")
    ident = (remote.endpoint, key, float(timeout))
    with _clients_lock:
        if ident not in _clients:
            _clients[ident] = openai.OpenAI(
                base_url=remote.endpoint, api_key=key or NO_KEY, max_retries=0,
                timeout=httpx2.Timeout(timeout, connect=min(CONNECT_TIMEOUT_S, timeout)),
            )
        return _clients[ident]


def _is_connect_error(exc: BaseException) -> bool:
    return (isinstance(exc, openai.APIConnectionError) and not isinstance(exc, openai.APITimeoutError)
            and isinstance(exc.__cause__, (httpx2.ConnectError, httpx2.ConnectTimeout)))


def describe(exc: BaseException, remote: RemoteModel, timeout: float) -> str:
    """A one-line message for a failed remote request."""
    where = remote.endpoint
    if isinstance(exc, RemoteError):
        return str(exc)
    if isinstance(exc, openai.APIStatusError):
        detail = _detail(exc)
        if exc.status_code == 404:
            return (f"{where} answered 404 for model {remote.model!r}: the server does not serve that name "
                    f"(check `model:` against GET {where}/models){detail}")
        if exc.status_code in (401, 403):
            return f"{where} refused the API key (HTTP {exc.status_code}); set {remote.api_key_env or 'api_key_env'}{detail}"
        kind = "rejected the request" if exc.status_code < 500 else "failed"
        return f"{where} {kind} (HTTP {exc.status_code}) for model {remote.model!r}{detail}"
    if isinstance(exc, (openai.APITimeoutError, httpx2.TimeoutException)):
        return f"no answer from {where} within {timeout:g} s (timeout) for model {remote.model!r}"
    if _is_connect_error(exc):
        return f"cannot reach the server {where} (tried {CONNECT_RETRIES + 1} times): is it running?"
    if isinstance(exc, (openai.APIConnectionError, httpx2.TransportError)):
        return f"the connection to {where} broke off mid-answer ({type(exc.__cause__ or exc).__name__}): the server may have stopped"
    if isinstance(exc, (ValueError, KeyError, TypeError, AttributeError, openai.APIResponseValidationError)):
        return f"{where} sent a malformed stream for model {remote.model!r} ({type(exc).__name__}: {str(exc)[:120]})"
    return f"{where}: {type(exc).__name__}: {str(exc)[:200]}"


def _detail(exc: openai.APIStatusError) -> str:
    body, msg = exc.body, None
    if isinstance(body, dict):
        err = body.get("error")
        msg = body.get("message") or body.get("detail") or (err.get("message") if isinstance(err, dict) else err)
    if not msg and exc.response is not None:
        try:
            msg = exc.response.text
        except httpx2.ResponseNotRead:
            msg = ""
    msg = " ".join(str(msg or "").split())[:160]
    return f": {msg}" if msg else ""


class RemoteStream:
    """One streaming request; iterate for the text so far; `close()` from any thread ends it at once."""

    def __init__(self, remote: RemoteModel, conversation: Sequence[dict], settings: GenerationSettings,
                 timeout: float = DEFAULT_TIMEOUT_S):
        self.remote, self.timeout = remote, float(timeout)
        self.messages = openai_messages(conversation)
        self.params = request_params(settings)
        self.closed = threading.Event()
        self._stream = None
        self._lock = threading.Lock()

    def _open(self):
        client = client_for(self.remote, self.timeout)
        for attempt in range(CONNECT_RETRIES + 1):
            try:
                return client.chat.completions.create(model=self.remote.model, messages=self.messages, stream=True,
                                                      **self.params)
            except openai.APIConnectionError as exc:
                if not _is_connect_error(exc) or attempt == CONNECT_RETRIES or self.closed.is_set():
                    raise
                log.info("remote %s: cannot connect (%s), retry %d", self.remote.endpoint, exc.__cause__, attempt + 1)
                time.sleep(RETRY_BACKOFF_S * (attempt + 1))

    def __iter__(self) -> Iterator[str]:
        text = ""
        try:
            stream = self._open()
            with self._lock:
                self._stream = stream
                if self.closed.is_set():
                    stream.close()
                    return
            for chunk in stream:
                if self.closed.is_set():
                    return
                if chunk.choices is None:
                    raise ValueError(f"a chunk without 'choices': {str(chunk)[:80]}")
                for choice in chunk.choices:
                    piece = choice.delta.content if choice.delta is not None else None
                    if piece:
                        text += piece
                        yield text
        except Exception as exc:
            if self.closed.is_set():
                return  # closed by Stop: the read that was waiting fails, that is expected
            msg = describe(exc, self.remote, self.timeout)
            log.warning("remote %s model %s: %s", self.remote.endpoint, self.remote.model, msg)
            raise RemoteError(msg) from None
        finally:
            self.close()

    def close(self) -> None:
        self.closed.set()
        with self._lock:
            if self._stream is not None:
                try:
                    self._stream.close()
                except Exception:  # noqa: BLE001 - closing a broken connection may fail; it is closed either way
                    pass
