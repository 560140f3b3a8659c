"""LoRA experts: exact Graft (unequal ranks, alphas, rsLoRA, patterns), compression, baselines,
and fused adapters / checkpoints that reload with peft / transformers and run a forward pass.

Expected values come from peft itself (`get_delta_weight` of each expert loaded with
PeftModel), so the adapters' scales are checked against peft, not against our parser.
"""

import dataclasses
import json
import math

import pytest
import torch

from graft_ui.merging.graft import graft_chain, graft_pair
from graft_ui.merging.ties import ties_merge
from graft_ui.models.keys import canonical_name
from graft_ui.models.merge import run_recipe

from tiny_qwen import load_tiny

INPUT_IDS = torch.tensor([[1, 5, 9, 17, 33, 65, 3, 7]])


def peft_model(base, adapter):
    from peft import PeftModel

    return PeftModel.from_pretrained(load_tiny(base), str(adapter)).eval()


def peft_deltas(base, adapter):
    """{canonical module name: delta} as peft computes it."""
    from peft.tuners.lora import LoraLayer

    pm = peft_model(base, adapter)
    out = {}
    for name, mod in pm.named_modules():
        if isinstance(mod, LoraLayer) and "default" in mod.lora_A:
            out[canonical_name(name)] = mod.get_delta_weight("default").detach().float()
    return out


def rel(a, b):
    return float((a - b).norm() / b.norm().clamp_min(1e-30))


@pytest.fixture(scope="module")
def expert_deltas(zoo):
    return {k: peft_deltas(zoo["base"], zoo[k]) for k in ("lora_a", "lora_b", "lora_c")}


def test_graft_lora_exact_unequal_ranks_alphas_rslora(zoo, expert_deltas, make_recipe, tmp_path):
    out = tmp_path / "fused"
    res = run_recipe(make_recipe("graft", [zoo["lora_a"], zoo["lora_b"]]), out)
    da, db = expert_deltas["lora_a"], expert_deltas["lora_b"]
    fused = peft_deltas(zoo["base"], out)
    gates = json.loads((out / "gates.json").read_text())
    assert gates["method"] == "graft" and gates["device"] == "cpu"
    assert len(res.fused) == 21  # 7 types x 3 layers (language only by default)
    for name in res.fused:
        # lora_b has no down_proj: a zero delta there
        expected, _ = graft_pair(da[name], db.get(name, torch.zeros_like(da[name])))
        assert rel(fused[name], expected) < 1e-5, name
        st = gates["modules"][name]
        assert st["rank"] == st["ranks"][0] + st["ranks"][1]
        assert 0.3 < st["w_glob"] < 0.7
    assert gates["modules"]["model.language_model.layers.0.mlp.down_proj"]["missing_in"] == [str(zoo["lora_b"])]
    assert gates["modules"]["model.language_model.layers.1.self_attn.v_proj"]["ranks"] == [4, 2]
    # out of scope (vision) modules: the first expert's, unchanged
    for name in ("model.visual.blocks.0.attn.qkv", "model.visual.blocks.1.mlp.fc1"):
        assert rel(fused[name], da[name]) < 1e-6
    cfg = json.loads((out / "adapter_config.json").read_text())
    assert cfg["use_rslora"] is False and cfg["lora_alpha"] == cfg["r"] == 10
    assert cfg["rank_pattern"] == cfg["alpha_pattern"]  # scale 1 everywhere
    assert cfg["base_model_name_or_path"] == str(zoo["base"])


def test_graft_lora_three_experts_left_to_right(zoo, expert_deltas, make_recipe, tmp_path):
    out = tmp_path / "three"
    res = run_recipe(make_recipe("graft", [zoo["lora_a"], zoo["lora_b"], zoo["lora_c"]]), out)
    fused = peft_deltas(zoo["base"], out)
    for name in res.fused:
        ds = [expert_deltas[k].get(name) for k in ("lora_a", "lora_b", "lora_c")]
        ds = [d if d is not None else torch.zeros_like(expert_deltas["lora_a"][name]) for d in ds]
        expected, _ = graft_chain(ds)
        assert rel(fused[name], expected) < 1e-5, name
    st = json.loads((out / "gates.json").read_text())["modules"]["model.language_model.layers.2.self_attn.q_proj"]
    assert len(st["steps"]) == 2 and st["rank"] == 4 + 6 + 2


