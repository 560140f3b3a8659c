"""Generation settings shared by every column of one request, with the caps the app enforces."""

from __future__ import annotations

from dataclasses import dataclass

from graft_ui.checks import number

MAX_NEW_TOKENS_CAP = 1024
# Pixel cap handed to qwen_vl_utils per image (its `max_pixels`): 512 visual tokens of 28x28.
CHAT_MAX_PIXELS = 512 * 28 * 28


@dataclass(frozen=True)
class GenerationSettings:
    max_new_tokens: int = 128
    temperature: float = 0.7
    greedy: bool = True
    top_p: float = 0.95
    seed: int | None = None  # sampling seed; None = nondeterministic
    ignore_eos: bool = False  # always generate max_new_tokens (benchmarks, tests)

    def __post_init__(self):
        max_new = number("max_new_tokens", self.max_new_tokens, integer=True, low=1, high=MAX_NEW_TOKENS_CAP)
        if not 0.0 < number("temperature", self.temperature) <= 2.0:
            raise ValueError(f"temperature={self.temperature!r} must be in (0, 2]")
        if not 0.0 < number("top_p", self.top_p) <= 1.0:
            raise ValueError(f"top_p={self.top_p!r} must be in (0, 1]")
        object.__setattr__(self, "max_new_tokens", max_new)
        object.__setattr__(self, "temperature", float(self.temperature))
        object.__setattr__(self, "greedy", bool(self.greedy))

    def generate_kwargs(self, pad_token_id: int | None) -> dict:
        kw: dict = {"max_new_tokens": self.max_new_tokens, "pad_token_id": pad_token_id}
        if self.ignore_eos:
            kw["min_new_tokens"] = self.max_new_tokens
        if self.greedy:
            kw.update(do_sample=False, temperature=None, top_p=None, top_k=None)
        else:
            kw.update(do_sample=True, temperature=self.temperature, top_p=self.top_p, top_k=None)
        return kw
