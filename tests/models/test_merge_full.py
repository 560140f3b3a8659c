"""Full fine-tunes: the streaming merge equals the in-memory merge; scope; reload + forward."""

import json

import pytest
import torch
from safetensors.torch import load_file

from graft_ui.merging.graft import apply_row_weights, graft_row_weights
from graft_ui.merging.registry import get_method
from graft_ui.models.checkpoint import Checkpoint
from graft_ui.models.keys import parse_param
from graft_ui.models.merge import run_recipe
from graft_ui.models.scope import in_scope
from graft_ui.recipe import Recipe

from tiny_qwen import load_tiny

INPUT_IDS = torch.tensor([[1, 5, 9, 17, 33, 65, 3, 7]])


def load_all(folder):
    """Whole checkpoint in memory (the reference the streaming merge must equal)."""
    ck = Checkpoint(folder)
    return {n: ck.read(n).clone() for n in ck.names}


def in_memory_graft(experts, recipe: Recipe):
    """Graft every in-scope linear of in-memory state dicts, left to right; biases share the gates."""
    first = experts[0]
    out = dict(first)
    for n, w in first.items():
        key, leaf = parse_param(n)
        if leaf != "weight" or w.dim() != 2 or not in_scope(key, recipe.scope):
            continue
        bias = n[: -len("weight")] + "bias"
        fw, fb = w, first.get(bias)
        for e in experts[1:]:
            wb, _ = graft_row_weights(fw, e[n])
            fw, fb = apply_row_weights(wb, fw, e[n], out_dtype=torch.float32), (
                apply_row_weights(wb, fb, e[bias], out_dtype=torch.float32) if fb is not None else None)
        out[n] = fw.to(getattr(torch, recipe.output.dtype))
        if fb is not None:
            out[bias] = fb.to(getattr(torch, recipe.output.dtype))
    return out


@pytest.mark.parametrize(
    "experts, scope",
    [
        (("full_a", "full_b"), {}),
        (("full_b", "full_a", "full_c"), {"modules": ["q_proj", "v_proj", "down_proj"], "layers": [1, 2], "vision": True}),
    ],
)
def test_streaming_merge_equals_in_memory(zoo, make_recipe, tmp_path, experts, scope):
    recipe = make_recipe("graft", [zoo[e] for e in experts], scope=scope)
    out = tmp_path / "fused"
    res = run_recipe(recipe, out)
    expected = in_memory_graft([load_all(zoo[e]) for e in experts], recipe)
    got = load_all(out)
    assert set(got) == set(expected)
    changed = 0
    for n, t in expected.items():
        assert got[n].dtype == t.dtype, n
        torch.testing.assert_close(got[n], t, rtol=1e-6, atol=1e-7, msg=n)
        changed += not torch.equal(got[n], load_all(zoo[experts[0]])[n]) if n.endswith("qkv.weight") else 0
    gates = json.loads((out / "gates.json").read_text())
    assert sorted(gates["modules"]) == sorted(res.fused)
    if scope:
        # q, v, down in layers 1-2 (6) + both vision blocks' qkv (q/v) and fc2 (down); fc1, proj not in scope
        assert len(res.fused) == 10 and changed == 2
        assert "model.visual.blocks.1.mlp.fc2" in gates["modules"] and "model.visual.blocks.1.mlp.fc1" not in gates["modules"]
        assert "model.visual.blocks.0.attn.qkv" in gates["modules"]
        assert len(gates["modules"]["model.language_model.layers.1.self_attn.q_proj"]["steps"]) == 2
    else:
        assert len(res.fused) == 21
    for st in gates["modules"].values():
        assert 0 < st["wb_mean"] < 1 and st["bias_fused"] in (True, False)


