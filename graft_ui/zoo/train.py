"""Training for the zoo: encode chat samples once, then AdamW on the answer tokens only.

Samples are encoded the stock way (chat template -> qwen_vl_utils -> processor, as in
`graft_ui.models.inputs`) a single time; batches are padded on the right and fed to the
stock model forward, whose loss covers the assistant answer (labels elsewhere are -100).
"""

from __future__ import annotations

import logging
import math
from pathlib import Path
from typing import Callable, Sequence

import torch

log = logging.getLogger(__name__)

# the language model's projections, named as in Qwen2-VL LoRA experts; the vision tower's
# linears are called qkv / proj / fc1 / fc2 / mlp.N, so these names never match it
LORA_TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]


class _RopeIndex:
    """Qwen2-VL's own M-RoPE position code (`Qwen2VLModel.get_rope_index`), run without a model.

    The positions are integers that depend only on a sample's tokens and image grids, yet the
    stock forward recomputes them in a Python loop over every sample of every batch (a few
    per cent of a training step). Computed here once per sample with the same code, they are
    handed to the forward as `position_ids` (see `collate`): the same integers, so the same
    training, bit for bit.
    """

    def __init__(self, spatial_merge_size: int):
        from types import SimpleNamespace

        from transformers.models.qwen2_vl.modeling_qwen2_vl import Qwen2VLModel

        self.config = SimpleNamespace(vision_config=SimpleNamespace(spatial_merge_size=spatial_merge_size))
        self._model_cls = Qwen2VLModel

    def get_vision_position_ids(self, *args, **kwargs):
        return self._model_cls.get_vision_position_ids(self, *args, **kwargs)

    def __call__(self, input_ids: torch.Tensor, mm_token_type_ids: torch.Tensor, image_grid_thw: torch.Tensor):
        """(3, len) positions of one unpadded sample, as the batched forward gives its tokens."""
        pos, _ = self._model_cls.get_rope_index(self, input_ids[None], mm_token_type_ids[None],
                                                image_grid_thw=image_grid_thw)
        return pos[:, 0]


def encode_samples(processor, samples: Sequence[dict], root: str | Path, chunk: int = 64, progress=None) -> list[dict]:
    """Samples -> tensors (input_ids, labels, attention_mask, mm_token_type_ids[, pixels, rope_positions]).

    The stock path (chat template -> qwen_vl_utils -> processor) in chunks: one processor
    call per chunk is several times faster than one per sample, and gives the same ids.
    A sample with images also gets its M-RoPE positions (`_RopeIndex`).
    """
    from qwen_vl_utils import process_vision_info

    from graft_ui.models.inputs import resolve_messages

    tok = processor.tokenizer
    merge = processor.image_processor.merge_size ** 2
    rope = _RopeIndex(processor.image_processor.merge_size)
    out: list[dict] = []
    for c0 in range(0, len(samples), chunk):
        part = samples[c0:c0 + chunk]
        texts, images, answers = [], [], []
        for s in part:
            messages = resolve_messages(s["messages"], root)
            prompt = processor.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
            imgs, _ = process_vision_info(messages)
            images.extend(imgs or [])
            answers.append(s["answer"] + "<|im_end|>")
            texts.append(prompt + answers[-1])
        inputs = processor(text=texts, images=images or None, padding=True, return_tensors="pt")
        ans_ids = tok(answers, add_special_tokens=False)["input_ids"]
        grids = inputs.get("image_grid_thw")
        patch_counts = grids.prod(-1).tolist() if grids is not None else []
        pix_off, img_i = 0, 0
        for j, s in enumerate(part):
            mask = inputs["attention_mask"][j].bool()
            ids = inputs["input_ids"][j][mask]
            # the answer follows "<|im_start|>assistant\n", a pre-token boundary, so its ids are
            # the tail of the sequence; checked, because a wrong split would train on the prompt
            start = len(ids) - len(ans_ids[j])
            if ids[start:].tolist() != ans_ids[j]:
                raise ValueError(f"sample {s.get('id')!r}: answer tokens do not close the sequence")
            labels = ids.clone()
            labels[:start] = -100
            item = {
                "input_ids": ids,
                "labels": labels,
                "attention_mask": torch.ones_like(ids),
                "mm_token_type_ids": inputs["mm_token_type_ids"][j][mask],
            }
            n_img = int((ids == processor.image_token_id).sum())
            if n_img:
                take, k = [], 0
                while k < n_img:  # consume this sample's images in order
                    take.append(img_i)
                    k += patch_counts[img_i] // merge
                    img_i += 1
                n_patch = sum(patch_counts[i] for i in take)
                item["pixel_values"] = inputs["pixel_values"][pix_off:pix_off + n_patch]
                item["image_grid_thw"] = grids[take[0]:take[-1] + 1]
                item["rope_positions"] = rope(ids, item["mm_token_type_ids"], item["image_grid_thw"])
                pix_off += n_patch
            out.append(item)
        if progress is not None:
            progress(len(part))
    return out


