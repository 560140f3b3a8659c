"""A tiny random Qwen2-VL with full fine-tunes and peft LoRA adapters, built once per session.

Independent of the demo zoo; see tiny_qwen.py for the shapes.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch

from tiny_qwen import TARGETS, make_adapter, perturbed, tiny_config


@pytest.fixture(scope="session")
def zoo(tmp_path_factory):
    """Paths: base, full experts (one sharded), adapters with unequal ranks/alphas/rsLoRA."""
    from transformers import Qwen2VLForConditionalGeneration

    root = tmp_path_factory.mktemp("tinyzoo")
    torch.manual_seed(0)
    base = root / "base"
    Qwen2VLForConditionalGeneration(tiny_config()).save_pretrained(str(base))
    (base / "tokenizer_config.json").write_text(json.dumps({"model_max_length": 256}))
    z = {"root": root, "base": base}
    z["full_a"] = perturbed(base, root / "full-a", 1, 0.02)
    z["full_b"] = perturbed(base, root / "full-b", 2, 0.02, max_shard_size="200KB")  # sharded + index
    z["full_c"] = perturbed(base, root / "full-c", 3, 0.03)
    for name in ("full_a", "full_c"):
        shutil.copy(base / "tokenizer_config.json", z[name] / "tokenizer_config.json")
    z["lora_a"] = make_adapter(base, root / "lora-a", 10, r=4, lora_alpha=8, target_modules=TARGETS)
    # unequal rank and alpha, rsLoRA, per-module patterns, and no down_proj (a missing module)
    z["lora_b"] = make_adapter(
        base, root / "lora-b", 20, r=6, lora_alpha=3, use_rslora=True,
        target_modules=[t for t in TARGETS if t != "down_proj"],
        rank_pattern={"v_proj": 2}, alpha_pattern={"o_proj": 5},
    )
    z["lora_c"] = make_adapter(base, root / "lora-c", 30, r=2, lora_alpha=2, target_modules=["q_proj", "v_proj", "up_proj"])
    z["dora"] = make_adapter(base, root / "dora", 40, r=2, lora_alpha=2, target_modules=["q_proj"], use_dora=True)
    other = root / "other-base"
    torch.manual_seed(5)
    Qwen2VLForConditionalGeneration(tiny_config()).save_pretrained(str(other))
    z["other_base"] = other
    z["lora_other"] = make_adapter(other, root / "lora-other", 50, r=4, lora_alpha=8, target_modules=["q_proj"])
    return z


@pytest.fixture
def make_recipe():
    """make_recipe(method, experts, **recipe keys) -> Recipe on the CPU, seed 0."""
    from graft_ui.recipe import Recipe

    def make(method, experts, **kw):
        data = {"method": method, "experts": [e if isinstance(e, dict) else str(e) for e in experts],
                "device": "cpu", "seed": 0}
        data.update({k: (str(v) if isinstance(v, Path) else v) for k, v in kw.items()})
        return Recipe.from_dict(data)

    return make
