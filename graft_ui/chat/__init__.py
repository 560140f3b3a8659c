"""Chat with base, experts and fused variants side by side (library; no gradio).

- `ModelPool`: one base loaded once, LoRA experts/fused adapters attached to it as peft
  adapters, full models in a small LRU; `stream(names, conversations, settings, stop)`.
- `SideBySide`: the shared conversation and each column's answers.
- `GenerationSettings`: max new tokens, temperature, greedy, top_p, seed (validated).
"""

from graft_ui.chat.generation import StreamUpdate, build_batch_inputs
from graft_ui.chat.pool import ModelPool, VariantSpec, rss_bytes
from graft_ui.chat.session import SideBySide, Turn, check_image_upload
from graft_ui.chat.settings import CHAT_MAX_PIXELS, MAX_NEW_TOKENS_CAP, GenerationSettings

__all__ = [
    "CHAT_MAX_PIXELS",
    "GenerationSettings",
    "MAX_NEW_TOKENS_CAP",
    "ModelPool",
    "SideBySide",
    "StreamUpdate",
    "Turn",
    "VariantSpec",
    "build_batch_inputs",
    "check_image_upload",
    "rss_bytes",
]
