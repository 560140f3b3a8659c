"""Build profiles of the demo zoo: how much data, how many steps, how big a model.

`full` is the demo (each expert clearly beats the base on its own domain); `ci` is the
same pipeline at a size that builds in a few minutes on two busy cores, for tests. Both
build the same architecture so everything downstream sees identical shapes and names.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, replace

DOMAINS = ("math", "code", "finance", "medical")


@dataclass(frozen=True)
class ModelSize:
    vocab_size: int = 2048  # BPE merges + bytes; the 14 Qwen2 special tokens come on top
    hidden_size: int = 128
    intermediate_size: int = 512
    num_hidden_layers: int = 4
    num_attention_heads: int = 4
    num_key_value_heads: int = 2
    vision_depth: int = 2
    vision_embed_dim: int = 64
    vision_num_heads: int = 4


@dataclass(frozen=True)
class Profile:
    name: str
    seed: int = 1234
    model: ModelSize = field(default_factory=ModelSize)
    general_train: int = 2000  # samples of the general mix the base is trained on
    domain_train: int = 1200  # training samples per domain
    domain_eval: int = 60  # held-out samples per domain
    base_steps: int = 1200
    base_lr: float = 5e-4  # higher rates stall the tiny vision tower (digits, bar heights never learned)
    expert_steps: int = 300
    # per-domain step counts (others use expert_steps): the visual domains need more steps,
    # code and medical reach their ceiling sooner; ordered so two workers finish together
    domain_steps: dict = field(default_factory=lambda: {"math": 400, "code": 200, "finance": 400, "medical": 200})
    full_lr: float = 1e-3
    lora_lr: float = 3e-3
    lora_rank: int = 8
    lora_alpha: int = 16
    batch_size: int = 16
    warmup: int = 30
    threads: int = 1  # torch threads of the base training (1: tiny ops, fastest and bit-stable on busy cores)
    workers: int = 2  # processes training experts side by side (one thread each)
    base_procs: int = 2  # data-parallel processes training the base (fixed: results depend on it)
    self_check: bool = True  # score base and experts on their own domain at the end of a build

    def steps_for(self, domain: str) -> int:
        return int(self.domain_steps.get(domain, self.expert_steps))

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> "Profile":
        """The inverse of `to_dict` (worker processes get their profile as JSON)."""
        return cls(**{**d, "model": ModelSize(**d["model"])})

    def with_overrides(self, **changes) -> "Profile":
        return replace(self, **changes)


PROFILES: dict[str, Profile] = {
    "full": Profile(name="full"),
    "ci": Profile(
        name="ci",
        model=ModelSize(vocab_size=1024),
        general_train=200,
        domain_train=64,
        domain_eval=10,
        base_steps=40,
        expert_steps=12,
        domain_steps={},
        batch_size=8,
        warmup=5,
        workers=1,
        base_procs=1,
        self_check=False,
    ),
}


def get_profile(name: str) -> Profile:
    try:
        return PROFILES[name]
    except KeyError:
        raise ValueError(f"unknown zoo profile {name!r}; known: {sorted(PROFILES)}") from None
