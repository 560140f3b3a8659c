"""A merge method is one module: a toy method registered from a temporary file runs through
the engine on the ci zoo, full and LoRA experts, with no edit anywhere else."""

import importlib.util
import json
import sys
import textwrap

import pytest
import torch

from graft_ui.merging.registry import METHODS
from graft_ui.models.checkpoint import Checkpoint
from graft_ui.models.merge import run_recipe
from graft_ui.recipe import Recipe

TOY = '''
"""Toy: per element, the task vector of largest magnitude. (no paper; a test method)

tau_i = expert_i - base;  merged = base + lam * tau_argmax_i |tau_i|
"""
import torch

from graft_ui.merging.registry import Method, Param, register

CALLS = {"fuse_tensor": 0}


def _merge(base, experts, weights, params, generator=None):
    taus = torch.stack([e.float() - base.float() for e in experts])
    pick = taus.abs().argmax(0, keepdim=True)
    return base.float() + params["lam"] * taus.gather(0, pick)[0], {"toy": True}


def fuse_tensor(base, experts, weights, params, ctx):
    # a "fast path" in the method's own file: here the same maths, counted
    CALLS["fuse_tensor"] += 1
    out, st = _merge(base, experts, weights, params)
    return out, dict(st, fast=True)


register(Method(
    name="toy_maxabs", merge=_merge, params=(Param("lam", 1.0, "float", 0.0, 10.0),),
    paper="-", summary="largest-magnitude task vector per element",
    kernels={"fuse_tensor": __name__ + ":fuse_tensor"},
))
'''


@pytest.fixture(scope="module")
def ci_zoo():
    from graft_ui.zoo import ensure_zoo

    return ensure_zoo("ci", progress=False)


@pytest.fixture
def toy(tmp_path, monkeypatch):
    path = tmp_path / "toy_method_module.py"
    path.write_text(textwrap.dedent(TOY))
    spec = importlib.util.spec_from_file_location("toy_method_module", path)
    module = importlib.util.module_from_spec(spec)
    monkeypatch.setitem(sys.modules, "toy_method_module", module)
    monkeypatch.delitem(METHODS, "toy_maxabs", raising=False)
    spec.loader.exec_module(module)
    yield module
    METHODS.pop("toy_maxabs", None)


def _recipe(zoo, experts, **kw):
    return Recipe.from_dict({"method": "toy_maxabs", "base": str(zoo / "base"), "params": {"lam": 0.5},
                             "experts": [{"path": str(zoo / "experts" / e)} for e in experts], **kw})


def test_toy_method_on_full_experts(ci_zoo, toy, tmp_path):
    out = tmp_path / "full"
    run_recipe(_recipe(ci_zoo, ["math-full", "code-full"], output={"dtype": "float32"}), out)
    gates = json.loads((out / "gates.json").read_text())
    assert gates["method"] == "toy_maxabs" and gates["modules"]
    assert all(st["toy"] for st in gates["modules"].values())
    assert toy.CALLS["fuse_tensor"] > 0
    base, a, b, fused = (Checkpoint(p) for p in (ci_zoo / "base", ci_zoo / "experts/math-full",
                                                 ci_zoo / "experts/code-full", out))
    name = next(n for n in fused.names if "q_proj.weight" in n)
    want, _ = toy._merge(base.read(name), [a.read(name), b.read(name)], None, {"lam": 0.5})
    torch.testing.assert_close(fused.read(name), want)


def test_toy_method_on_lora_experts(ci_zoo, toy, tmp_path):
    out = tmp_path / "lora"
    result = run_recipe(_recipe(ci_zoo, ["math-lora", "code-lora"]), out)
    assert result.output_kind == "adapter" and result.fused
    gates = json.loads((out / "gates.json").read_text())
    for st in gates["modules"].values():
        assert st["toy"] and 0.0 <= st["lowrank_rel_err"] < 1.0
    assert Recipe.load(out / "recipe.yaml").method == "toy_maxabs"
