"""Batched streaming generation over the chat pool's models (the pool itself: chat/pool.py).

Columns that share the base (the base and LoRA adapters) run as one batch with peft's
per-row `adapter_names`, so base + three adapters cost one forward per token and all
columns stream together; each full model runs on its own. A column whose model fails
gets an error and the others carry on.
"""

from __future__ import annotations

import logging
import threading
from contextlib import nullcontext
from dataclasses import dataclass, field
from typing import Iterator, Sequence

import torch
from qwen_vl_utils import process_vision_info

from graft_ui.chat.settings import CHAT_MAX_PIXELS, GenerationSettings
from graft_ui.chat.streaming import stream_generate
from graft_ui.models.inputs import build_inputs, resolve_messages

log = logging.getLogger(__name__)


@dataclass
class StreamUpdate:
    """The state of every requested column after one more chunk of text."""

    names: list[str]
    texts: list[str]
    status: list[str]  # waiting | loading | streaming | done | stopped | error
    errors: list[str | None] = field(default_factory=list)

    def __post_init__(self):
        if not self.errors:
            self.errors = [None] * len(self.names)

    @property
    def finished(self) -> bool:
        return all(s in ("done", "stopped", "error") for s in self.status)


def build_batch_inputs(processor, conversations: Sequence[Sequence[dict]], root=None):
    """Left-padded batch inputs for several conversations, the stock Qwen2-VL way.

    Per conversation: images opened as local files (models.inputs.resolve_messages), chat
    template, `qwen_vl_utils.process_vision_info`; then one processor call over the batch.
    """
    if len(conversations) == 1:
        return build_inputs(processor, conversations[0], root=root)
    texts, images = [], []
    for conv in conversations:
        msgs = resolve_messages(conv, root)
        texts.append(processor.apply_chat_template(msgs, tokenize=False, add_generation_prompt=True))
        imgs, _ = process_vision_info(msgs)
        images.extend(imgs or [])
    tok = processor.tokenizer
    old_side, tok.padding_side = tok.padding_side, "left"
    try:
        return processor(text=texts, images=images or None, padding=True, return_tensors="pt")
    finally:
        tok.padding_side = old_side


def cap_images(conversation: Sequence[dict], max_pixels: int = CHAT_MAX_PIXELS) -> list[dict]:
    """A copy of `conversation` whose image items carry qwen_vl_utils' `max_pixels` cap."""
    out = []
    for msg in conversation:
        content = msg.get("content")
        if isinstance(content, list):
            content = [dict(item, max_pixels=min(int(item.get("max_pixels", max_pixels)), max_pixels))
                       if item.get("type") == "image" else dict(item) for item in content]
        out.append({**msg, "content": content})
    return out