def test_graft_lora_svd_compression_reports_its_error(zoo, make_recipe, tmp_path):
    exact, small = tmp_path / "exact", tmp_path / "r3"
    run_recipe(make_recipe("graft", [zoo["lora_a"], zoo["lora_b"]]), exact)
    run_recipe(make_recipe("graft", [zoo["lora_a"], zoo["lora_b"]], output={"rank": 3}), small)
    de, ds = peft_deltas(zoo["base"], exact), peft_deltas(zoo["base"], small)
    gates = json.loads((small / "gates.json").read_text())["modules"]
    for name, st in gates.items():
        assert st["rank"] == 3 and st["rank_before"] > 3
        assert abs(rel(ds[name], de[name]) - st["lowrank_rel_err"]) < 1e-4, name
        assert 0 < st["lowrank_rel_err"] < 1


def test_ties_on_lora_deltas_then_svd(zoo, expert_deltas, make_recipe, tmp_path):
    full, default = tmp_path / "ties-fullrank", tmp_path / "ties"
    # rank >= min(M, N): the SVD keeps everything, so the adapter is the dense TIES result
    run_recipe(make_recipe("ties", [zoo["lora_a"], zoo["lora_b"]], output={"rank": 128}), full)
    res = run_recipe(make_recipe("ties", [zoo["lora_a"], zoo["lora_b"]]), default)
    fused = peft_deltas(zoo["base"], full)
    small = peft_deltas(zoo["base"], default)
    gates = json.loads((default / "gates.json").read_text())["modules"]
    for name in res.fused:
        da = expert_deltas["lora_a"][name]
        db = expert_deltas["lora_b"].get(name, torch.zeros_like(da))
        expected, _ = ties_merge(torch.zeros_like(da), [da, db], density=0.2)
        assert rel(fused[name], expected) < 1e-4, name
        st = gates[name]
        assert st["rank"] == min(sum(st["ranks"]), *expected.shape)  # default rank: sum of ranks
        assert abs(rel(small[name], expected) - st["lowrank_rel_err"]) < 1e-4
        assert "kept" in st


def test_linear_methods_stay_exact_on_lora(zoo, expert_deltas, make_recipe, tmp_path):
    out = tmp_path / "ta"
    res = run_recipe(make_recipe("task_arithmetic", [{"path": str(zoo["lora_a"]), "weight": 0.7},
                                                     {"path": str(zoo["lora_b"]), "weight": 0.2}],
                                 base=zoo["base"], params={"lam": 1.5}), out)
    fused = peft_deltas(zoo["base"], out)
    for name in res.fused:
        da = expert_deltas["lora_a"][name]
        db = expert_deltas["lora_b"].get(name, torch.zeros_like(da))
        assert rel(fused[name], 1.5 * (0.7 * da + 0.2 * db)) < 1e-5, name


def test_lora_full_output_matches_adapter_and_runs(zoo, make_recipe, tmp_path):
    from graft_ui.models.checkpoint import Checkpoint

    adapter, full = tmp_path / "adapter", tmp_path / "full"
    run_recipe(make_recipe("graft", [zoo["lora_a"], zoo["lora_b"]]), adapter)
    res = run_recipe(make_recipe("graft", [zoo["lora_a"], zoo["lora_b"]], output={"kind": "full"}), full)
    assert res.output_kind == "full" and (full / "config.json").is_file()
    base_ck, out_ck = Checkpoint(zoo["base"]), Checkpoint(full)
    deltas = peft_deltas(zoo["base"], adapter)
    for n in base_ck.names:
        name = canonical_name(n.rsplit(".", 1)[0])
        if n.endswith(".weight") and name in deltas:
            assert rel(out_ck.read(n) - base_ck.read(n), deltas[name]) < 1e-5, n
        else:
            assert torch.equal(out_ck.read(n), base_ck.read(n)), n
    with torch.no_grad():
        via_adapter = peft_model(zoo["base"], adapter)(input_ids=INPUT_IDS).logits
        via_full = load_tiny(full)(input_ids=INPUT_IDS).logits
    assert torch.isfinite(via_full).all()
    assert rel(via_adapter, via_full) < 1e-4


