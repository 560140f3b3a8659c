"""Model inputs the stock Qwen2-VL way: chat template -> qwen_vl_utils -> processor.

Images are opened here, as local image files or PIL images, and handed to
`process_vision_info` as PIL objects: a URL or `file://` string from a user never
reaches qwen_vl_utils (which would fetch it).
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any, Sequence

from PIL import Image, UnidentifiedImageError
from qwen_vl_utils import process_vision_info

# Caps on what one request may cost; the processor's own pixel bounds still apply.
MAX_IMAGE_PIXELS = 1024 * 1024
MAX_PROMPT_CHARS = 8000


def open_image(source: Any, root: str | Path | None = None) -> Image.Image:
    """Open a local image file (path relative to `root` if given) or pass a PIL image through."""
    if isinstance(source, Image.Image):
        image = source
    else:
        text = str(source)
        if "://" in text or text.startswith("data:"):
            raise ValueError(f"image {text[:80]!r} is not a local file; URLs are not fetched")
        path = Path(root, text) if root is not None and not Path(text).is_absolute() else Path(text)
        if not path.is_file():
            raise FileNotFoundError(f"image file {str(path)!r} does not exist")
        try:
            with Image.open(path) as im:
                if im.width * im.height > 64 * MAX_IMAGE_PIXELS:
                    raise ValueError(f"image {str(path)!r} is {im.width}x{im.height} pixels, too large")
                image = im.convert("RGB")
        except (UnidentifiedImageError, OSError) as exc:
            raise ValueError(f"file {path.name!r} is not a readable image ({exc})") from None
    if image.mode != "RGB":
        image = image.convert("RGB")
    if image.width * image.height > MAX_IMAGE_PIXELS:
        image = image.copy()
        image.thumbnail((1024, 1024))
    return image


def resolve_messages(messages: Sequence[dict], root: str | Path | None = None) -> list[dict]:
    """A copy of `messages` whose image items hold PIL images; checks roles and prompt size."""
    out = copy.deepcopy(list(messages))
    total = 0
    for i, msg in enumerate(out):
        if msg.get("role") not in ("system", "user", "assistant"):
            raise ValueError(f"messages[{i}] has role {msg.get('role')!r}; expected system, user or assistant")
        content = msg.get("content")
        if isinstance(content, str):
            msg["content"] = content = [{"type": "text", "text": content}]
        for item in content:
            kind = item.get("type")
            if kind == "image":
                item["image"] = open_image(item["image"], root)
            elif kind == "text":
                total += len(item.get("text") or "")
            else:
                raise ValueError(f"messages[{i}] has a content item of type {kind!r}; expected text or image")
    if total > MAX_PROMPT_CHARS:
        raise ValueError(f"prompt has {total} characters; the limit is {MAX_PROMPT_CHARS}")
    return out


def build_inputs(
    processor,
    messages: Sequence[dict],
    *,
    add_generation_prompt: bool = True,
    answer: str | None = None,
    root: str | Path | None = None,
):
    """Tokenised model inputs (a BatchFeature) for one conversation.

    With `answer`, the assistant turn is appended and the result also carries
    `answer_start`: the index of the first answer token (for next-token losses).
    """
    messages = resolve_messages(messages, root)
    prompt = processor.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    images, videos = process_vision_info(messages)
    text = prompt
    if answer is not None:
        text = prompt + answer + "<|im_end|>"
    elif not add_generation_prompt:
        text = processor.apply_chat_template(messages, tokenize=False, add_generation_prompt=False)
    inputs = processor(text=[text], images=images, videos=videos, return_tensors="pt")
    if answer is not None:
        prompt_len = processor(text=[prompt], images=images, return_tensors="pt")["input_ids"].shape[1]
        inputs["answer_start"] = prompt_len
    return inputs
