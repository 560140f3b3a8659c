"""Model probes on a few unlabeled prompts: greedy answers, teacher-forced log-probs, prompt-loss gradients.

Shared by the merge preview (preview.py) and the gradient distance (gradients.py). Prompts are
encoded once (prompt + generation prompt, images included) and batched with left padding.

    answers = greedy(model, batch_items, pad_id, eos, max_new)     per prompt: the answer's token ids
                                                                   (up to and with the first end token)
    logp    = answer_logprobs(model, items, answers, pad_id)       per prompt: (T, V) log-probs of the
                                                                   model at each of those tokens, given
                                                                   the prompt and the earlier tokens
    g       = prompt_gradient(model, items, pad_id)                flat gradient (float32) of the
                                                                   next-token loss on the prompt text
                                                                   (image tokens and padding masked) with
                                                                   respect to the language model's fused
                                                                   module weights
"""

from __future__ import annotations

from typing import Sequence

import torch

from graft_ui.analysis.data import iter_inputs
from graft_ui.models.keys import LANGUAGE, parse_module
from graft_ui.recipe import ALL_MODULES

BATCH = 16
_KEYS = ("input_ids", "attention_mask", "mm_token_type_ids")


def encode(processor, samples) -> list[dict]:
    """One item per sample: input_ids (L,), attention_mask, mm_token_type_ids, images' pixel values."""
    items = []
    for inp in iter_inputs(processor, samples):
        item = {k: inp[k][0] for k in _KEYS if k in inp}
        item.setdefault("mm_token_type_ids", torch.zeros_like(item["input_ids"]))
        if "pixel_values" in inp:
            item["pixel_values"], item["image_grid_thw"] = inp["pixel_values"], inp["image_grid_thw"]
        items.append(item)
    return items


def end_tokens(processor) -> tuple[int, list[int]]:
    """(pad id, end-of-answer ids) of the zoo's chat template."""
    tok = processor.tokenizer
    pad = tok.pad_token_id if tok.pad_token_id is not None else tok.eos_token_id
    return pad, [tok.convert_tokens_to_ids("<|im_end|>"), tok.convert_tokens_to_ids("<|endoftext|>")]


def _batch(items: Sequence[dict], pad_id: int, model) -> dict:
    """Left-padded batch on the model's device; images in the model's dtype (float32 on CPU, maybe bf16 on a GPU)."""
    from graft_ui.zoo.train import collate

    p = next(model.parameters())
    batch = {k: v.to(p.device) for k, v in collate(items, pad_id, left=True).items()}
    if "pixel_values" in batch:
        batch["pixel_values"] = batch["pixel_values"].to(p.dtype)
    return batch


@torch.no_grad()
def greedy(model, items: Sequence[dict], pad_id: int, eos: Sequence[int], max_new: int) -> list[list[int]]:
    """Greedy answer token ids per item, cut after the first end token."""
    out: list[list[int]] = []
    for s in range(0, len(items), BATCH):
        chunk = items[s:s + BATCH]
        batch = _batch(chunk, pad_id, model)
        gen = model.generate(**batch, max_new_tokens=max_new, do_sample=False, eos_token_id=list(eos),
                             pad_token_id=pad_id)[:, batch["input_ids"].shape[1]:]
        for row in gen.tolist():
            cut = next((i + 1 for i, t in enumerate(row) if t in eos), len(row))
            out.append(row[:cut])
    return out


@torch.no_grad()
def answer_logprobs(model, items: Sequence[dict], answers: Sequence[Sequence[int]], pad_id: int) -> list[torch.Tensor]:
    """Per item, (T, V) float32 log-probs of the model at the answer's T tokens (teacher forced), on CPU."""
    out: list[torch.Tensor] = []
    for s in range(0, len(items), BATCH):
        chunk, ans = items[s:s + BATCH], answers[s:s + BATCH]
        ext = []
        for it, a in zip(chunk, ans):
            t = torch.tensor(list(a), dtype=it["input_ids"].dtype)
            ext.append({**it, "input_ids": torch.cat([it["input_ids"], t]),
                        "attention_mask": torch.cat([it["attention_mask"], torch.ones_like(t)]),
                        "mm_token_type_ids": torch.cat([it["mm_token_type_ids"], torch.zeros_like(t)])})
        batch = _batch(ext, pad_id, model)
        logits = model(**batch).logits  # (b, n, V)
        n = logits.shape[1]
        for i, (it, a) in enumerate(zip(chunk, ans)):
            p, t = len(it["input_ids"]), len(a)
            start = n - (p + t) + p - 1  # left padding: the row ends at n; token j is predicted at its position - 1
            out.append(torch.log_softmax(logits[i, start:start + t].float(), -1).cpu())
    return out


def fused_weights(model) -> list[torch.nn.Parameter]:
    """The language model's fused-module weights (a LoRA model's base weights: the gradient of the loss
    with respect to the effective weight W + s B A equals the one with respect to W)."""
    out = []
    for name, p in model.named_parameters():
        if not name.endswith(".weight") or "lora_" in name:
            continue
        key = parse_module(name[: -len(".weight")].replace(".base_layer", ""))
        if key is not None and key.tower == LANGUAGE and key.module in ALL_MODULES:
            out.append(p)
    if not out:
        raise ValueError("the model has no language-model projection weights to take a gradient of")
    return out


def prompt_gradient(model, items: Sequence[dict], pad_id: int) -> torch.Tensor:
    """Flat float32 gradient (CPU) of the mean next-token loss over the prompts' text tokens."""
    params = fused_weights(model)
    was = [p.requires_grad for p in params]
    for p in params:
        p.requires_grad_(True)
    grads = [torch.zeros_like(p) for p in params]
    try:
        for s in range(0, len(items), BATCH):
            chunk = items[s:s + BATCH]
            batch = _batch(chunk, pad_id, model)
            labels = batch["input_ids"].clone()
            labels[(batch["attention_mask"] == 0) | (batch["mm_token_type_ids"] != 0)] = -100
            loss = model(**batch, labels=labels).loss * (len(chunk) / len(items))  # mean over all prompts
            for g, gp in zip(grads, torch.autograd.grad(loss, params)):
                g += gp
    finally:
        for p, w in zip(params, was):
            p.requires_grad_(w)
    return torch.cat([g.flatten().float().cpu() for g in grads])
