"""Small helpers shared by the tabs: error translation, GPU-queue settings, tables."""

from __future__ import annotations

import errno
import functools
import inspect
import logging
from typing import Any, Callable, Iterable, Sequence

import gradio as gr
import pandas as pd

log = logging.getLogger("graft_ui.ui")

# Library errors name the bad value: show them as they are. Anything else is a bug: say so briefly.
USER_ERRORS = (ValueError, FileNotFoundError, FileExistsError, KeyError, PermissionError)

# Every event that runs a model (analysis, fusion, generation) shares this concurrency
# group, so two users cannot run the GPU out of memory at once.
GPU_EVENT = {"concurrency_id": "gpu", "concurrency_limit": 1}


def message_of(exc: BaseException) -> str:
    if isinstance(exc, KeyError) and exc.args:
        return str(exc.args[0])
    if isinstance(exc, USER_ERRORS):
        return str(exc)
    if isinstance(exc, OSError) and exc.errno == errno.ENAMETOOLONG:
        return f"the path given is too long ({len(str(exc.filename or ''))} characters): use a shorter path"
    return f"unexpected {type(exc).__name__}: {exc} (details in the server log)"


def to_gr_error(exc: BaseException) -> gr.Error:
    if isinstance(exc, gr.Error):
        return exc
    if not isinstance(exc, USER_ERRORS):
        log.exception("callback failed", exc_info=exc)
    return gr.Error(message_of(exc), duration=12)


def friendly(fn: Callable) -> Callable:
    """Wrap a callback (plain or generator) so library errors reach the user as gr.Error toasts."""
    if inspect.isgeneratorfunction(fn):

        @functools.wraps(fn)
        def gen_wrapper(*args, **kwargs):
            try:
                yield from fn(*args, **kwargs)
            except gr.Error:
                raise
            except Exception as exc:
                raise to_gr_error(exc) from None

        return gen_wrapper

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except gr.Error:
            raise
        except Exception as exc:
            raise to_gr_error(exc) from None

    return wrapper


def guarded(outputs: int, status: int | None = None):
    """Like `friendly`, for callbacks with a status box: a failure leaves every output as it
    was (gr.skip) and writes the message into output `status`, in the tab that raised it (a
    toast would stay over the other tabs); with no status box it is shown as a toast.

    Raising gr.Error instead would stamp a red "Error" over each output component (tables,
    plots, chat columns), hiding what the user was looking at.
    """

    def fail(exc: BaseException):
        msg = message_of(exc)
        if not isinstance(exc, USER_ERRORS):
            log.exception("callback failed", exc_info=exc)
        if status is None:
            gr.Warning(msg, duration=12)
        # else the message stays in this tab's status box: a toast would float over every tab
        out = [gr.skip()] * outputs
        if status is not None:
            out[status] = warn(msg)
        return out[0] if outputs == 1 else tuple(out)

    def deco(fn: Callable) -> Callable:
        if inspect.isgeneratorfunction(fn):

            @functools.wraps(fn)
            def gen_wrapper(*args, **kwargs):
                try:
                    yield from fn(*args, **kwargs)
                except Exception as exc:
                    yield fail(exc)

            return gen_wrapper

        @functools.wraps(fn)
        def wrapper(*args, **kwargs):
            try:
                return fn(*args, **kwargs)
            except Exception as exc:
                return fail(exc)

        return wrapper

    return deco


def prompt_of(value: dict | None, check_image: Callable[[str], str], *, per: str = "message") -> tuple[str, str | None]:
    """(text, checked image path or None) of a gr.MultimodalTextbox value {"text", "files"}
    (files as paths, dicts with "path", or FileData), for the Chat and Arena inputs."""
    value = value or {}
    text, files = (value.get("text") or ""), list(value.get("files") or [])
    if len(files) > 1:
        raise ValueError(f"attach at most one image per {per}")
    if not files:
        return text, None
    f = files[0]
    return text, check_image(f if isinstance(f, str) else (f.get("path") if isinstance(f, dict) else f.path))


def table(rows: Sequence[dict], columns: Sequence[str]) -> pd.DataFrame:
    """A DataFrame with exactly `columns` (missing values as "—"), strings for display."""
    data = [[("—" if r.get(c) is None else r.get(c)) for c in columns] for r in rows]
    return pd.DataFrame(data, columns=list(columns))


def hint(text: str) -> gr.Markdown:
    return gr.Markdown(text, elem_classes=["gs-hint"])


def section(title: str) -> gr.Markdown:
    return gr.Markdown(f"### {title}", elem_classes=["gs-section-title"])


def ok(text: str) -> str:
    return f"✓ {text}"


def warn(text: str) -> str:
    return f"⚠ {text}"


def choices_update(choices: Iterable[str], value: Any = None, keep: Any = None) -> dict:
    """A dropdown update that keeps the current selection where it is still a choice."""
    choices = list(choices)
    if keep is not None:
        if isinstance(keep, (list, tuple)):
            value = [k for k in keep if k in choices] or value
        elif keep in choices:
            value = keep
    return gr.update(choices=choices, value=value)
