"""Fixtures for the analysis tests: a tiny random Qwen2-VL and a mini manifest built in seconds.

The mini manifest mirrors the zoo's layout (base folder with processor, LoRA and full
experts, per-domain eval JSONL with an image sample) at a size that keeps the whole
suite fast on two shared cores; zoo-dependent tests use `graft_ui.zoo.ensure_zoo("ci")`.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

TEXTS = [
    "How many circles are there? 3", "What is 2 + 5? 7", "def add(a, b): return a + b",
    "The revenue grew by 12 percent.", "The patient has a fever of 39 degrees.",
    "You are a helpful assistant.", "system user assistant", "Count the squares in the picture.",
] * 20

SIZE = dict(vocab_size=320, hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
            num_key_value_heads=2, vision_depth=1, vision_embed_dim=32, vision_num_heads=2)


def _samples(domain: str, n: int, image_dir: Path) -> list[dict]:
    from PIL import Image, ImageDraw

    out = []
    for i in range(n):
        sid = f"{domain}-eval-{i:03d}"
        if i % 3 == 0:
            img = Image.new("RGB", (60, 60), (255, 255, 255))
            ImageDraw.Draw(img).ellipse((10 + i, 10, 40 + i, 40), fill=(200, 30, 30))
            img.save(image_dir / f"{sid}.png")
            content = [{"type": "image", "image": f"images/{sid}.png"},
                       {"type": "text", "text": "How many circles are there?"}]
            answer = "1"
        else:
            content = [{"type": "text", "text": f"What is {i} + {i + 2}?" if domain == "math" else f"Describe case {i}."}]
            answer = str(2 * i + 2) if domain == "math" else f"case {i} is fine"
        out.append({"id": sid, "domain": domain, "messages": [{"role": "user", "content": content}],
                    "answer": answer, "scorer": "exact", "tests": None})
    return out


@pytest.fixture(scope="session")
def mini_manifest(tmp_path_factory) -> Path:
    """A manifest.yaml with base, {math,medical}-{lora,full} experts and eval sets (6 samples each)."""
    import yaml
    from peft import LoraConfig, get_peft_model

    from graft_ui.zoo.model import make_model
    from graft_ui.zoo.profiles import ModelSize
    from graft_ui.zoo.tokenizer import build_processor, build_tokenizer

    root = tmp_path_factory.mktemp("mini_zoo")
    tok = build_tokenizer(TEXTS, SIZE["vocab_size"])
    proc = build_processor(tok)
    base = make_model(ModelSize(**SIZE), tok, seed=0)
    base.save_pretrained(root / "base")
    proc.save_pretrained(root / "base")
    experts = []
    for j, domain in enumerate(("math", "medical")):
        # full expert: the base with a seeded perturbation of the language model's projections
        full = make_model(ModelSize(**SIZE), tok, seed=0)
        g = torch.Generator().manual_seed(100 + j)
        with torch.no_grad():
            for name, p in full.named_parameters():
                if "language_model.layers" in name and name.endswith("proj.weight"):
                    p.add_(0.05 * torch.randn(p.shape, generator=g))
        full.save_pretrained(root / f"{domain}-full")
        proc.save_pretrained(root / f"{domain}-full")
        # LoRA expert: random A and B (init_lora_weights=False), so the adapter branch is non-zero
        torch.manual_seed(200 + j)
        peft = get_peft_model(make_model(ModelSize(**SIZE), tok, seed=0), LoraConfig(
            r=4, lora_alpha=8, lora_dropout=0.0, init_lora_weights=False,
            target_modules=r".*language_model\.layers\.\d+\.(self_attn\.(q_proj|k_proj|v_proj|o_proj)|mlp\.(gate_proj|up_proj|down_proj))",
        ))
        with torch.no_grad():
            for name, p in peft.named_parameters():
                if "lora_B" in name:
                    p.mul_(0.2 * (j + 1))
        peft.save_pretrained(root / f"{domain}-lora")
        cfg_path = root / f"{domain}-lora" / "adapter_config.json"
        cfg = json.loads(cfg_path.read_text())
        cfg["base_model_name_or_path"] = str(root / "base")
        cfg_path.write_text(json.dumps(cfg))
        experts += [{"name": f"{domain}-lora", "domain": domain, "kind": "lora", "path": f"{domain}-lora"},
                    {"name": f"{domain}-full", "domain": domain, "kind": "full", "path": f"{domain}-full"}]
        ddir = root / "data" / domain
        (ddir / "images").mkdir(parents=True)
        with open(ddir / "eval.jsonl", "w") as fh:
            for s in _samples(domain, 6, ddir / "images"):
                fh.write(json.dumps(s) + "\n")
    manifest = {"name": "mini", "base": {"name": "base", "path": "base"}, "experts": experts,
                "datasets": {d: {"eval": f"data/{d}/eval.jsonl"} for d in ("math", "medical")}}
    (root / "manifest.yaml").write_text(yaml.safe_dump(manifest, sort_keys=False))
    return root / "manifest.yaml"


@pytest.fixture(scope="session")
def ci_zoo() -> Path:
    """The zoo's ci profile; skipped (with the reason) until graft_ui.zoo.ensure_zoo exists and builds."""
    try:
        from graft_ui.zoo import ensure_zoo
    except ImportError as exc:
        pytest.skip(f"graft_ui.zoo.ensure_zoo is not available yet ({exc})")
    try:
        return Path(ensure_zoo("ci", progress=False))
    except Exception as exc:  # a zoo that cannot build here is an environment problem for these tests
        pytest.skip(f"ensure_zoo('ci') failed: {exc}")


def tiny_qwen2vl(seed: int = 0):
    """A random tiny Qwen2-VL (no tokenizer needed: tests feed input ids directly)."""
    from transformers import Qwen2VLConfig, Qwen2VLForConditionalGeneration

    cfg = Qwen2VLConfig(
        text_config=dict(vocab_size=128, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=256,
                         rope_parameters={"rope_type": "default", "rope_theta": 10000.0, "mrope_section": [2, 1, 1]},
                         bos_token_id=0, eos_token_id=1, pad_token_id=0),
        vision_config=dict(depth=1, embed_dim=16, hidden_size=32, num_heads=2, mlp_ratio=2, patch_size=14,
                           spatial_merge_size=2, temporal_patch_size=2, in_channels=3),
        image_token_id=120, video_token_id=121, vision_start_token_id=122, vision_end_token_id=123,
    )
    torch.manual_seed(seed)
    return Qwen2VLForConditionalGeneration(cfg).eval()


@pytest.fixture
def tiny_model():
    return tiny_qwen2vl()
