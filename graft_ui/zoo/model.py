"""The zoo's tiny Qwen2-VL: stock `Qwen2VLConfig` / `Qwen2VLForConditionalGeneration`.

Shapes follow Qwen2-VL's rules at a small scale: the vision merger's output
(`vision_config.hidden_size`) equals the text `hidden_size`; `mrope_section` sums to
head_dim / 2 in Qwen2-VL's 1 : 1.5 : 1.5 split (16, 24, 24 for head_dim 128); the image /
video / vision-start / vision-end ids are the tokenizer's.
"""

from __future__ import annotations

import torch

from graft_ui.zoo.profiles import ModelSize
from graft_ui.zoo.tokenizer import special_token_ids


def mrope_section(head_dim: int) -> list[int]:
    half = head_dim // 2
    t = half // 4  # Qwen2-VL-2B: head_dim 128 -> [16, 24, 24]
    h = (half - t) // 2
    return [t, h, half - t - h]


def make_config(size: ModelSize, tokenizer):
    from transformers import Qwen2VLConfig

    ids = special_token_ids(tokenizer)
    head_dim = size.hidden_size // size.num_attention_heads
    if head_dim * size.num_attention_heads != size.hidden_size:
        raise ValueError(f"hidden_size={size.hidden_size} is not divisible by num_attention_heads={size.num_attention_heads}")
    vocab = len(tokenizer)
    vocab += -vocab % 64  # padded like Qwen's embedding tables; extra rows are never produced by the tokenizer
    section = mrope_section(head_dim)
    text = dict(
        vocab_size=vocab,
        hidden_size=size.hidden_size,
        intermediate_size=size.intermediate_size,
        num_hidden_layers=size.num_hidden_layers,
        num_attention_heads=size.num_attention_heads,
        num_key_value_heads=size.num_key_value_heads,
        max_position_embeddings=2048,
        max_window_layers=size.num_hidden_layers,
        rms_norm_eps=1e-6,
        rope_parameters={"rope_type": "default", "rope_theta": 1000000.0, "mrope_section": section},
        bos_token_id=ids["<|endoftext|>"],
        eos_token_id=ids["<|im_end|>"],
        pad_token_id=ids["<|endoftext|>"],
    )
    vision = dict(
        depth=size.vision_depth,
        embed_dim=size.vision_embed_dim,
        hidden_size=size.hidden_size,  # merger output = text hidden size
        num_heads=size.vision_num_heads,
        mlp_ratio=4,
        patch_size=14,
        spatial_merge_size=2,
        temporal_patch_size=2,
        in_channels=3,
    )
    config = Qwen2VLConfig(
        text_config=text,
        vision_config=vision,
        image_token_id=ids["<|image_pad|>"],
        video_token_id=ids["<|video_pad|>"],
        vision_start_token_id=ids["<|vision_start|>"],
        vision_end_token_id=ids["<|vision_end|>"],
        tie_word_embeddings=False,
    )
    config.architectures = ["Qwen2VLForConditionalGeneration"]
    return config


def make_model(size: ModelSize, tokenizer, seed: int):
    """A freshly initialised tiny Qwen2-VL (deterministic in `seed`)."""
    from transformers import GenerationConfig, Qwen2VLForConditionalGeneration

    config = make_config(size, tokenizer)
    torch.manual_seed(seed)
    model = Qwen2VLForConditionalGeneration(config)
    ids = special_token_ids(tokenizer)
    model.generation_config = GenerationConfig(
        bos_token_id=ids["<|endoftext|>"],
        eos_token_id=[ids["<|im_end|>"], ids["<|endoftext|>"]],
        pad_token_id=ids["<|endoftext|>"],
        do_sample=False,
    )
    return model
