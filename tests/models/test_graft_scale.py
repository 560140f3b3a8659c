"""Graft's `scale` (an extension, not in the paper) through the merge engine on the ci zoo:
scale 1 is today's Graft (no base read), scale 2 doubles the fused delta, full and LoRA."""

import json

import pytest
import torch

from graft_ui.models.checkpoint import Checkpoint
from graft_ui.models.lora_io import LoraAdapter
from graft_ui.models.merge import run_recipe
from graft_ui.recipe import Recipe


@pytest.fixture(scope="module")
def ci_zoo():
    from graft_ui.zoo import ensure_zoo

    return ensure_zoo("ci", progress=False)


def _recipe(zoo, kind, base=True, **params):
    return Recipe.from_dict({"method": "graft", "base": str(zoo / "base") if base else None, "params": params,
                             "experts": [{"path": str(zoo / "experts" / f"{d}-{kind}")} for d in ("math", "code")],
                             "output": {"dtype": "float32"}})


def _tensors(folder):
    ck = Checkpoint(folder)
    try:
        return {n: ck.read(n) for n in ck.names}
    finally:
        ck.close()


def test_full_scale_one_needs_no_base_and_scale_two_doubles_the_delta(ci_zoo, tmp_path):
    run_recipe(_recipe(ci_zoo, "full", base=False), tmp_path / "default")  # the paper's Graft needs no base
    run_recipe(_recipe(ci_zoo, "full", scale=1.0), tmp_path / "s1")
    run_recipe(_recipe(ci_zoo, "full", scale=2.0), tmp_path / "s2")
    ref, one, two = (_tensors(tmp_path / d) for d in ("default", "s1", "s2"))
    base, first = _tensors(ci_zoo / "base"), _tensors(ci_zoo / "experts" / "math-full")
    assert ref.keys() == one.keys() == two.keys()
    assert all(torch.equal(ref[n], one[n]) for n in ref)  # bit-identical: the base is never read
    gates = json.loads((tmp_path / "s2" / "gates.json").read_text())["modules"]
    assert gates and all(st["scale"] == 2.0 for st in gates.values())
    fused = [n for n in ref if not torch.equal(ref[n], first[n])]
    assert any(n.endswith("q_proj.weight") for n in fused) and any(n.endswith("q_proj.bias") for n in fused)
    for n in ref:
        if n in fused:  # weights and biases in scope: base + 2 * (fused - base)
            assert torch.equal(two[n], torch.lerp(base[n].float(), ref[n], 2.0)), n
        else:  # copied from the first expert
            assert torch.equal(two[n], ref[n]), n
    with pytest.raises(ValueError, match="scale=2.0 needs recipe.base"):
        run_recipe(_recipe(ci_zoo, "full", base=False, scale=2.0), tmp_path / "nobase")


def test_lora_scale_one_is_bit_identical_and_scale_two_doubles_b(ci_zoo, tmp_path):
    run_recipe(_recipe(ci_zoo, "lora"), tmp_path / "default")
    run_recipe(_recipe(ci_zoo, "lora", scale=1.0), tmp_path / "s1")
    run_recipe(_recipe(ci_zoo, "lora", scale=2.0), tmp_path / "s2")
    ref, one, two = (LoraAdapter(tmp_path / d) for d in ("default", "s1", "s2"))
    assert ref.modules and ref.modules.keys() == two.modules.keys()
    for key, mod in ref.modules.items():
        B, A = ref.read(mod)
        B1, A1 = one.read(one.modules[key])
        B2, A2 = two.read(two.modules[key])
        assert torch.equal(B1, B) and torch.equal(A1, A)
        assert torch.equal(A2, A) and torch.equal(B2, 2.0 * B), mod.name
    assert Recipe.load(tmp_path / "s2" / "recipe.yaml").params["scale"] == 2.0
