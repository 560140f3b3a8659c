"""One loaded base shared by every LoRA variant; full models kept in a small LRU.

The base is loaded once (lazily, on the first request that needs it). LoRA experts and
fused LoRA adapters are attached to it as named peft adapters; a request picks one with
`set_adapter` (or `disable_adapter()` for the base itself), or, when several such
columns are asked at once, runs them as one batch with peft's per-row `adapter_names`
(so base + three adapters cost one forward per token, and all columns stream together).
Full fine-tunes and fused full checkpoints are separate models, at most `max_full`
of them in memory (least recently used is dropped).

Everything that touches the models runs under one lock: adapter switching is global
state on the shared base. A variant with `remote` set (an OpenAI-compatible server, see
chat/remote.py) loads nothing here: `stream` sends its columns to the server (chat/mixed.py),
outside that lock, alongside the local ones.
"""

from __future__ import annotations

import gc
import logging
import os
import re
import threading
from collections import OrderedDict
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass
from typing import Iterator, Sequence

import torch

from graft_ui.chat.generation import BatchedGeneration, StreamUpdate
from graft_ui.chat.mixed import stream_mixed
from graft_ui.chat.settings import GenerationSettings
from graft_ui.models.manifest import RemoteModel
from graft_ui.models.loading import attach_adapter, check_reference, is_adapter, load_model, load_processor, resolve_device

log = logging.getLogger(__name__)

KINDS = ("base", "lora", "full")
APP_OVERRIDE = "add it again with “allow a different base” ticked to load it anyway"


@dataclass(frozen=True)
class VariantSpec:
    """A chat-able model: the base, an expert or a fused variant."""

    name: str
    path: str
    kind: str  # base | lora | full
    role: str = "expert"  # base | expert | fused
    allow_base_mismatch: bool = False  # an adapter recorded on another base, loaded anyway (the user said so)
    remote: RemoteModel | None = None  # answered by this server instead of in-process

    def __post_init__(self):
        if self.kind not in KINDS:
            raise ValueError(f"variant {self.name!r}: kind={self.kind!r} is not one of {list(KINDS)}")


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


class ModelPool(BatchedGeneration):
    """Loads models on demand for chat (see the module docstring); generation: chat/generation.py."""

    def __init__(
        self,
        base_path: str,
        device: str | torch.device = "auto",
        dtype: torch.dtype | None = None,
        max_full: int = 2,
        base_name: str = "base",
        allow_mixed_batch: bool = True,
        base_remote: RemoteModel | None = None,
    ):
        self.device = resolve_device(device)
        self.dtype = dtype or (torch.bfloat16 if self.device.type == "cuda" else torch.float32)
        self.max_full = max(1, int(max_full))
        self.allow_mixed_batch = allow_mixed_batch
        self.lock = threading.RLock()
        self._specs: OrderedDict[str, VariantSpec] = OrderedDict()
        self._specs[base_name] = VariantSpec(base_name, str(base_path), "base", "base", base_remote)
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

    def register(self, name: str, path: str, kind: str, role: str = "expert",
                 remote: RemoteModel | None = None, *, allow_base_mismatch: bool = False) -> VariantSpec:
        """Make `name` available for chat (nothing is loaded until it is asked for; a `remote` one never is)."""
        if kind == "base":
            raise ValueError("the base is fixed when the pool is made; register experts as 'lora' or 'full'")
        with self.lock:
            if name in self._specs and (self._specs[name].path, self._specs[name].remote) != (str(path), remote):
                self.unregister(name)
            spec = VariantSpec(name, str(path), kind, role, allow_base_mismatch=allow_base_mismatch, remote=remote)
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

    def is_remote(self, name: str) -> bool:
        return self.spec(name).remote is not None

    def all_remote(self, names) -> bool:
        """Whether `names` is a non-empty list of known models that all run on servers (no local model)."""
        names = list(names or []) if isinstance(names, (list, tuple)) else []
        return bool(names) and all(n in self._specs and self._specs[n].remote is not None for n in names)

    def is_loaded(self, name: str) -> bool:
        spec = self.spec(name)
        if spec.remote is not None:
            return True
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
            self._base = attach_adapter(self._base, spec.path, key, allow_base_mismatch=spec.allow_base_mismatch,
                                        override=APP_OVERRIDE)
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
        if spec.remote is not None:
            return  # the server has it
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
        if spec.remote is not None:
            raise ValueError(f"{name!r} is served by {spec.remote.endpoint}; it cannot run in this process")
        self.load(name)
        if spec.kind == "full":
            return self._full[name], nullcontext()
        peft = self._peft()
        if spec.kind == "base":
            return self._base, (peft.disable_adapter() if peft is not None else nullcontext())
        peft.set_adapter(self._adapters[name])
        return peft, nullcontext()

    def stream(
        self,
        names: Sequence[str],
        conversations: Sequence[Sequence[dict]],
        settings: GenerationSettings | None = None,
        stop: threading.Event | None = None,
    ) -> Iterator[StreamUpdate]:
        """Like `BatchedGeneration.stream`; columns of remote variants go to their servers meanwhile."""
        if len(names) != len(conversations):
            raise ValueError(f"{len(names)} model names but {len(conversations)} conversations")
        remotes = {i: self.spec(n).remote for i, n in enumerate(names) if self.spec(n).remote is not None}
        if not remotes:
            yield from super().stream(names, conversations, settings, stop)
            return
        local_stream = super().stream
        yield from stream_mixed(local_stream, names, conversations, remotes, settings or GenerationSettings(),
                                stop or threading.Event())

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
