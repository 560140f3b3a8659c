"""Read and write peft LoRA adapters without peft: configs, per-module scales, factors.

Reading: `LoraAdapter(folder)` validates adapter_config.json (plain LoRA only: DoRA,
biases, modules_to_save and other variants are refused by name), indexes the
`lora_A` / `lora_B` pairs of adapter_model.safetensors per module, and works out each
module's rank and scale the way peft does: `r` and `lora_alpha` overridden by
`rank_pattern` / `alpha_pattern` (peft's `get_pattern_key` rule), scale = alpha / r, or
alpha / sqrt(r) with `use_rslora`.

Writing: `write_adapter` takes scale-1 factors (every scale folded into B, as
`graft_ui.merging.lora` returns them) and writes a config that makes peft use scale 1 for
every module: `r` = the largest rank, `lora_alpha` = r, `use_rslora` false, and for every
module of another rank k, `rank_pattern[tail] = alpha_pattern[tail] = k`. Keys name the
module by its tail (`layers.3.self_attn.q_proj`), which matches both the hub spelling
(`model.layers.3...`) and the transformers-5 one (`model.language_model.layers.3...`);
`target_modules` lists exactly the modules written, so peft wraps nothing it has no
weights for.
"""

from __future__ import annotations

import json
import logging
import math
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import torch

from graft_ui.models.checkpoint import SafetensorsFile, ShardedWriter, check_finite
from graft_ui.models.keys import PEFT_PREFIX, ModuleKey, parse_adapter_key, parse_module

log = logging.getLogger(__name__)

ADAPTER_WEIGHTS = "adapter_model.safetensors"
ADAPTER_CONFIG = "adapter_config.json"

# config features that change what the weights mean; an adapter using one is refused
_UNSUPPORTED = {
    "use_dora": "DoRA (weight-decomposed LoRA)",
    "lora_bias": "LoRA bias terms (lora_bias)",
    "modules_to_save": "modules_to_save (fully trained extra modules)",
    "layer_replication": "layer_replication",
    "target_parameters": "target_parameters (LoRA on nn.Parameter)",
    "trainable_token_indices": "trainable_token_indices",
    "alora_invocation_tokens": "activated LoRA (alora_invocation_tokens)",
    "use_qalora": "QALoRA",
    "use_bdlora": "BD-LoRA",
    "arrow_config": "Arrow routing",
    "monteclora_config": "MonteCLoRA",
    "velora_config": "VeLoRA",
    "kasa_config": "KaSA",
    "megatron_config": "Megatron-parallel LoRA",
    "fan_in_fan_out": "fan_in_fan_out (transposed Conv1D weights)",
}


@dataclass(frozen=True)
class LoraModule:
    """One adapted linear module of one adapter."""

    path: str  # module path as the adapter file spells it, without `base_model.model.`
    key: ModuleKey | None  # parsed Qwen2-VL module, None for others (merger, lm_head ...)
    a_name: str  # tensor names in the adapter file
    b_name: str
    rank: int
    alpha: float
    scale: float
    out_features: int
    in_features: int

    @property
    def name(self) -> str:
        """Canonical module name (see keys.py); the plain path for modules keys.py does not parse."""
        return self.key.name if self.key is not None else self.path

    @property
    def ident(self):
        """What identifies this module across adapters with different spellings."""
        return self.key if self.key is not None else self.path


def pattern_value(patterns: dict[str, Any], module_path: str, default):
    """peft's rule (utils.other.get_pattern_key): first pattern p with re.match(rf"(.*\\.)?({p})$", path)."""
    for p in patterns or {}:
        if re.match(rf"(.*\.)?({p})$", module_path):
            return patterns[p]
    return default


def lora_scale(alpha: float, r: int, rslora: bool) -> float:
    return alpha / math.sqrt(r) if rslora else alpha / r


