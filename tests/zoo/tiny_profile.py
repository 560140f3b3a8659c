"""A few-second build of the ci pipeline, for tests that build zoos of their own."""

from graft_ui.zoo.profiles import DOMAINS, ExpertSpec, get_profile


def tiny_profile(**overrides):
    """The ci profile at a few samples, two-step experts and no self-check, with `overrides`."""
    return get_profile("ci").with_overrides(**{
        "general_train": 16, "domain_train": 8, "domain_eval": 2, "instruct_steps": 2, "instruct_general": 8,
        "instruct_per_domain": {d: 2 for d in DOMAINS}, "batch_size": 4, "warmup": 1, "self_check": False,
        "experts": tuple(ExpertSpec(d, 2, replay_general=4, replay_domains=1) for d in DOMAINS), **overrides})