@pytest.mark.parametrize("method", ["graft", "ties", "dare_ties"])
def test_fused_adapters_load_with_peft_and_run(zoo, make_recipe, tmp_path, method):
    out = tmp_path / method
    extra = {} if method == "graft" else {"base": zoo["base"]}
    run_recipe(make_recipe(method, [zoo["lora_a"], zoo["lora_c"]], scope={"vision": True}, **extra), out)
    pm = peft_model(zoo["base"], out)
    with torch.no_grad():
        logits = pm(input_ids=INPUT_IDS).logits
    assert logits.shape == (1, INPUT_IDS.shape[1], 128) and torch.isfinite(logits).all()
    assert math.isfinite(json.loads((out / "gates.json").read_text())["seconds"])


def test_load_model_accepts_the_fused_adapter(zoo, make_recipe, tmp_path):
    """loading.load_model raises on missing adapter keys: the written target_modules must be exact."""
    from graft_ui.models.loading import load_model

    out = tmp_path / "fused"
    run_recipe(make_recipe("graft", [zoo["lora_c"], zoo["lora_a"]], scope={"modules": ["q_proj"], "layers": [1, 2]}), out)
    model = load_model(out)
    with torch.no_grad():
        assert torch.isfinite(model(input_ids=INPUT_IDS).logits).all()


@pytest.mark.parametrize("method", ["ties", "dare_ties"])
def test_tiled_lora_ties_matches_the_dense_path_and_ignores_thread_count(zoo, make_recipe, tmp_path, monkeypatch, method):
    """The tiled kernel (module jobs on worker threads) against the generic dense-delta path
    (what other devices run): the same stats and deltas; and the same bits on 1 thread."""
    from graft_ui.merging.registry import METHODS
    from graft_ui.models.checkpoint import SafetensorsFile
    from graft_ui.models.lora_io import ADAPTER_WEIGHTS

    experts = [zoo["lora_a"], zoo["lora_b"], zoo["lora_c"]]
    extra = {"base": zoo["base"], "output": {"rank": 5}}
    tiled, single, dense = tmp_path / "tiled", tmp_path / "single", tmp_path / "dense"
    run_recipe(make_recipe(method, experts, **extra), tiled)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        run_recipe(make_recipe(method, experts, **extra), single)
    finally:
        torch.set_num_threads(threads)
    # without its lora_tiled kernel the method takes the generic dense-delta path
    monkeypatch.setitem(METHODS, method, dataclasses.replace(
        METHODS[method], kernels={k: v for k, v in METHODS[method].kernels.items() if k != "lora_tiled"}))
    run_recipe(make_recipe(method, experts, **extra), dense)
    a, b = SafetensorsFile(tiled / ADAPTER_WEIGHTS), SafetensorsFile(single / ADAPTER_WEIGHTS)
    assert sorted(a.tensors) == sorted(b.tensors)
    for n in a.tensors:
        assert torch.equal(a.read(n), b.read(n)), n
    gates = {p: json.loads((p / "gates.json").read_text())["modules"] for p in (tiled, dense)}
    for name, st in gates[tiled].items():
        ref = gates[dense][name]
        assert st["kept"] == ref["kept"] and st["nonzero"] == ref["nonzero"], name
        assert st["lowrank_rel_err"] == pytest.approx(ref["lowrank_rel_err"], abs=1e-4), name
    dt, dd = peft_deltas(zoo["base"], tiled), peft_deltas(zoo["base"], dense)
    for name in dt:
        assert rel(dt[name], dd[name]) < 1e-4, name