@pytest.mark.parametrize("method", ["ties", "task_arithmetic", "dare_linear"])
def test_baselines_stream_equal_in_memory(zoo, make_recipe, tmp_path, method):
    recipe = make_recipe(method, [zoo["full_a"], zoo["full_b"]], base=zoo["base"], output={"dtype": "bfloat16"})
    out = tmp_path / method
    run_recipe(recipe, out)
    got, base = load_all(out), load_all(zoo["base"])
    ea, eb = load_all(zoo["full_a"]), load_all(zoo["full_b"])
    m = get_method(method)
    gen = torch.Generator().manual_seed(0)
    # the engine visits tensors in file order, weight before bias; do the same for the generator
    for n in Checkpoint(zoo["full_a"]).names:
        key, leaf = parse_param(n)
        if leaf == "weight" and ea[n].dim() == 2 and in_scope(key, recipe.scope):
            for t in [n] + ([n[:-6] + "bias"] if n[:-6] + "bias" in ea else []):
                exp, _ = m.merge(base[t], [ea[t], eb[t]], [1.0, 1.0], recipe.params, gen)
                assert got[t].dtype == torch.bfloat16
                torch.testing.assert_close(got[t], exp.to(torch.bfloat16), msg=t)
        elif leaf == "bias" and in_scope(key, recipe.scope):
            continue
        else:
            assert torch.equal(got[n], ea[n]), n


def test_sharded_output_reloads_and_runs(zoo, make_recipe, tmp_path, monkeypatch):
    import graft_ui.models.checkpoint as ckmod

    monkeypatch.setattr(ckmod, "SHARD_BYTES", 150_000)
    out = tmp_path / "sharded"
    res = run_recipe(make_recipe("graft", [zoo["full_a"], zoo["full_b"]], output={"dtype": "bfloat16"}), out)
    index = json.loads((out / "model.safetensors.index.json").read_text())
    shards = set(index["weight_map"].values())
    assert len(shards) > 2 and all((out / s).is_file() for s in shards)
    assert {"config.json", "generation_config.json", "tokenizer_config.json", "recipe.yaml", "gates.json"} <= set(res.files)
    # dtype: fused bf16, copied tensors keep theirs
    merged = {}
    for s in shards:
        merged.update(load_file(str(out / s)))
    assert merged["model.layers.0.self_attn.q_proj.weight"].dtype == torch.bfloat16
    assert merged["model.layers.0.self_attn.q_proj.bias"].dtype == torch.bfloat16
    assert merged["model.embed_tokens.weight"].dtype == torch.float32
    model = load_tiny(out)
    with torch.no_grad():
        logits = model(input_ids=INPUT_IDS).logits
    assert logits.shape == (1, 8, 128) and torch.isfinite(logits).all()
    saved = Recipe.load(out / "recipe.yaml")
    assert saved.device == "cpu" and saved.output.kind == "full" and saved.method == "graft"


def test_dry_run_lists_and_writes_nothing(zoo, make_recipe, tmp_path):
    out = tmp_path / "dry"
    res = run_recipe(make_recipe("graft", [zoo["full_a"], zoo["full_b"]], scope={"modules": ["o_proj"]}), out, dry_run=True)
    assert not out.exists() and res.dry_run
    assert res.fused == [f"model.language_model.layers.{i}.self_attn.o_proj" for i in range(3)]
    assert res.modules["model.language_model.layers.0.self_attn.o_proj"]["shape"] == [64, 64]
    assert not list(tmp_path.iterdir())


def test_phi_per_module_is_used(zoo, make_recipe, tmp_path):
    name = "model.language_model.layers.0.self_attn.q_proj"
    out = tmp_path / "phi"
    run_recipe(make_recipe("graft", [zoo["full_a"], zoo["full_b"]], phi={name: {"alpha": -2.0, "beta": 0.5}}), out)
    mods = json.loads((out / "gates.json").read_text())["modules"]
    assert (mods[name]["alpha"], mods[name]["beta"]) == (-2.0, 0.5)
    assert mods["model.language_model.layers.1.self_attn.q_proj"]["alpha"] == 1.0
