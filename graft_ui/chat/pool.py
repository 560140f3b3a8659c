"""One loaded base shared by every LoRA variant; full models kept in a small LRU.

The base is loaded once (lazily, on the first request that needs it). LoRA experts and
fused LoRA adapters are attached to it as named peft adapters; a request picks one with
`set_adapter` (or `disable_adapter()` for the base itself), or, when several such
columns are asked at once, runs them as one batch with peft's per-row `adapter_names`
(so base + three adapters cost one forward per token, and all columns stream together).
Full fine-tunes and fused full checkpoints are separate models, at most `max_full`
of them in memory (least recently used is dropped).

Everything that touches the models runs under one lock: adapter switching is global
state on the shared base.
"""

from __future__ import annotations

import gc
import logging
import os
import re
import threading
from collections import OrderedDict
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass, field
from typing import Iterator, Sequence

import torch
from qwen_vl_utils import process_vision_info

from graft_ui.chat.settings import CHAT_MAX_PIXELS, GenerationSettings
from graft_ui.chat.streaming import stream_generate
from graft_ui.models.inputs import build_inputs, resolve_messages
from graft_ui.models.loading import attach_adapter, check_reference, is_adapter, load_model, load_processor, resolve_device

log = logging.getLogger(__name__)

KINDS = ("base", "lora", "full")


@dataclass(frozen=True)
class VariantSpec:
    """A chat-able model: the base, an expert or a fused variant."""

    name: str
    path: str
    kind: str  # base | lora | full
    role: str = "expert"  # base | expert | fused

    def __post_init__(self):
        if self.kind not in KINDS:
            raise ValueError(f"variant {self.name!r}: kind={self.kind!r} is not one of {list(KINDS)}")


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


def _adapter_key(name: str) -> str:
    # peft keeps adapters in ModuleDicts: no dots; "__base__" is reserved for mixed batches
    key = re.sub(r"[^0-9A-Za-z_-]", "_", name)
    return f"a_{key}" if key.startswith("__") or not key else key


def _tensor_bytes(tensors) -> int:
    seen, total = set(), 0
    for t in tensors:
        if t.data_ptr() in seen:
            continue
        seen.add(t.data_ptr())
        total += t.numel() * t.element_size()
    return total