class BatchedGeneration:
    """`stream`, `generate` and their batch `plan` for `ModelPool`, which provides the models:
    `lock`, `device`, `allow_mixed_batch`, `processor`, `spec`, `is_loaded`, `load`,
    `_configure`, `_peft`, `_base`, `_adapters` and `_vision_adapters`."""

    def plan(self, names: Sequence[str], rows: Sequence[int] | None = None) -> list[list[int]]:
        """Groups of column indices run together: the shared-base columns (one batch when
        possible), then each full model on its own, in the order asked. A shared-base
        adapter that touches the vision tower rules the batch out (peft's per-row adapter
        routing assumes a batch dimension the vision tower does not have)."""
        rows = list(range(len(names))) if rows is None else list(rows)
        shared = [i for i in rows if self.spec(names[i]).kind in ("base", "lora")]
        full = [[i] for i in rows if self.spec(names[i]).kind == "full"]
        mixed_ok = self.allow_mixed_batch and not any(names[i] in self._vision_adapters for i in shared)
        if not shared:
            return full
        return ([shared] if mixed_ok else [[i] for i in shared]) + full

    def _run_group(self, names, conversations, settings, stop):
        """Generator of text snapshots for one group (list of names run as a batch)."""
        processor = self.processor
        tok = processor.tokenizer
        specs = [self.spec(n) for n in names]

        def run(streamer, criteria):
            with self.lock:
                for n in names:
                    self.load(n)
                if len(names) > 1:
                    # a mixed batch needs the LoRA names of rows that use an adapter, "__base__" elsewhere
                    peft = self._peft()
                    rows = ["__base__" if s.kind == "base" else self._adapters[s.name] for s in specs]
                    model, ctx, extra = (peft or self._base), nullcontext(), ({"adapter_names": rows} if peft else {})
                else:
                    model, ctx = self._configure(names[0])
                    extra = {}
                inputs = build_batch_inputs(processor, [cap_images(c) for c in conversations])
                inputs = inputs.to(self.device)
                if settings.seed is not None:
                    torch.manual_seed(settings.seed)
                with ctx, torch.inference_mode():
                    model.generate(
                        **inputs,
                        **extra,
                        **settings.generate_kwargs(tok.pad_token_id if tok.pad_token_id is not None else tok.eos_token_id),
                        streamer=streamer,
                        stopping_criteria=criteria,
                    )

        eos = model_eos_ids(tok)
        yield from stream_generate(run, tok, len(names), stop, eos)

    def stream(
        self,
        names: Sequence[str],
        conversations: Sequence[Sequence[dict]],
        settings: GenerationSettings | None = None,
        stop: threading.Event | None = None,
    ) -> Iterator[StreamUpdate]:
        """Answer conversation i with model names[i]; yield the state of all columns as text arrives.

        A column whose model fails to load or generate gets status "error" and a message;
        the others carry on. `stop` (set from another thread) ends every column.
        """
        if len(names) != len(conversations):
            raise ValueError(f"{len(names)} model names but {len(conversations)} conversations")
        for n in names:
            self.spec(n)
        settings = settings or GenerationSettings()
        stop = stop or threading.Event()
        update = StreamUpdate(list(names), [""] * len(names), ["waiting"] * len(names))
        yield update
        rows = []
        for i, n in enumerate(names):
            # shared-base models load up front (the batch plan depends on them); full models load in turn (LRU)
            if self.spec(n).kind != "full" and not self.is_loaded(n):
                update.status[i] = "loading"
                yield update
                try:
                    self.load(n)
                except Exception as exc:
                    update.status[i], update.errors[i] = "error", _message(exc)
                    log.warning("chat: could not load %s: %s", n, update.errors[i])
                    yield update
                    continue
                update.status[i] = "waiting"
            rows.append(i)
        for group in self.plan(names, rows):
            if stop.is_set():
                break
            for i in group:
                update.status[i] = "loading" if not self.is_loaded(names[i]) else "streaming"
            yield update
            try:
                for texts in self._run_group([names[i] for i in group], [conversations[i] for i in group], settings, stop):
                    for i, t in zip(group, texts):
                        update.texts[i] = t
                        update.status[i] = "streaming"
                    yield update
                for i in group:
                    update.status[i] = "stopped" if stop.is_set() else "done"
            except Exception as exc:  # one failing column must not take the others down
                msg = _message(exc)
                log.warning("chat: %s failed: %s", [names[i] for i in group], msg)
                if len(group) > 1:
                    # retry one by one so that only the broken model shows the error
                    yield from self._retry_single(group, names, conversations, settings, stop, update)
                    continue
                for i in group:
                    update.status[i], update.errors[i] = "error", msg
            yield update
        for i, s in enumerate(update.status):
            if s in ("waiting", "loading", "streaming"):
                update.status[i] = "stopped"
        self._free_if_cuda()
        yield update

    def _retry_single(self, group, names, conversations, settings, stop, update):
        for i in group:
            if stop.is_set():
                break
            try:
                for texts in self._run_group([names[i]], [conversations[i]], settings, stop):
                    update.texts[i], update.status[i] = texts[0], "streaming"
                    yield update
                update.status[i] = "stopped" if stop.is_set() else "done"
            except Exception as exc:
                update.status[i], update.errors[i] = "error", _message(exc)
            yield update

    def _free_if_cuda(self):
        if self.device.type == "cuda":
            torch.cuda.empty_cache()

    def generate(self, name: str, conversation: Sequence[dict], settings: GenerationSettings | None = None) -> str:
        """The whole answer of one model (non-streaming helper for scripts and the arena)."""
        last = None
        for last in self.stream([name], [conversation], settings):
            pass
        if last.status[0] == "error":
            raise ValueError(last.errors[0])
        return last.texts[0]


def _message(exc: BaseException) -> str:
    """A one-line, user-facing description of a failure."""
    if isinstance(exc, KeyError) and exc.args:
        return str(exc.args[0])
    if isinstance(exc, (ValueError, FileNotFoundError)):
        return str(exc)
    return f"{type(exc).__name__}: {exc}"


def model_eos_ids(tok) -> list[int]:
    """End-of-turn ids: the tokenizer's eos plus Qwen's <|im_end|> / <|endoftext|> when present."""
    ids = set()
    for t in (tok.eos_token_id, tok.pad_token_id):
        if t is not None:
            ids.add(int(t))
    for special in ("<|im_end|>", "<|endoftext|>"):
        tid = tok.convert_tokens_to_ids(special)
        if isinstance(tid, int) and tid != tok.unk_token_id and tid >= 0:
            ids.add(tid)
    return sorted(ids)
