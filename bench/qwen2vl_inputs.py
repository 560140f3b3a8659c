"""Qwen2-VL-2B-shaped random inputs for bench/bench_merge.py: checkpoints and LoRA adapters.

`write_checkpoints` writes a base and experts (base + small noise) in bf16 with the real
Qwen2-VL-2B tensor names and shapes; `write_adapters` two seeded LoRA adapters (different
alphas) on the 7 language projections of every layer. Both skip folders already written with
the same settings (a stamp file), so repeated runs reuse them.
"""

from __future__ import annotations

import json
import math
import shutil
import time
from pathlib import Path

TEXT = dict(hidden=1536, inter=8960, heads=12, kv_heads=2, vocab=151936)
VISION = dict(embed=1280, mlp=5120, patch=(3, 2, 14, 14), merge=2)


def qwen2vl_2b_specs(layers: int = 28, vision_depth: int = 32):
    """(name, shape) of every tensor of Qwen2-VL-2B-Instruct in hub order (tied embeddings: no lm_head)."""
    h, inter, kv = TEXT["hidden"], TEXT["inter"], TEXT["hidden"] // TEXT["heads"] * TEXT["kv_heads"]
    e, m = VISION["embed"], VISION["mlp"]
    specs = [("model.embed_tokens.weight", (TEXT["vocab"], h))]
    for i in range(layers):
        p = f"model.layers.{i}."
        specs += [
            (p + "input_layernorm.weight", (h,)),
            (p + "self_attn.q_proj.weight", (h, h)), (p + "self_attn.q_proj.bias", (h,)),
            (p + "self_attn.k_proj.weight", (kv, h)), (p + "self_attn.k_proj.bias", (kv,)),
            (p + "self_attn.v_proj.weight", (kv, h)), (p + "self_attn.v_proj.bias", (kv,)),
            (p + "self_attn.o_proj.weight", (h, h)),
            (p + "post_attention_layernorm.weight", (h,)),
            (p + "mlp.gate_proj.weight", (inter, h)), (p + "mlp.up_proj.weight", (inter, h)),
            (p + "mlp.down_proj.weight", (h, inter)),
        ]
    specs.append(("model.norm.weight", (h,)))
    specs.append(("visual.patch_embed.proj.weight", (e,) + VISION["patch"]))
    for i in range(vision_depth):
        p = f"visual.blocks.{i}."
        specs += [
            (p + "norm1.weight", (e,)), (p + "norm1.bias", (e,)), (p + "norm2.weight", (e,)), (p + "norm2.bias", (e,)),
            (p + "attn.qkv.weight", (3 * e, e)), (p + "attn.qkv.bias", (3 * e,)),
            (p + "attn.proj.weight", (e, e)), (p + "attn.proj.bias", (e,)),
            (p + "mlp.fc1.weight", (m, e)), (p + "mlp.fc1.bias", (m,)),
            (p + "mlp.fc2.weight", (e, m)), (p + "mlp.fc2.bias", (e,)),
        ]
    mh = e * VISION["merge"] ** 2
    specs += [
        ("visual.merger.ln_q.weight", (e,)), ("visual.merger.ln_q.bias", (e,)),
        ("visual.merger.mlp.0.weight", (mh, mh)), ("visual.merger.mlp.0.bias", (mh,)),
        ("visual.merger.mlp.2.weight", (h, mh)), ("visual.merger.mlp.2.bias", (h,)),
    ]
    return specs


def qwen2vl_config(layers: int, vision_depth: int) -> dict:
    return {
        "architectures": ["Qwen2VLForConditionalGeneration"], "model_type": "qwen2_vl", "torch_dtype": "bfloat16",
        "hidden_size": 1536, "intermediate_size": 8960, "num_hidden_layers": layers, "num_attention_heads": 12,
        "num_key_value_heads": 2, "vocab_size": 151936, "tie_word_embeddings": True, "rms_norm_eps": 1e-6,
        "max_position_embeddings": 32768, "rope_theta": 1000000.0,
        "rope_scaling": {"type": "mrope", "mrope_section": [16, 24, 24]},
        "vision_config": {"depth": vision_depth, "embed_dim": 1280, "hidden_size": 1536, "mlp_ratio": 4,
                          "num_heads": 16, "in_chans": 3, "patch_size": 14, "spatial_merge_size": 2,
                          "temporal_patch_size": 2},
        "image_token_id": 151655, "video_token_id": 151656, "vision_start_token_id": 151652,
        "vision_end_token_id": 151653, "bos_token_id": 151643, "eos_token_id": 151645,
    }