def collate(items: Sequence[dict], pad_id: int, left: bool = False) -> dict:
    """Pad a list of encoded samples into one batch (right padding for training).

    A right-padded batch with images whose samples carry `rope_positions` gets `position_ids`
    laid out as `Qwen2VLModel.get_rope_index` lays them out for it (0 on padding, a text-only
    sample counting 0, 1, ...); a batch without images gets none, as the model then counts
    every column itself.
    """
    n = max(len(it["input_ids"]) for it in items)
    batch = {
        "input_ids": torch.full((len(items), n), pad_id, dtype=torch.long),
        "attention_mask": torch.zeros((len(items), n), dtype=torch.long),
        "mm_token_type_ids": torch.zeros((len(items), n), dtype=items[0]["mm_token_type_ids"].dtype),
    }
    if "labels" in items[0]:
        batch["labels"] = torch.full((len(items), n), -100, dtype=torch.long)
    for i, it in enumerate(items):
        k = len(it["input_ids"])
        sl = slice(n - k, n) if left else slice(0, k)
        batch["input_ids"][i, sl] = it["input_ids"]
        batch["attention_mask"][i, sl] = it["attention_mask"]
        batch["mm_token_type_ids"][i, sl] = it["mm_token_type_ids"]
        if "labels" in batch:
            batch["labels"][i, sl] = it["labels"]
    with_images = [it for it in items if "image_grid_thw" in it]
    if with_images:
        for key in ("pixel_values", "image_embeds"):  # (sum of patches, 1176) / (sum of image tokens, d)
            if key in with_images[0]:
                batch[key] = torch.cat([it[key] for it in with_images])
        batch["image_grid_thw"] = torch.cat([it["image_grid_thw"] for it in with_images])
        if not left and all("rope_positions" in it for it in with_images):
            pos = torch.zeros((3, len(items), n), dtype=batch["input_ids"].dtype)
            for i, it in enumerate(items):
                k = len(it["input_ids"])
                pos[:, i, :k] = it["rope_positions"] if "rope_positions" in it else torch.arange(k)
            batch["position_ids"] = pos
    return batch


def with_image_embeds(model, data: Sequence[dict]) -> list[dict]:
    """`data` with each image sample's pixels replaced by its vision-tower output, computed once.

    For models whose vision tower is frozen (the experts): the stock forward runs the tower on
    every image of every batch, a tenth of an image step here, to get the same features again.
    The tower attends within an image and works row by row otherwise, so an image encoded on
    its own gets its features from a batch up to float rounding: the merger's matrix product
    over fewer rows may take another BLAS path (seen: one ulp for a 4x6-patch image alone).
    `answer_loss` hands the outputs to the forward.
    """
    core = model.get_base_model() if hasattr(model, "get_base_model") else model  # peft wraps the model
    out = []
    with torch.no_grad():
        for it in data:
            if "pixel_values" in it:
                feats = core.model.get_image_features(it["pixel_values"], it["image_grid_thw"]).pooler_output
                it = {k: v for k, v in it.items() if k != "pixel_values"}
                it["image_embeds"] = torch.cat(feats)  # (image tokens, d)
            out.append(it)
    return out


def answer_loss(model, batch: dict) -> torch.Tensor:
    """The stock causal-LM loss (mean cross-entropy over the answer tokens), with the head run on
    the positions that predict an answer token only, and images taken as encoded by
    `with_image_embeds` where the batch carries them.

    The stock forward projects every position onto the vocabulary and then ignores all but the
    answers' (answers are a few tokens of each sequence here). Each row's logits, and the
    gradient each row sends back, are the same numbers either way; only the logged loss may be
    summed in another order. For models whose head is frozen (the experts): a trained head's
    weight gradient would sum over fewer rows, in another order.
    """
    from transformers.modeling_outputs import BaseModelOutputWithPooling

    core = model.get_base_model() if hasattr(model, "get_base_model") else model
    inputs = {k: v for k, v in batch.items() if k not in ("labels", "image_embeds")}
    if "image_embeds" in batch:
        inputs["mm_encoder_outputs"] = {"image": BaseModelOutputWithPooling(pooler_output=(batch["image_embeds"],))}
    hidden = core.model(**inputs, use_cache=False).last_hidden_state  # (B, L, d)
    targets = batch["labels"][:, 1:]  # position t predicts token t + 1
    keep = targets != -100  # (B, L-1)
    logits = core.lm_head(hidden[:, :-1][keep]).float()  # (answer tokens, vocab)
    return torch.nn.functional.cross_entropy(logits, targets[keep])


