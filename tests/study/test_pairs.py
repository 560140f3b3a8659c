"""Pair enumeration, relatedness and method variants."""

import pytest

from graft_ui.models.manifest import DatasetEntry, Manifest, ModelEntry
from graft_ui.study.pairs import (GRAFT_ABLATIONS, default_variants, enumerate_pairs, parse_pair, parse_variant,
                                  relatedness)


def _manifest():
    experts = (
        ModelEntry("math-lora", "x/m", "lora", "math"),
        ModelEntry("math-lora-b", "x/m2", "lora", "math"),
        ModelEntry("finance-lora", "x/f", "lora", "finance"),
        ModelEntry("code-lora", "x/c", "lora", "code"),
        ModelEntry("code-full", "x/cf", "full", "code"),
        ModelEntry("math-full", "x/mf", "full", "math"),
    )
    data = {d: DatasetEntry(eval=f"{d}.jsonl") for d in ("math", "finance", "code")}
    return Manifest(base=ModelEntry("base", "x/b"), experts=experts, datasets=data, name="t")


def test_every_unordered_pair_of_one_kind_with_relatedness():
    pairs = enumerate_pairs(_manifest(), ("lora", "full"), is_zoo=True)
    names = [p.name for p in pairs]
    assert len(names) == 6 + 1  # C(4,2) LoRA pairs + one full pair, never a LoRA with a full expert
    rel = {p.name: p.relatedness for p in pairs}
    assert rel["math-lora+math-lora-b"] == "same"
    assert rel["math-lora+finance-lora"] == "related"  # math and finance: the fallback's related pair
    assert rel["finance-lora+code-lora"] == "unrelated"
    same = next(p for p in pairs if p.relatedness == "same")
    assert same.domains == ["math"] and same.target == "math"


def test_non_zoo_manifest_has_no_relatedness_except_same_domain():
    m = _manifest()
    assert relatedness(m.experts[0], m.experts[2], is_zoo=False) == "n/a"
    assert relatedness(m.experts[0], m.experts[1], is_zoo=False) == "same"


def test_explicit_pairs_are_checked():
    m = _manifest()
    assert [p.name for p in enumerate_pairs(m, is_zoo=True, only=["code-lora+math-lora"])] == ["code-lora+math-lora"]
    with pytest.raises(ValueError, match="mixes a lora and a full"):
        enumerate_pairs(m, is_zoo=True, only=["math-lora+code-full"])
    with pytest.raises(ValueError, match="A\\+B"):
        parse_pair("math-lora")
    with pytest.raises(KeyError, match="nope"):
        enumerate_pairs(m, is_zoo=True, only=["math-lora+nope"])


def test_variants_defaults_and_ablations():
    labels = [v.label for v in default_variants()]
    assert "graft" in labels and "ties" in labels and "task_arithmetic" in labels
    for p in GRAFT_ABLATIONS:
        assert parse_variant(f"graft[{next(iter(p))}={next(iter(p.values()))}]").label in labels
    assert [v.label for v in default_variants(["ties"])] == ["ties"]  # no graft, no ablations
    assert [v.label for v in default_variants(["graft"], ablations=False)] == ["graft"]
    assert parse_variant("graft[a=0.2,gates=local]").params == {"a": 0.2, "gates": "local"}
    with pytest.raises(ValueError, match="gates"):
        parse_variant("graft[gates=sideways]")
    with pytest.raises(ValueError, match="unknown merge method"):
        parse_variant("nosuch")


def test_graft_scale_variant_parses_and_builds_a_recipe_with_the_base():
    from graft_ui.study.worker import pair_recipe

    v = parse_variant("graft[scale=2]")
    assert v.params == {"scale": 2} and v.label == "graft[scale=2]" and v.is_ablation
    assert parse_variant(v.label) == v
    with pytest.raises(ValueError, match="scale"):
        parse_variant("graft[scale=0]")
    m = _manifest()
    r = pair_recipe(m, m.experts[4], m.experts[5], v.label, 0, "cpu")  # what the study fuses for a full pair
    assert r.params["scale"] == 2.0 and r.base == "x/b" and r.output.kind == "full"