def write_checkpoints(work: Path, n_experts: int, layers: int, vision_depth: int, log) -> list[Path]:
    """base + experts (base + small noise), bf16, streamed (one tensor at a time)."""
    import torch

    from graft_ui.models.checkpoint import ShardedWriter

    specs = qwen2vl_2b_specs(layers, vision_depth)
    names = ["base"] + [f"expert{i}" for i in range(1, n_experts + 1)]
    folders = [work / n for n in names]
    stamp = json.dumps({"layers": layers, "vision": vision_depth, "v": 1})
    todo = [f for f in folders if not (f / "stamp.json").is_file() or (f / "stamp.json").read_text() != stamp]
    if not todo:
        return folders
    t0 = time.perf_counter()
    for f in todo:
        shutil.rmtree(f, ignore_errors=True)
        f.mkdir(parents=True)
    writers = {f: ShardedWriter(f, [(n, torch.bfloat16, s) for n, s in specs], shard_bytes=4 << 30) for f in todo}
    g = torch.Generator().manual_seed(1234)
    for name, shape in specs:
        base = torch.randn(shape, generator=g).mul_(0.02)
        if name.endswith("norm.weight") or "norm1" in name or "norm2" in name or "ln_q" in name:
            base.add_(1.0)
        for i, f in enumerate(folders):
            t = base if i == 0 else base + torch.randn(shape, generator=g).mul_(0.002)
            if f in writers:
                writers[f].write(name, t.to(torch.bfloat16))
    for f, w in writers.items():
        w.close()
        (f / "config.json").write_text(json.dumps(qwen2vl_config(layers, vision_depth), indent=1))
        (f / "stamp.json").write_text(stamp)
    log(f"wrote {len(todo)} checkpoint(s) in {time.perf_counter() - t0:.0f} s")
    return folders


LORA_MODULES = [("self_attn.q_proj", "h", "h"), ("self_attn.k_proj", "kv", "h"), ("self_attn.v_proj", "kv", "h"),
                ("self_attn.o_proj", "h", "h"), ("mlp.gate_proj", "i", "h"), ("mlp.up_proj", "i", "h"),
                ("mlp.down_proj", "h", "i")]


LORA_DIMS = {"h": TEXT["hidden"], "kv": TEXT["hidden"] // TEXT["heads"] * TEXT["kv_heads"], "i": TEXT["inter"]}


def write_adapters(work: Path, base: Path, layers: int, rank: int, log, prefix: str = "lora") -> list[Path]:
    """Two adapters, seeded per adapter: those for N layers are the first N layers of any longer pair."""
    import torch
    from safetensors.torch import save_file

    out = []
    for j, alpha in enumerate((2 * rank, rank)):  # different alphas -> different scales
        folder = work / f"{prefix}{j + 1}"
        out.append(folder)
        stamp = json.dumps({"layers": layers, "rank": rank, "v": 1})
        if (folder / "stamp.json").is_file() and (folder / "stamp.json").read_text() == stamp:
            continue
        shutil.rmtree(folder, ignore_errors=True)
        folder.mkdir(parents=True)
        g = torch.Generator().manual_seed(99 + j)
        tensors = {}
        for i in range(layers):
            for mod, o, n in LORA_MODULES:
                p = f"base_model.model.model.layers.{i}.{mod}"
                tensors[p + ".lora_A.weight"] = torch.randn(rank, LORA_DIMS[n], generator=g) / math.sqrt(LORA_DIMS[n])
                tensors[p + ".lora_B.weight"] = torch.randn(LORA_DIMS[o], rank, generator=g) * 0.01
        save_file(tensors, str(folder / "adapter_model.safetensors"), metadata={"format": "pt"})
        cfg = {"peft_type": "LORA", "base_model_name_or_path": str(base), "r": rank, "lora_alpha": alpha,
               "target_modules": ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"],
               "lora_dropout": 0.0, "bias": "none", "use_rslora": False, "use_dora": False, "task_type": "CAUSAL_LM",
               "rank_pattern": {}, "alpha_pattern": {}, "fan_in_fan_out": False, "inference_mode": True}
        (folder / "adapter_config.json").write_text(json.dumps(cfg, indent=1))
        (folder / "stamp.json").write_text(stamp)
    log(f"adapters ready: {[str(p) for p in out]}")
    return out


def folder_bytes(folder: Path, suffix=".safetensors") -> int:
    return sum(p.stat().st_size for p in Path(folder).iterdir() if p.name.endswith(suffix))

