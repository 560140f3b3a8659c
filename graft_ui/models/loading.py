"""Load bases, full fine-tunes and LoRA experts the same way for the zoo and for Qwen2-VL-2B.

A model reference is a local folder or a hub id. An adapter folder (adapter_config.json)
loads on its base; everything else loads with `Qwen2VLForConditionalGeneration`.
peft's "missing adapter keys" warning is turned into an error: an adapter that loads
with missing keys runs silently untrained.
"""

from __future__ import annotations

import json
import logging
import os
import warnings
from pathlib import Path
from typing import Any

import torch

from graft_ui.models.lora_io import check_adapter_base
from graft_ui.models.manifest import ModelEntry, looks_like_hub_id

log = logging.getLogger(__name__)


def resolve_device(device: str | torch.device = "auto") -> torch.device:
    """`auto` is CUDA when present, else CPU. An unavailable CUDA request is an error."""
    device = str(device)
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise ValueError(f"device={device!r} was asked for but CUDA is not available on this machine")
    if device != "cpu" and not device.startswith("cuda"):
        raise ValueError(f"device={device!r} is not 'auto', 'cpu' or 'cuda[:N]'")
    return torch.device(device)


def device_label(device: torch.device) -> str:
    if device.type == "cuda":
        return f"CUDA: {torch.cuda.get_device_name(device)}"
    return "CPU"


def check_reference(ref: str | Path) -> str:
    """A usable local folder or hub id, else a clear error (offline hub ids fail fast)."""
    ref = str(ref)
    if Path(ref).exists():
        if not Path(ref).is_dir():
            raise ValueError(f"model reference {ref!r} is a file; expected a model or adapter folder")
        return ref
    if not looks_like_hub_id(ref):
        raise FileNotFoundError(f"model folder {ref!r} does not exist")
    if os.environ.get("HF_HUB_OFFLINE", "0") not in ("0", "", "false", "False"):
        from huggingface_hub import try_to_load_from_cache

        if try_to_load_from_cache(ref, "config.json") is None and try_to_load_from_cache(ref, "adapter_config.json") is None:
            raise FileNotFoundError(
                f"hub id {ref!r} is not in the local cache and hub downloads are off (HF_HUB_OFFLINE=1); "
                "download it on a connected machine or point to a local folder"
            )
    return ref


def local_folder(ref: str | Path) -> Path:
    """A local folder for a folder path or hub id (hub ids come from the HF cache/hub)."""
    ref = check_reference(ref)
    if Path(ref).is_dir():
        return Path(ref)
    from huggingface_hub import snapshot_download

    offline = os.environ.get("HF_HUB_OFFLINE", "0") not in ("0", "", "false", "False")
    try:
        return Path(snapshot_download(ref, local_files_only=offline))
    except Exception as exc:  # huggingface_hub raises several unrelated types
        raise FileNotFoundError(f"could not get {ref!r} from the hub cache: {exc}") from None


def is_adapter(ref: str | Path) -> bool:
    return Path(ref, "adapter_config.json").is_file()


def adapter_config(ref: str | Path) -> dict[str, Any]:
    path = Path(ref, "adapter_config.json")
    try:
        return json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise ValueError(f"adapter config {str(path)!r} is unreadable: {exc}") from None


def load_processor(ref: str | Path, base: str | Path | None = None):
    """The processor of a model folder; adapter folders fall back to their base's."""
    from transformers import AutoProcessor

    ref = check_reference(ref)
    if is_adapter(ref) and not Path(ref, "preprocessor_config.json").is_file():
        ref = check_reference(base or adapter_config(ref).get("base_model_name_or_path"))
    return AutoProcessor.from_pretrained(ref)


def _load_full(ref: str, device: torch.device, dtype: torch.dtype):
    from transformers import Qwen2VLForConditionalGeneration

    try:
        model = Qwen2VLForConditionalGeneration.from_pretrained(ref, dtype=dtype)
    except OSError as exc:
        raise ValueError(f"could not load a Qwen2-VL model from {ref!r}: {exc}") from None
    return model.to(device).eval()


def attach_adapter(model, adapter_ref: str | Path, name: str, *, allow_base_mismatch: bool = False,
                   **override):
    """Load an adapter into `model` (a plain model or a PeftModel) under `name`; raises on missing
    keys, and when the adapter records a different base than the one `model` was loaded from
    (`check_adapter_base`, the merge engine's rule) unless `allow_base_mismatch`."""
    from peft import PeftModel

    adapter_ref = check_reference(adapter_ref)
    cfg = adapter_config(adapter_ref)
    loaded_from = getattr(getattr(model, "config", None), "_name_or_path", None) or None
    check_adapter_base(adapter_ref, cfg.get("base_model_name_or_path"), loaded_from, origin="the base it is put on",
                       allow_mismatch=allow_base_mismatch, **override)
    if cfg.get("peft_type") != "LORA":
        raise ValueError(f"adapter {adapter_ref!r} has peft_type={cfg.get('peft_type')!r}; only LORA is supported")
    if cfg.get("use_dora"):
        raise ValueError(f"adapter {adapter_ref!r} is a DoRA adapter; DoRA is not supported")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        if isinstance(model, PeftModel):
            result = model.load_adapter(adapter_ref, adapter_name=name)
            missing = [k for k in result.missing_keys if "lora_" in k and f".{name}." in k]
        else:
            model = PeftModel.from_pretrained(model, adapter_ref, adapter_name=name)
            missing = []
    for w in caught:
        if "missing adapter keys" in str(w.message):
            missing.append(str(w.message))
    if missing:
        raise ValueError(f"adapter {adapter_ref!r} loaded with missing adapter keys (it would run untrained): {missing[:5]}")
    return model.eval()


def load_model(
    ref: str | Path | ModelEntry,
    base: str | Path | ModelEntry | None = None,
    device: str | torch.device = "cpu",
    dtype: torch.dtype = torch.float32,
    *,
    allow_base_mismatch: bool = False,
):
    """A ready-to-run model for a full folder, or an adapter folder on `base` (which must be the
    base the adapter records, unless `allow_base_mismatch`)."""
    ref = ref.path if isinstance(ref, ModelEntry) else str(ref)
    base = base.path if isinstance(base, ModelEntry) else base
    device = resolve_device(device)
    ref = check_reference(ref)
    if not is_adapter(ref):
        log.info("loading model %s on %s", ref, device)
        return _load_full(ref, device, dtype)
    base = base or adapter_config(ref).get("base_model_name_or_path")
    if not base:
        raise ValueError(f"adapter {ref!r} names no base model; pass base=")
    log.info("loading adapter %s on base %s (%s)", ref, base, device)
    model = _load_full(check_reference(base), device, dtype)
    return attach_adapter(model, ref, "default", allow_base_mismatch=allow_base_mismatch)
