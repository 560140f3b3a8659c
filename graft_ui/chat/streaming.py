"""Streaming generation: `model.generate` in a thread, text coming back through a queue.

`BatchTextStreamer` is transformers' `TextIteratorStreamer` extended to a batch: when
several LoRA variants share one base, their columns are generated as one batch (peft's
mixed-adapter batches) and every column streams at once. Each item it yields is a list
with the full text so far of every row. `StopOnEvent` ties generation to a
`threading.Event`, so one Stop ends every row at the next token.
"""

from __future__ import annotations

import logging
import threading
from typing import Callable, Iterable, Iterator, Sequence

import torch
from transformers import StoppingCriteria, StoppingCriteriaList, TextIteratorStreamer

log = logging.getLogger(__name__)


class StopOnEvent(StoppingCriteria):
    """Stops every row as soon as `event` is set."""

    def __init__(self, event: threading.Event):
        self.event = event

    def __call__(self, input_ids: torch.LongTensor, scores, **kwargs) -> torch.BoolTensor:
        return torch.full((input_ids.shape[0],), self.event.is_set(), dtype=torch.bool, device=input_ids.device)


class BatchTextStreamer(TextIteratorStreamer):
    """A `TextIteratorStreamer` for batch size >= 1 that yields whole-text snapshots per row.

    The first `put` is the prompt and is skipped. A row ends at its first end-of-sequence
    token (generate pads finished rows after that). Text ending in an incomplete UTF-8
    sequence is held back until the next token completes it.
    """

    def __init__(self, tokenizer, batch_size: int, eos_token_ids: Iterable[int] = (), timeout: float | None = None):
        super().__init__(tokenizer, skip_prompt=True, timeout=timeout, skip_special_tokens=True)
        self.batch_size = batch_size
        self.eos = set(int(t) for t in eos_token_ids)
        self.tokens: list[list[int]] = [[] for _ in range(batch_size)]
        self.finished = [False] * batch_size
        self.texts = [""] * batch_size

    def put(self, value: torch.Tensor) -> None:
        if self.next_tokens_are_prompt:
            self.next_tokens_are_prompt = False
            return
        value = value.reshape(self.batch_size, -1).tolist()
        changed = False
        for row, new in enumerate(value):
            if self.finished[row]:
                continue
            for tok in new:
                if tok in self.eos:
                    self.finished[row] = True
                    break
                self.tokens[row].append(tok)
                changed = True
            text = self.tokenizer.decode(self.tokens[row], **self.decode_kwargs)
            if not text.endswith(BROKEN):  # a multi-byte character still arriving: wait for its last byte
                self.texts[row] = readable(text)
        if changed:
            self.text_queue.put(list(self.texts), timeout=self.timeout)

    def end(self) -> None:
        self.texts = [readable(self.tokenizer.decode(t, **self.decode_kwargs)) for t in self.tokens]
        self.text_queue.put(list(self.texts), timeout=self.timeout)
        self.text_queue.put(self.stop_signal, timeout=self.timeout)


BROKEN = "\ufffd"  # what a decoder writes for bytes that are not (yet) a whole UTF-8 character


def readable(text: str) -> str:
    """`text` without replacement characters: bytes of a multi-byte character cut off at the end
    (the answer stopped mid-character) or sampled out of order never show as "�"."""
    return text.replace(BROKEN, "")


class _Failure:
    def __init__(self, exc: BaseException):
        self.exc = exc


def stream_generate(
    run: Callable[[BatchTextStreamer, StoppingCriteriaList], None],
    tokenizer,
    batch_size: int,
    stop: threading.Event,
    eos_token_ids: Sequence[int] = (),
) -> Iterator[list[str]]:
    """Run `run(streamer, stopping_criteria)` (which calls `generate`) in a thread; yield text snapshots.

    An exception inside the thread is re-raised here. If the consumer stops iterating
    (the UI cancelled the event), `stop` is set so the thread ends at the next token.
    """
    streamer = BatchTextStreamer(tokenizer, batch_size, eos_token_ids)
    criteria = StoppingCriteriaList([StopOnEvent(stop)])

    def target():
        try:
            run(streamer, criteria)
        except BaseException as exc:  # handed to the consumer, which raises it
            log.exception("generation failed")
            streamer.text_queue.put(_Failure(exc))
            streamer.text_queue.put(streamer.stop_signal)

    thread = threading.Thread(target=target, name="graft-generate", daemon=True)
    thread.start()
    completed = False
    try:
        for item in streamer:
            if isinstance(item, _Failure):
                raise item.exc
            yield item
        completed = True
    finally:
        if not completed:
            stop.set()  # the consumer went away (UI cancel, error): end generation at the next token
        thread.join(timeout=60)