class LoraAdapter:
    """A peft LoRA adapter folder, validated and indexed by module."""

    def __init__(self, folder: str | Path, label: str | None = None):
        self.folder = Path(folder)
        self.label = label or str(self.folder)
        cfg_path = self.folder / ADAPTER_CONFIG
        try:
            self.config: dict[str, Any] = json.loads(cfg_path.read_text())
        except FileNotFoundError:
            raise FileNotFoundError(f"{str(cfg_path)!r} does not exist: {self.label!r} is not a peft adapter folder") from None
        except (OSError, json.JSONDecodeError) as exc:
            raise ValueError(f"adapter config {str(cfg_path)!r} is unreadable: {exc}") from None
        cfg = self.config
        if cfg.get("peft_type") != "LORA":
            raise ValueError(
                f"adapter {self.label!r} has peft_type={cfg.get('peft_type')!r}; only plain LoRA adapters (LORA) can be fused"
            )
        for key, what in _UNSUPPORTED.items():
            if cfg.get(key):
                raise ValueError(f"adapter {self.label!r} uses {what} ({key}={cfg[key]!r}); this is not supported")
        if cfg.get("bias", "none") != "none":
            raise ValueError(f"adapter {self.label!r} trains biases (bias={cfg['bias']!r}); only bias='none' is supported")
        weights = self.folder / ADAPTER_WEIGHTS
        if not weights.is_file():
            other = [p.name for p in self.folder.glob("adapter_model.*")]
            hint = f" (found {other}; save it with safe_serialization=True)" if other else ""
            raise FileNotFoundError(f"adapter {self.label!r} has no {ADAPTER_WEIGHTS}{hint}")
        self.file = SafetensorsFile(weights)
        self.base_model = cfg.get("base_model_name_or_path")
        r0, alpha0 = cfg.get("r", 8), cfg.get("lora_alpha", 8)
        rslora = bool(cfg.get("use_rslora", False))
        parts: dict[str, dict[str, str]] = {}
        for tname in self.file.tensors:
            parsed = parse_adapter_key(tname)
            if parsed is None:
                raise ValueError(
                    f"adapter {self.label!r} holds tensor {tname!r}, which is not a LoRA factor; "
                    "only plain LoRA adapters (lora_A / lora_B) are supported"
                )
            path, part = parsed
            if part == "lora_magnitude_vector":
                raise ValueError(f"adapter {self.label!r} holds DoRA magnitude vectors ({tname!r}); DoRA is not supported")
            if part.startswith("lora_embedding"):
                raise ValueError(f"adapter {self.label!r} adapts an embedding layer ({tname!r}); LoRA on embeddings is not supported")
            parts.setdefault(path, {})[part] = tname
        self.modules: dict[Any, LoraModule] = {}
        for path, pair in parts.items():
            if set(pair) != {"lora_A", "lora_B"}:
                have = next(iter(pair.values()))
                lacking = "lora_B" if "lora_A" in pair else "lora_A"
                raise ValueError(f"adapter {self.label!r}: module {path!r} has {have!r} but its {lacking} tensor is missing")
            a, b = self.file.tensors[pair["lora_A"]], self.file.tensors[pair["lora_B"]]
            if len(a.shape) != 2 or len(b.shape) != 2:
                raise ValueError(
                    f"adapter {self.label!r}: module {path!r} has factors of shape {a.shape} / {b.shape}; "
                    "only LoRA on linear layers (2-D factors) is supported"
                )
            if a.shape[0] != b.shape[1]:
                raise ValueError(f"adapter {self.label!r}: module {path!r} has lora_A {a.shape} and lora_B {b.shape} of different ranks")
            model_path = path  # peft matches patterns against the model's module path
            r = int(pattern_value(cfg.get("rank_pattern") or {}, model_path, r0))
            alpha = float(pattern_value(cfg.get("alpha_pattern") or {}, model_path, alpha0))
            if r != a.shape[0]:
                raise ValueError(
                    f"adapter {self.label!r}: module {path!r} has rank {a.shape[0]} in its weights but r={r} in its config"
                )
            key = parse_module(path)
            mod = LoraModule(
                path=path, key=key, a_name=pair["lora_A"], b_name=pair["lora_B"], rank=r, alpha=alpha,
                scale=lora_scale(alpha, r, rslora), out_features=b.shape[0], in_features=a.shape[1],
            )
            if mod.ident in self.modules:
                raise ValueError(f"adapter {self.label!r} holds module {mod.name!r} twice ({self.modules[mod.ident].path!r}, {path!r})")
            self.modules[mod.ident] = mod
        if not self.modules:
            raise ValueError(f"adapter {self.label!r} holds no LoRA weights")

    def read(self, mod: LoraModule, device: torch.device | str = "cpu") -> tuple[torch.Tensor, torch.Tensor]:
        """(B (M, r), A (r, N)) as float32 on `device`, checked for NaN/inf."""
        A = self.file.read(mod.a_name)
        B = self.file.read(mod.b_name)
        check_finite(A, f"adapter {self.label!r} tensor {mod.a_name!r}")
        check_finite(B, f"adapter {self.label!r} tensor {mod.b_name!r}")
        return B.to(device=device, dtype=torch.float32), A.to(device=device, dtype=torch.float32)

    def close(self) -> None:
        self.file.close()


