"""Every method of mergekit's family fuses the ci zoo's Qwen2-VL experts end to end: full
fine-tunes always, LoRA adapters where the method reads task vectors only (the others are
refused with their reason, never approximated silently)."""

import json

import pytest
import torch

from graft_ui.merging import get_method
from graft_ui.models.checkpoint import Checkpoint
from graft_ui.models.merge import run_recipe
from graft_ui.recipe import Recipe

NEW = ["linear", "slerp", "nuslerp", "multislerp", "karcher", "model_stock", "breadcrumbs", "breadcrumbs_ties",
       "della", "della_linear", "sce", "nearswap", "arcee_fusion", "ram", "ramplus_tl"]
# settings that make each method do something visible on the zoo's small task vectors
PARAMS = {"nuslerp": {"task_vectors": True}, "multislerp": {"task_vectors": True},
          "breadcrumbs": {"density": 0.5}, "breadcrumbs_ties": {"density": 0.5}, "della": {"density": 0.5},
          "della_linear": {"density": 0.5}, "nearswap": {"t": 0.001}}


@pytest.fixture(scope="module")
def ci_zoo():
    from graft_ui.zoo import ensure_zoo

    return ensure_zoo("ci", progress=False)


def _recipe(zoo, method, kind, **kw):
    m = get_method(method)
    n = m.max_experts or 2
    experts = [f"math-{kind}", f"code-{kind}"][:n]
    # LoRA experts name their base themselves (a copied zoo records where it was built)
    base = str(zoo / "base") if kind == "full" else None
    return Recipe.from_dict({"method": method, "base": base, "params": PARAMS.get(method, {}),
                             "experts": [{"path": str(zoo / "experts" / e), "weight": 0.5} for e in experts],
                             "scope": {"modules": ["q_proj", "down_proj"], "layers": [0, 1]}, **kw})


@pytest.mark.parametrize("method", NEW)
def test_new_method_fuses_the_zoo(ci_zoo, method, tmp_path):
    out = tmp_path / "full"
    run_recipe(_recipe(ci_zoo, method, "full", output={"dtype": "float32"}), out)
    gates = json.loads((out / "gates.json").read_text())
    assert gates["method"] == method and gates["modules"]
    fused, math = Checkpoint(out), Checkpoint(ci_zoo / "experts/math-full")
    name = next(n for n in fused.names if "q_proj.weight" in n)
    w = fused.read(name)
    assert torch.isfinite(w).all() and not torch.equal(w, Checkpoint(ci_zoo / "base").read(name))
    other = next(n for n in fused.names if "gate_proj.weight" in n)  # out of scope: the first expert's
    assert torch.equal(fused.read(other), math.read(other))

    lora = _recipe(ci_zoo, method, "lora")
    reason = get_method(method).lora_refusal(lora.params)
    if reason:
        with pytest.raises(ValueError, match="cannot merge LoRA experts"):
            run_recipe(lora, tmp_path / "lora")
        return
    result = run_recipe(lora, tmp_path / "lora")
    assert result.output_kind == "adapter" and result.fused
    stats = json.loads((tmp_path / "lora" / "gates.json").read_text())["modules"]
    for st in stats.values():  # dense results come back as factors with their error reported
        assert "coefficients" in st or 0.0 <= st["lowrank_rel_err"] < 1.0
