"""Parse Qwen2-VL tensor names into (tower, layer, module type) and adapter parts.

The same module appears under several spellings, and all of them must meet:

- hub / transformers-4 checkpoints and what transformers 5 `save_pretrained` writes:
  `model.layers.3.self_attn.q_proj.weight`, `visual.blocks.0.attn.qkv.weight`;
- transformers-5 module paths (calibration hooks, peft adapters saved with transformers 5):
  `model.language_model.layers.3.self_attn.q_proj`, `model.visual.blocks.0.attn.qkv`;
- peft adapter tensors: `base_model.model.<module path>.lora_A.weight`.

`ModuleKey.name` is the one canonical spelling, the transformers-5 module path, used in
gates.json, in recipe `phi` keys and in the UI heatmap. `ModuleKey.tail`
(`layers.3.self_attn.q_proj`) is the shortest suffix that still names one module in every
spelling; it is what written adapter configs use in `target_modules` / `rank_pattern`.

Vision tower modules are mapped onto the language module types for scoping (DESIGN.md §2
"which parameters"): `attn.qkv` -> q_proj/k_proj/v_proj (one fused matrix: in scope when
any of the three is), `attn.proj` -> o_proj, `mlp.fc1` -> up_proj/gate_proj, `mlp.fc2` ->
down_proj. The patch embedding and the merger are never fused.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

LANGUAGE = "language"
VISION = "vision"

# module name inside a block -> the scope module types it answers to
LANGUAGE_TYPES = {
    "q_proj": ("q_proj",),
    "k_proj": ("k_proj",),
    "v_proj": ("v_proj",),
    "o_proj": ("o_proj",),
    "gate_proj": ("gate_proj",),
    "up_proj": ("up_proj",),
    "down_proj": ("down_proj",),
}
VISION_TYPES = {
    "qkv": ("q_proj", "k_proj", "v_proj"),
    "proj": ("o_proj",),
    "fc1": ("gate_proj", "up_proj"),
    "fc2": ("down_proj",),
}

_LANG_RE = re.compile(r"^(?P<prefix>.*?)layers\.(?P<layer>\d+)\.(?P<block>self_attn|mlp)\.(?P<mod>[A-Za-z0-9_]+)$")
_VIS_RE = re.compile(
    r"^(?P<prefix>.*?(?:visual|vision_tower|vision_model)\.)blocks\.(?P<layer>\d+)\.(?P<block>attn|mlp)\.(?P<mod>[A-Za-z0-9_]+)$"
)
# peft adapter tensor: <module path>.<part>[.<adapter name>][.weight]
_ADAPTER_RE = re.compile(
    r"^(?:base_model\.model\.)?(?P<path>.+?)\."
    r"(?P<part>lora_A|lora_B|lora_embedding_A|lora_embedding_B|lora_magnitude_vector)"
    r"(?:\.[A-Za-z0-9_-]+)?(?:\.weight)?$"
)
PEFT_PREFIX = "base_model.model."


@dataclass(frozen=True, order=True)
class ModuleKey:
    """One fusable linear module: tower, layer (block) index, block and module name."""

    tower: str  # language | vision
    layer: int
    block: str  # self_attn | mlp (language), attn | mlp (vision)
    module: str  # q_proj ... down_proj (language), qkv | proj | fc1 | fc2 (vision)

    @property
    def tail(self) -> str:
        return f"{'layers' if self.tower == LANGUAGE else 'blocks'}.{self.layer}.{self.block}.{self.module}"

    @property
    def name(self) -> str:
        """Canonical module name: the transformers-5 module path in Qwen2VLForConditionalGeneration."""
        root = "model.language_model." if self.tower == LANGUAGE else "model.visual."
        return root + self.tail

    @property
    def types(self) -> tuple[str, ...]:
        """Scope module types (q_proj ... down_proj) this module answers to."""
        table = LANGUAGE_TYPES if self.tower == LANGUAGE else VISION_TYPES
        return table[self.module]


def parse_module(path: str) -> ModuleKey | None:
    """ModuleKey of a module path in any spelling, or None when it is not a fusable linear."""
    if path.startswith(PEFT_PREFIX):
        path = path[len(PEFT_PREFIX):]
    m = _VIS_RE.match(path)
    if m:
        if m["mod"] not in VISION_TYPES:
            return None
        return ModuleKey(VISION, int(m["layer"]), m["block"], m["mod"])
    m = _LANG_RE.match(path)
    if m and not re.search(r"(visual|vision_tower|vision_model)\.", m["prefix"]):
        if m["mod"] not in LANGUAGE_TYPES:
            return None
        return ModuleKey(LANGUAGE, int(m["layer"]), m["block"], m["mod"])
    return None


def split_param(name: str) -> tuple[str, str]:
    """`a.b.c.weight` -> (`a.b.c`, `weight`)."""
    path, _, leaf = name.rpartition(".")
    return path, leaf


def parse_param(name: str) -> tuple[ModuleKey | None, str]:
    """(ModuleKey or None, leaf) for a full-checkpoint tensor name such as `...q_proj.weight`."""
    path, leaf = split_param(name)
    return parse_module(path), leaf


def parse_adapter_key(name: str) -> tuple[str, str] | None:
    """(module path without the peft prefix, part) for a peft adapter tensor, else None.

    part is lora_A, lora_B, lora_embedding_A, lora_embedding_B or lora_magnitude_vector.
    """
    m = _ADAPTER_RE.match(name)
    if not m:
        return None
    return m["path"], m["part"]


_LAYER_RE = re.compile(r"(?:^|\.)layers\.(\d+)\.")
_VISION_RE = re.compile(r"(?:^|\.)(?:visual|vision_tower|vision_model)\.")


def language_layer(name: str) -> int | None:
    """The language-model layer a tensor or module name belongs to (`...layers.3....`), or None
    (embeddings, final norm, lm_head, the vision tower): gradients take t = 0 there."""
    m = _LAYER_RE.search(name)
    return None if m is None or _VISION_RE.search(name) else int(m.group(1))


def canonical_name(path: str) -> str:
    """Canonical module name for any spelling; unknown paths come back without the peft prefix."""
    key = parse_module(path)
    if key is not None:
        return key.name
    return path[len(PEFT_PREFIX):] if path.startswith(PEFT_PREFIX) else path