def _lr_at(step: int, steps: int, lr: float, warmup: int) -> float:
    if step < warmup:
        return lr * (step + 1) / warmup
    t = (step - warmup) / max(1, steps - warmup)
    return lr * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * t)))  # cosine down to 10%


def train_loop(
    model,
    data: Sequence[dict],
    *,
    params,
    steps: int,
    lr: float,
    batch_size: int,
    seed: int,
    pad_id: int,
    warmup: int = 20,
    weight_decay: float = 0.0,
    on_step: Callable[[int, float], None] | None = None,
    group=None,
    frozen_head: bool = False,
) -> list[float]:
    """AdamW for `steps` steps over shuffled epochs of `data`; returns the loss curve.

    With `group` (an initialised torch.distributed process group), each of its ranks takes
    its share of every batch and the gradients are averaged: data parallel over processes,
    identical on every rank. The batch order depends on `seed` only, so a run is the same
    for a given world size whatever the machine's load. `frozen_head`: the model's output head
    (and vision tower) is not trained, so the loss runs the head on the answer positions only
    and `data` may carry encoded images (`answer_loss`, `with_image_embeds`).
    """
    if not data:
        raise ValueError("no training samples")
    if not frozen_head and any("image_embeds" in it for it in data):
        raise ValueError("samples carry encoded images (with_image_embeds) but frozen_head=False trains the vision tower")
    import torch.distributed as dist

    rank = dist.get_rank(group) if group is not None else 0
    world = dist.get_world_size(group) if group is not None else 1
    if batch_size % world:
        raise ValueError(f"batch_size={batch_size} is not divisible by {world} processes")
    params = [p for p in params if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=lr, betas=(0.9, 0.98), weight_decay=weight_decay)
    gen = torch.Generator().manual_seed(seed)
    order: list[int] = []
    losses = []
    model.train()
    for step in range(steps):
        if len(order) < batch_size:
            order += torch.randperm(len(data), generator=gen).tolist()
        idx, order = order[:batch_size], order[batch_size:]
        share = batch_size // world
        batch = collate([data[i] for i in idx[rank * share:(rank + 1) * share]], pad_id)
        for g in opt.param_groups:
            g["lr"] = _lr_at(step, steps, lr, warmup)
        loss = answer_loss(model, batch) if frozen_head else model(**batch, use_cache=False).loss
        loss.backward()
        if world > 1:
            grads = [p.grad if p.grad is not None else torch.zeros_like(p) for p in params]
            flat = torch.cat([g.reshape(-1) for g in grads] + [loss.detach().reshape(1)])  # one message a step
            dist.all_reduce(flat, group=group)
            flat /= world
            off = 0
            for p, g in zip(params, grads):
                n = g.numel()
                p.grad = flat[off:off + n].view_as(p)
                off += n
            loss = flat[-1]
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)
        losses.append(loss.item())
        if on_step is not None:
            on_step(step, losses[-1])
    model.eval()
    return losses


def train_projections_only(model) -> list[torch.nn.Parameter]:
    """Full experts train every weight of the language model's projections (full rank), nothing else.

    Embeddings, norms, the head and the vision tower stay the base's. Every weight a full
    expert changes is then inside a fusion's scope (the same seven projections LoRA experts
    adapt); a changed embedding or head would be taken from the first expert alone and
    silently drop the other expert's skill. Returns the trainable parameters.
    """
    trainable = []
    for name, p in model.named_parameters():
        parts = name.split(".")
        p.requires_grad = ".visual." not in f".{name}" and any(t in parts for t in LORA_TARGETS)
        if p.requires_grad:
            trainable.append(p)
    return trainable


def add_lora(model, rank: int, alpha: int, seed: int):
    """Wrap `model` with a fresh LoRA on the language model's projections (peft)."""
    from peft import LoraConfig, get_peft_model

    config = LoraConfig(
        r=rank,
        lora_alpha=alpha,
        lora_dropout=0.0,
        target_modules=LORA_TARGETS,
        bias="none",
        task_type="CAUSAL_LM",
    )
    torch.manual_seed(seed)  # peft initialises lora_A from the global generator
    return get_peft_model(model, config)
