"""Local and remote chat columns streaming together.

`stream_mixed` answers the remote columns (chat/remote.py), each in its own thread, while the
local columns run through the pool's own batched stream in another thread; it merges them into
one `StreamUpdate` as text arrives. A failing column gets its message and the others carry on;
`stop` ends the local rows at the next token and closes every remote HTTP stream at once.
Remote columns never touch the local model lock, so requests that only use remote columns run
side by side.
"""

from __future__ import annotations

import logging
import queue
import threading
from typing import Callable, Iterator, Mapping, Sequence

from graft_ui.chat.generation import StreamUpdate, _message
from graft_ui.chat.remote import DEFAULT_TIMEOUT_S, RemoteError, RemoteStream
from graft_ui.chat.settings import GenerationSettings
from graft_ui.models.manifest import RemoteModel

log = logging.getLogger(__name__)

POLL_S = 0.05
LocalStream = Callable[[Sequence[str], Sequence[Sequence[dict]], GenerationSettings, threading.Event], Iterator[StreamUpdate]]


def stream_mixed(
    local_stream: LocalStream,
    names: Sequence[str],
    conversations: Sequence[Sequence[dict]],
    remotes: Mapping[int, RemoteModel],
    settings: GenerationSettings,
    stop: threading.Event,
    timeout: float = DEFAULT_TIMEOUT_S,
) -> Iterator[StreamUpdate]:
    """Answer conversation i with names[i]: remotely when i is in `remotes`, else with `local_stream`."""
    n = len(names)
    update = StreamUpdate(list(names), [""] * n, ["waiting"] * n)
    yield update
    events: queue.Queue = queue.Queue()
    streams: dict[int, RemoteStream] = {}
    streams_lock = threading.Lock()
    local = [i for i in range(n) if i not in remotes]

    def run_remote(i: int) -> None:
        try:
            rs = RemoteStream(remotes[i], conversations[i], settings, timeout)
            with streams_lock:
                streams[i] = rs
            if stop.is_set():
                rs.close()
            for text in rs:
                events.put(("text", i, text))
                if stop.is_set():
                    rs.close()
                    break
            events.put(("end", i, None))
        except RemoteError as exc:
            events.put(("error", i, str(exc)))
        except Exception as exc:  # e.g. an unreadable image: this column only
            log.warning("remote column %s failed: %s", names[i], exc)
            events.put(("error", i, _message(exc)))

    def run_local() -> None:
        try:
            for u in local_stream([names[i] for i in local], [conversations[i] for i in local], settings, stop):
                events.put(("local", None, (list(u.texts), list(u.status), list(u.errors))))
        except Exception as exc:  # the local stream reports per-column errors itself; this is a bug or a bad request
            log.exception("local columns failed")
            events.put(("local", None, ([""] * len(local), ["error"] * len(local), [_message(exc)] * len(local))))
        finally:
            events.put(("local_end", None, None))

    threads = [threading.Thread(target=run_remote, args=(i,), name=f"graft-remote-{i}", daemon=True) for i in remotes]
    if local:
        threads.append(threading.Thread(target=run_local, name="graft-local", daemon=True))
    pending = set(remotes) | ({"local"} if local else set())
    for t in threads:
        t.start()
    completed = closed = False
    try:
        while pending:
            if stop.is_set() and not closed:  # Stop: close every HTTP stream now, not at its next chunk
                _close_all(streams, streams_lock)
                closed = True
            try:
                kind, i, payload = events.get(timeout=POLL_S)
            except queue.Empty:
                continue
            if kind == "text":
                update.texts[i], update.status[i] = payload, "streaming"
            elif kind == "end":
                update.status[i] = "stopped" if stop.is_set() else "done"
                pending.discard(i)
            elif kind == "error":
                update.status[i], update.errors[i] = "error", payload
                pending.discard(i)
            elif kind == "local":
                for j, text, status, err in zip(local, *payload):
                    update.texts[j], update.status[j], update.errors[j] = text, status, err
            else:
                pending.discard("local")
            yield update
        completed = True
    finally:
        if not completed:  # the consumer went away (UI cancel): end everything now
            stop.set()
            _close_all(streams, streams_lock)
    for j, s in enumerate(update.status):
        if s in ("waiting", "loading", "streaming"):
            update.status[j] = "stopped"
    yield update


def _close_all(streams: dict, lock: threading.Lock) -> None:
    with lock:
        for rs in streams.values():
            rs.close()
