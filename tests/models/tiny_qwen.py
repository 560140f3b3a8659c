"""Helpers for the tiny random Qwen2-VL the model tests build (see conftest.py).

Independent of the demo zoo: text hidden 64, 3 layers, 4 heads / 2 KV heads (head_dim 16,
mrope_section [2, 3, 3] sums to head_dim / 2), vision depth 2, embed 32, merged into the
text hidden size 64.
"""

from __future__ import annotations

from pathlib import Path

import torch

TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj", "qkv", "fc1"]


def tiny_config():
    from transformers import Qwen2VLConfig

    return Qwen2VLConfig(
        text_config=dict(
            vocab_size=128, hidden_size=64, intermediate_size=96, num_hidden_layers=3, num_attention_heads=4,
            num_key_value_heads=2, max_position_embeddings=256, bos_token_id=1, eos_token_id=2, pad_token_id=0,
            rope_parameters={"rope_type": "default", "mrope_section": [2, 3, 3], "rope_theta": 10000.0},
        ),
        vision_config=dict(depth=2, embed_dim=32, hidden_size=64, num_heads=2, mlp_ratio=2, patch_size=14,
                           spatial_merge_size=2, temporal_patch_size=2),
        image_token_id=120, video_token_id=121, vision_start_token_id=122, vision_end_token_id=123,
    )


def load_tiny(path):
    from transformers import Qwen2VLForConditionalGeneration

    return Qwen2VLForConditionalGeneration.from_pretrained(str(path), dtype=torch.float32).eval()


def perturbed(base_dir: Path, out: Path, seed: int, scale: float, **save_kw) -> Path:
    model = load_tiny(base_dir)
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn(p.shape, generator=g) * scale * (1 + p.abs().mean()))
    model.save_pretrained(str(out), **save_kw)
    return out


def make_adapter(base_dir: Path, out: Path, seed: int, **cfg) -> Path:
    from peft import LoraConfig, get_peft_model

    torch.manual_seed(seed)
    model = load_tiny(base_dir)
    pm = get_peft_model(model, LoraConfig(init_lora_weights=False, **cfg))
    g = torch.Generator().manual_seed(seed + 1)
    with torch.no_grad():
        for name, p in pm.named_parameters():
            if "lora_B" in name:
                p.copy_(torch.randn(p.shape, generator=g) * 0.05)
    pm.save_pretrained(str(out))
    return out


