"""The zoo's tokenizer and processor, made offline the way Qwen2-VL's are shaped.

A byte-level BPE is trained locally (tokenizers library) with Qwen2's pre-tokenizer
(the same split regex, so digits are single tokens), wrapped as the stock
`Qwen2Tokenizer` with Qwen2's special tokens in Qwen2's order, and combined with a stock
`Qwen2VLImageProcessor` / `Qwen2VLVideoProcessor` into a `Qwen2VLProcessor` carrying the
Qwen2-VL-2B-Instruct chat template. Image sizes are capped small so sequences stay short.
"""

from __future__ import annotations

import logging
from typing import Iterable

log = logging.getLogger(__name__)

# The chat template of Qwen/Qwen2-VL-2B-Instruct (chat_template.json), verbatim.
CHAT_TEMPLATE = (
    "{% set image_count = namespace(value=0) %}{% set video_count = namespace(value=0) %}"
    "{% for message in messages %}{% if loop.first and message['role'] != 'system' %}"
    "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n{% endif %}"
    "<|im_start|>{{ message['role'] }}\n"
    "{% if message['content'] is string %}{{ message['content'] }}<|im_end|>\n"
    "{% else %}{% for content in message['content'] %}"
    "{% if content['type'] == 'image' or 'image' in content or 'image_url' in content %}"
    "{% set image_count.value = image_count.value + 1 %}"
    "{% if add_vision_id %}Picture {{ image_count.value }}: {% endif %}"
    "<|vision_start|><|image_pad|><|vision_end|>"
    "{% elif content['type'] == 'video' or 'video' in content %}"
    "{% set video_count.value = video_count.value + 1 %}"
    "{% if add_vision_id %}Video {{ video_count.value }}: {% endif %}"
    "<|vision_start|><|video_pad|><|vision_end|>"
    "{% elif 'text' in content %}{{ content['text'] }}{% endif %}{% endfor %}<|im_end|>\n"
    "{% endif %}{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)

# Qwen2's special tokens in their Qwen2 order (151643 ... 151656 in the real vocabulary).
SPECIAL_TOKENS = (
    "<|endoftext|>",
    "<|im_start|>",
    "<|im_end|>",
    "<|object_ref_start|>",
    "<|object_ref_end|>",
    "<|box_start|>",
    "<|box_end|>",
    "<|quad_start|>",
    "<|quad_end|>",
    "<|vision_start|>",
    "<|vision_end|>",
    "<|vision_pad|>",
    "<|image_pad|>",
    "<|video_pad|>",
)

# Pixel bounds of the zoo's image processor: 56x56 .. 112x112 (4 .. 16 merged image tokens).
MIN_PIXELS = 56 * 56
MAX_PIXELS = 112 * 112


def train_bpe(texts: Iterable[str], vocab_size: int):
    """A byte-level BPE (vocab + merges) trained on `texts` with Qwen2's pre-tokenizer."""
    from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers.models.qwen2.tokenization_qwen2 import PRETOKENIZE_REGEX

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.Split(Regex(PRETOKENIZE_REGEX), behavior="isolated", invert=False),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
        ]
    )
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        min_frequency=2,
        show_progress=False,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        special_tokens=[],
    )
    tok.train_from_iterator(texts, trainer=trainer)
    model = tok.model
    # tokenizers exposes vocab directly; merges come from the model's serialisation
    import json

    data = json.loads(tok.to_str())
    vocab = data["model"]["vocab"]
    merges = [tuple(m.split(" ")) if isinstance(m, str) else tuple(m) for m in data["model"]["merges"]]
    del model
    return vocab, merges


def build_tokenizer(texts: Iterable[str], vocab_size: int):
    """A stock `Qwen2Tokenizer` over a locally trained BPE, with Qwen2-VL's specials and template."""
    from tokenizers import AddedToken
    from transformers import Qwen2Tokenizer

    vocab, merges = train_bpe(texts, vocab_size)
    tokenizer = Qwen2Tokenizer(
        vocab=vocab,
        merges=merges,
        unk_token=None,
        eos_token="<|im_end|>",
        pad_token="<|endoftext|>",
        errors="replace",
        clean_up_tokenization_spaces=False,
        split_special_tokens=False,
        model_max_length=32768,
    )
    tokenizer.add_special_tokens(
        {"additional_special_tokens": [AddedToken(t, special=True, normalized=False) for t in SPECIAL_TOKENS]}
    )
    tokenizer.chat_template = CHAT_TEMPLATE
    ids = tokenizer.convert_tokens_to_ids(list(SPECIAL_TOKENS))
    if len(set(ids)) != len(SPECIAL_TOKENS) or any(i is None or i < len(vocab) for i in ids):
        raise ValueError(f"special tokens did not get fresh ids: {dict(zip(SPECIAL_TOKENS, ids))}")
    log.info("tokenizer: %d BPE entries + %d special tokens", len(vocab), len(SPECIAL_TOKENS))
    return tokenizer


def build_processor(tokenizer):
    """The stock `Qwen2VLProcessor` with small pixel bounds (patch 14, merge 2)."""
    from transformers import Qwen2VLImageProcessor, Qwen2VLProcessor, Qwen2VLVideoProcessor

    image_processor = Qwen2VLImageProcessor(min_pixels=MIN_PIXELS, max_pixels=MAX_PIXELS, patch_size=14,
                                            temporal_patch_size=2, merge_size=2)
    video_processor = Qwen2VLVideoProcessor(min_pixels=MIN_PIXELS, max_pixels=MAX_PIXELS, patch_size=14,
                                            temporal_patch_size=2, merge_size=2)
    return Qwen2VLProcessor(image_processor=image_processor, tokenizer=tokenizer,
                            video_processor=video_processor, chat_template=CHAT_TEMPLATE)


def special_token_ids(tokenizer) -> dict[str, int]:
    return dict(zip(SPECIAL_TOKENS, tokenizer.convert_tokens_to_ids(list(SPECIAL_TOKENS))))