# ---------------------------------------------------------------------------- bases

def _hub_id_from_cache(path: Path) -> str | None:
    """`.../models--owner--name/snapshots/<sha>` -> `owner/name`."""
    for part in path.parts:
        if part.startswith("models--"):
            return "/".join(part[len("models--"):].split("--", 1))
    return None


def normalise_base(ref: str | None) -> str | None:
    """A comparable form of a base reference: real path for local folders, hub id otherwise."""
    if ref is None:
        return None
    ref = str(ref).rstrip("/")
    p = Path(ref).expanduser()
    if p.exists():
        real = p.resolve()
        return _hub_id_from_cache(real) or str(real)
    return ref


def same_base(a: str | None, b: str | None) -> bool:
    """Whether two base references name the same model.

    Equal after `normalise_base`; or a hub id `owner/name` against a local folder named
    `name` (the usual "downloaded it to ./Qwen2-VL-2B-Instruct"); or a local path that no
    longer exists against an existing folder of the same name (a moved zoo). Two existing
    local folders must be the same folder.
    """
    na, nb = normalise_base(a), normalise_base(b)
    if na is None or nb is None:
        return na == nb
    if na == nb:
        return True
    ea, eb = Path(str(a)).expanduser().exists(), Path(str(b)).expanduser().exists()
    if ea and eb:
        return False
    name_a, name_b = Path(na).name, Path(nb).name
    if name_a != name_b:
        return False
    log.warning("treating base %r and %r as the same model (same name %r)", a, b, name_a)
    return True


def check_bases(adapters: Sequence[LoraAdapter], base: str | None) -> str:
    """The base every adapter was trained on; refuse adapters trained on another base."""
    named = [(ad, ad.base_model) for ad in adapters]
    if base is None:
        refs = [r for _, r in named if r]
        if not refs:
            raise ValueError("recipe.base is not set and the adapters do not name their base model; set recipe.base")
        base = refs[0]
        origin = f"adapter {named[0][0].label!r}"
    else:
        origin = "recipe.base"
    for ad, ref in named:
        check_adapter_base(ad.label, ref, base, origin=origin, action="fused")
    return base


OVERRIDE_CLI = "pass --allow-base-mismatch to load it anyway"


def check_adapter_base(label: str, recorded: str | None, base: str | None, *, origin: str = "the base",
                       action: str = "loaded on it", allow_mismatch: bool = False,
                       override: str = OVERRIDE_CLI) -> None:
    """The one rule for putting an adapter on a base, used by the merge engine and every loader:
    the base recorded in its adapter_config.json (`recorded`) must name the same model as `base`
    (`same_base`); otherwise a ValueError naming the `override` (how the user allows it: a CLI flag,
    a checkbox), unless `allow_mismatch` (that explicit override), which logs a warning instead. An adapter that records no base is assumed to fit (warned)."""
    if not recorded or not base:
        log.warning("adapter %s names no base model; assuming %s", label, base)
        return
    if same_base(recorded, base):
        return
    msg = f"adapter {label!r} was trained on base {recorded!r}, but {origin} is {base!r}"
    if allow_mismatch:
        log.warning("%s; loading it anyway (base mismatch allowed)", msg)
        return
    raise ValueError(f"{msg}; adapters trained on another base cannot be {action}"
                     + ("" if action == "fused" else f" ({override})"))


# ---------------------------------------------------------------------------- writing

def module_pattern(mod_path: str) -> str:
    """The key written in target_modules / rank_pattern for a module path (see module docstring)."""
    key = parse_module(mod_path)
    return key.tail if key is not None else mod_path


