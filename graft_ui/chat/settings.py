"""Generation settings shared by every column of one request, with the caps the app enforces."""

from __future__ import annotations

from dataclasses import dataclass

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
        if isinstance(self.max_new_tokens, bool) or int(self.max_new_tokens) != self.max_new_tokens:
            raise ValueError(f"max_new_tokens={self.max_new_tokens!r} must be an integer")
        if not 1 <= self.max_new_tokens <= MAX_NEW_TOKENS_CAP:
            raise ValueError(f"max_new_tokens={self.max_new_tokens!r} must be between 1 and {MAX_NEW_TOKENS_CAP}")
        if not 0.0 < float(self.temperature) <= 2.0:
            raise ValueError(f"temperature={self.temperature!r} must be in (0, 2]")
        if not 0.0 < float(self.top_p) <= 1.0:
            raise ValueError(f"top_p={self.top_p!r} must be in (0, 1]")
        object.__setattr__(self, "max_new_tokens", int(self.max_new_tokens))
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