def rss_bytes() -> int:
    """Resident set size of this process (Linux /proc; 0 elsewhere)."""
    try:
        with open(f"/proc/{os.getpid()}/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError):
        return 0


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


class ModelPool:
    """Loads models on demand for chat; see the module docstring."""

    def __init__(
        self,
        base_path: str,
        device: str | torch.device = "auto",
        dtype: torch.dtype | None = None,
        max_full: int = 2,
        base_name: str = "base",
        allow_mixed_batch: bool = True,
    ):
        self.device = resolve_device(device)
        self.dtype = dtype or (torch.bfloat16 if self.device.type == "cuda" else torch.float32)
        self.max_full = max(1, int(max_full))
        self.allow_mixed_batch = allow_mixed_batch
        self.lock = threading.RLock()
        self._specs: OrderedDict[str, VariantSpec] = OrderedDict()
        self._specs[base_name] = VariantSpec(base_name, str(base_path), "base", "base")
        self.base_name = base_name
        self._base = None  # Qwen2VLForConditionalGeneration, or the PeftModel wrapping it
        self._processor = None
        self._adapters: dict[str, str] = {}  # variant name -> peft adapter key
        self._vision_adapters: set[str] = set()
        self._full: OrderedDict[str, torch.nn.Module] = OrderedDict()

    # ---- registry --------------------------------------------------------------------

    @property
    def base_path(self) -> str:
        return self._specs[self.base_name].path

    def register(self, name: str, path: str, kind: str, role: str = "expert") -> VariantSpec:
        """Make `name` available for chat (nothing is loaded until it is asked for)."""
        if kind == "base":
            raise ValueError("the base is fixed when the pool is made; register experts as 'lora' or 'full'")
        with self.lock:
            if name in self._specs and self._specs[name].path != str(path):
                self.unregister(name)
            spec = VariantSpec(name, str(path), kind, role)
            self._specs[name] = spec
            return spec

    def unregister(self, name: str) -> None:
        with self.lock:
            if name == self.base_name:
                raise ValueError("the base cannot be removed from the pool")
            self._specs.pop(name, None)
            self._drop(name)

    def names(self) -> list[str]:
        return list(self._specs)

    def spec(self, name: str) -> VariantSpec:
        try:
            return self._specs[name]
        except KeyError:
            raise KeyError(f"no model named {name!r} in the chat pool; known: {list(self._specs)}") from None

    def is_loaded(self, name: str) -> bool:
        spec = self.spec(name)
        if spec.kind == "base":
            return self._base is not None
        if spec.kind == "lora":
            return name in self._adapters
        return name in self._full

    # ---- loading ---------------------------------------------------------------------

    @property
    def processor(self):
        with self.lock:
            if self._processor is None:
                self._processor = load_processor(self.base_path)
            return self._processor

    def _load_base(self):
        if self._base is None:
            log.info("chat pool: loading base %s on %s (%s)", self.base_path, self.device, self.dtype)
            self._base = load_model(self.base_path, device=self.device, dtype=self.dtype)
        return self._base

    def _peft(self):
        from peft import PeftModel

        return self._base if isinstance(self._base, PeftModel) else None

    def _attach(self, spec: VariantSpec) -> str:
        key = self._adapters.get(spec.name)
        if key is not None:
            return key
        if not is_adapter(spec.path):
            raise ValueError(f"{spec.name!r}: {spec.path!r} has no adapter_config.json; is it a LoRA adapter folder?")
        self._load_base()
        key = _adapter_key(spec.name)
        taken = set(self._adapters.values())
        while key in taken:
            key += "_"
        try:
            self._base = attach_adapter(self._base, spec.path, key)
        except Exception:
            # a half-loaded adapter must not linger in the shared base
            peft = self._peft()
            if peft is not None and key in peft.peft_config:
                peft.delete_adapter(key)
            raise
        self._base.to(self.device)
        self._adapters[spec.name] = key
        if any("visual" in n for n, m in self._base.named_modules() if key in getattr(m, "lora_A", {})):
            self._vision_adapters.add(spec.name)
        log.info("chat pool: attached %s as adapter %r", spec.path, key)
        return key

    def _load_full(self, spec: VariantSpec):
        if spec.name in self._full:
            self._full.move_to_end(spec.name)
            return self._full[spec.name]
        while len(self._full) >= self.max_full:
            old, _ = self._full.popitem(last=False)
            log.info("chat pool: dropping %s (LRU cap %d)", old, self.max_full)
            self._free()
        model = load_model(spec.path, device=self.device, dtype=self.dtype)
        self._full[spec.name] = model
        return model

    def load(self, name: str) -> None:
        """Load what `name` needs now (raises a ValueError/FileNotFoundError naming the problem)."""
        spec = self.spec(name)
        with self.lock:
            if spec.kind != "base":
                check_reference(spec.path)
            if spec.kind == "base":
                self._load_base()
            elif spec.kind == "lora":
                self._attach(spec)
            else:
                self._load_full(spec)

    def _drop(self, name: str) -> None:
        key = self._adapters.pop(name, None)
        self._vision_adapters.discard(name)
        peft = self._peft()
        if key is not None and peft is not None and key in peft.peft_config:
            peft.delete_adapter(key)
        if self._full.pop(name, None) is not None:
            self._free()

    def _free(self) -> None:
        gc.collect()
        if self.device.type == "cuda":
            torch.cuda.empty_cache()

    def close(self) -> None:
        """Release every loaded model."""
        with self.lock:
            self._base = None
            self._adapters.clear()
            self._vision_adapters.clear()
            self._full.clear()
            self._free()

    # ---- running ---------------------------------------------------------------------

    @contextmanager
    def use(self, name: str):
        """Hold the lock and yield a model configured as `name` (for single forward passes, e.g. the arena)."""
        with self.lock:
            model, ctx = self._configure(name)
            with ctx:
                yield model

    def _configure(self, name: str):
        spec = self.spec(name)
        self.load(name)
        if spec.kind == "full":
            return self._full[name], nullcontext()
        peft = self._peft()
        if spec.kind == "base":
            return self._base, (peft.disable_adapter() if peft is not None else nullcontext())
        peft.set_adapter(self._adapters[name])
        return peft, nullcontext()

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

        eos = model_eos_ids(self, tok)
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

    # ---- memory ----------------------------------------------------------------------

    def memory(self) -> dict:
        """Parameter bytes of what is loaded: base, each adapter, each full model; and RSS."""
        with self.lock:
            out: dict = {"device": str(self.device), "rss_bytes": rss_bytes(), "adapters": {}, "full": {}}
            base_params, adapter_params = [], {}
            if self._base is not None:
                key_to_name = {k: n for n, k in self._adapters.items()}
                for pname, p in self._base.named_parameters():
                    hit = next((k for k in key_to_name if f".{k}." in pname), None)
                    if ".lora_" in pname and hit is not None:
                        adapter_params.setdefault(key_to_name[hit], []).append(p)
                    else:
                        base_params.append(p)
            out["base_bytes"] = _tensor_bytes(base_params)
            out["adapters"] = {n: _tensor_bytes(ps) for n, ps in adapter_params.items()}
            out["full"] = {n: _tensor_bytes(m.parameters()) for n, m in self._full.items()}
            out["total_bytes"] = out["base_bytes"] + sum(out["adapters"].values()) + sum(out["full"].values())
            if self.device.type == "cuda":
                out["cuda_allocated_bytes"] = torch.cuda.memory_allocated(self.device)
            return out


def _message(exc: BaseException) -> str:
    """A one-line, user-facing description of a failure."""
    if isinstance(exc, KeyError) and exc.args:
        return str(exc.args[0])
    if isinstance(exc, (ValueError, FileNotFoundError)):
        return str(exc)
    return f"{type(exc).__name__}: {exc}"


def model_eos_ids(pool: ModelPool, tok) -> list[int]:
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