def adapter_config_for(
    template: dict[str, Any], ranks: dict[str, int], base_model: str | None
) -> dict[str, Any]:
    """Config for scale-1 factors of the given ranks ({module path: rank})."""
    patterns = {module_pattern(p): k for p, k in ranks.items()}
    r = max(patterns.values())
    cfg = dict(template)
    for key in _UNSUPPORTED:
        cfg.pop(key, None)
    for key in ("layers_to_transform", "layers_pattern", "exclude_modules", "loftq_config", "eva_config",
                "corda_config", "lora_ga_config"):
        cfg.pop(key, None)
    other = {p: k for p, k in patterns.items() if k != r}
    cfg.update(
        peft_type="LORA",
        base_model_name_or_path=base_model,
        r=r,
        lora_alpha=r,
        use_rslora=False,
        use_dora=False,
        bias="none",
        rank_pattern=other,
        alpha_pattern=dict(other),
        target_modules=sorted(patterns),
        init_lora_weights=True,
        inference_mode=True,
    )
    return cfg


def write_adapter(
    folder: str | Path,
    specs: Sequence[tuple[str, int, int, int]],
    *,
    template: dict[str, Any],
    base_model: str | None,
    dtype: torch.dtype = torch.float32,
) -> "AdapterWriter":
    """Open a streaming adapter writer in `folder`.

    `specs` lists (module path, out_features, in_features, rank) for every module to be
    written, so the file layout is fixed before any factor is computed; then call
    `writer.write(path, B, A)` with scale-1 factors per module, and `writer.close()`.
    """
    return AdapterWriter(folder, specs, template=template, base_model=base_model, dtype=dtype)


class AdapterWriter:
    def __init__(self, folder, specs, *, template, base_model, dtype):
        self.folder = Path(folder)
        self.dtype = dtype
        self.ranks = {p: k for p, _, _, k in specs}
        if not self.ranks:
            raise ValueError("no LoRA modules to write")
        tensors = []
        for p, m, n, k in specs:
            tensors.append((f"{PEFT_PREFIX}{p}.lora_A.weight", dtype, (k, n)))
            tensors.append((f"{PEFT_PREFIX}{p}.lora_B.weight", dtype, (m, k)))
        self.config = adapter_config_for(template, self.ranks, base_model)
        self.writer = ShardedWriter(self.folder, tensors, shard_bytes=1 << 62, single_name=ADAPTER_WEIGHTS)

    def write(self, path: str, B: torch.Tensor, A: torch.Tensor) -> None:
        if B.shape[1] != self.ranks[path] or A.shape[0] != self.ranks[path]:
            raise ValueError(f"module {path!r}: factors of rank {B.shape[1]}/{A.shape[0]}, planned {self.ranks[path]}")
        self.writer.write(f"{PEFT_PREFIX}{path}.lora_A.weight", A.to(self.dtype).cpu().contiguous())
        self.writer.write(f"{PEFT_PREFIX}{path}.lora_B.weight", B.to(self.dtype).cpu().contiguous())

    def close(self) -> list[str]:
        files = self.writer.close()
        (self.folder / ADAPTER_CONFIG).write_text(json.dumps(self.config, indent=2, sort_keys=True) + "\n")
        return files + [ADAPTER_CONFIG]

    def abort(self) -> None:
        self.writer.abort()


def read_adapter_delta(folder: str | Path, device: str = "cpu") -> dict[str, torch.Tensor]:
    """{canonical module name: scale * B @ A} of a whole adapter (tests and small adapters only)."""
    ad = LoraAdapter(folder)
    out = {}
    for mod in ad.modules.values():
        B, A = ad.read(mod, device)
        out[mod.name] = (B @ A) * mod.scale
    ad.close()
    return out


__all__ = [
    "ADAPTER_CONFIG",
    "ADAPTER_WEIGHTS",
    "AdapterWriter",
    "LoraAdapter",
    "LoraModule",
    "adapter_config_for",
    "check_bases",
    "lora_scale",
    "normalise_base",
    "pattern_value",
    "read_adapter_delta",
    "same_base",
    "write_adapter",
]
