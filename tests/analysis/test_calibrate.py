"""Calibration of Graft's phi: only alpha/beta move, the loss goes down, the result reproduces without data."""

from __future__ import annotations

import pytest
import torch

from graft_ui.analysis.calibrate import GraftCalibrator, calibrate_phi
from graft_ui.analysis.data import load_target
from graft_ui.merging.graft import graft_pair
from graft_ui.merging.lora import graft_lora
from graft_ui.models.checkpoint import Checkpoint
from graft_ui.models.keys import parse_param
from graft_ui.models.lora_io import LoraAdapter
from graft_ui.models.manifest import load_manifest
from graft_ui.recipe import Calibrate, Recipe


def _recipe(manifest, kind, **extra):
    m = load_manifest(manifest)
    return Recipe.from_dict({
        "method": "graft", "device": "cpu",
        "experts": [{"path": m.expert(f"math-{kind}").path, "name": f"math-{kind}"},
                    {"path": m.expert(f"medical-{kind}").path, "name": f"medical-{kind}"}],
        "calibrate": {"samples": 3, "steps": 6, "lr": 0.2}, **extra,
    })


@pytest.fixture(scope="module")
def samples(mini_manifest):
    return load_target("math", 3, manifest=load_manifest(mini_manifest), seed=0)


@pytest.mark.parametrize("kind", ["lora", "full"])
def test_calibration_lowers_loss_and_moves_only_phi(mini_manifest, samples, kind):
    recipe = _recipe(mini_manifest, kind)
    calib = GraftCalibrator(recipe)
    try:
        before = {k: v.clone() for k, v in calib.model.state_dict().items()}
        experts_before = {m: [t.clone() for t in (g.weights if kind == "full" else [B for B, _, _ in g.factors])]
                          for m, g in calib.graphs.items()}
        assert all(not p.requires_grad for p in calib.model.parameters())
        assert len(calib.parameters()) == 2 * len(calib.graphs) == 2 * 14
    finally:
        calib.close()
    res = calibrate_phi(recipe, samples, steps=6, lr=0.2, detail=True)
    assert res.loss_after < res.loss_before
    assert res.loss_after == pytest.approx(min(res.losses))
    assert set(res.phi) == set(calib.graphs)
    assert any(abs(v["alpha"] - 1.0) > 1e-3 or abs(v["beta"]) > 1e-3 for v in res.phi.values())
    # the model's own weights and the experts' tensors are untouched by calibration
    after = GraftCalibrator(recipe)
    try:
        for k, v in after.model.state_dict().items():
            assert torch.equal(v, before[k]), k
        for m, g in after.graphs.items():
            now = g.weights if kind == "full" else [B for B, _, _ in g.factors]
            assert all(torch.equal(a, b) for a, b in zip(now, experts_before[m]))
    finally:
        after.close()


def test_calibrate_phi_returns_tuple_and_respects_recipe_defaults(mini_manifest, samples):
    recipe = _recipe(mini_manifest, "full")
    phi, lb, la = calibrate_phi(recipe, samples, steps=2)
    assert isinstance(phi, dict) and la <= lb
    with pytest.raises(ValueError, match="(?i)graft"):
        calibrate_phi(recipe.replace(method="average", params={}), samples, steps=1)


def test_learned_phi_reproduces_full_fusion_without_data(mini_manifest, samples):
    recipe = _recipe(mini_manifest, "full")
    phi, _, _ = calibrate_phi(recipe, samples, steps=4, lr=0.3)
    fixed = recipe.replace(phi=phi, calibrate=None)
    assert Recipe.from_yaml(fixed.to_yaml()).phi == fixed.phi  # phi survives the YAML round trip
    calib = GraftCalibrator(fixed)  # no data: phi comes from the recipe
    try:
        fused = calib.fused_tensors()
    finally:
        calib.close()
    e1, e2 = (Checkpoint(e.path) for e in fixed.experts)
    t1 = {f"{k.name}.{leaf}": n for n in e1.names for k, leaf in [parse_param(n)] if k is not None}
    t2 = {f"{k.name}.{leaf}": n for n in e2.names for k, leaf in [parse_param(n)] if k is not None}
    for m, ab in phi.items():
        W, st = graft_pair(e1.read(t1[f"{m}.weight"]).float(), e2.read(t2[f"{m}.weight"]).float(),
                           alpha=ab["alpha"], beta=ab["beta"])
        assert st["alpha"] == pytest.approx(ab["alpha"])
        torch.testing.assert_close(fused[f"{m}.weight"], W, rtol=0, atol=1e-6)


def test_learned_phi_reproduces_lora_fusion_without_data(mini_manifest, samples):
    recipe = _recipe(mini_manifest, "lora")
    phi, _, _ = calibrate_phi(recipe, samples, steps=4, lr=0.3)
    calib = GraftCalibrator(recipe.replace(phi=phi, calibrate=None))
    try:
        fused = calib.fused_tensors()
    finally:
        calib.close()
    a1, a2 = (LoraAdapter(e.path) for e in recipe.experts)
    for key, mod1 in a1.modules.items():
        mod2 = a2.modules[key]
        B1, A1 = a1.read(mod1)
        B2, A2 = a2.read(mod2)
        ab = phi[mod1.name]
        Bc, Ac, _ = graft_lora(B1, A1, mod1.scale, B2, A2, mod2.scale, alpha=ab["alpha"], beta=ab["beta"])
        torch.testing.assert_close(fused[f"{mod1.name}.lora_B"] @ fused[f"{mod1.name}.lora_A"], Bc @ Ac,
                                   rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("kind", ["full", "lora"])
def test_run_recipe_with_learned_phi_matches_calibrated_tensors(mini_manifest, samples, tmp_path, kind):
    """The merge engine's output for a recipe carrying phi (no data) equals the calibrated fusion."""
    merge = pytest.importorskip("graft_ui.models.merge", reason="graft_ui.models.merge.run_recipe is not available")
    import json

    from safetensors.torch import load_file

    recipe = _recipe(mini_manifest, kind)
    phi, _, _ = calibrate_phi(recipe, samples, steps=3, lr=0.3)
    fixed = recipe.replace(phi=phi, calibrate=None)
    merge.run_recipe(fixed, tmp_path / "fused")
    gates = json.loads((tmp_path / "fused" / "gates.json").read_text())["modules"]
    for m, ab in phi.items():
        assert gates[m]["alpha"] == pytest.approx(ab["alpha"]) and gates[m]["beta"] == pytest.approx(ab["beta"])
    calib = GraftCalibrator(fixed)
    try:
        fused = calib.fused_tensors()
    finally:
        calib.close()
    if kind == "full":
        out = {}
        for f in sorted((tmp_path / "fused").glob("*.safetensors")):
            out.update(load_file(f))
        names = {f"{k.name}.{leaf}": n for n in out for k, leaf in [parse_param(n)] if k is not None}
        for name, t in fused.items():
            torch.testing.assert_close(out[names[name]].float(), t, rtol=0, atol=1e-6)
    else:
        ad = LoraAdapter(tmp_path / "fused")
        for mod in ad.modules.values():
            B, A = ad.read(mod)
            assert mod.scale == pytest.approx(1.0)
            torch.testing.assert_close(B @ A, fused[f"{mod.name}.lora_B"] @ fused[f"{mod.name}.lora_A"],
                                       rtol=0, atol=1e-6)


def test_calibrate_recipe_for_the_merge_engine(mini_manifest):
    from graft_ui.analysis.calibrate import calibrate_recipe

    recipe = _recipe(mini_manifest, "lora").replace(calibrate=Calibrate(samples=2, steps=2, lr=0.1))
    fixed, record = calibrate_recipe(recipe, load_manifest(mini_manifest))  # dataset None -> first expert's domain
    assert fixed.calibrate is None and len(fixed.phi) == 14
    assert record["samples"] == 2 and record["loss_after"] <= record["loss_before"]
    assert all(i.startswith("math-") for i in record["sample_ids"])


def test_fuse_recipe_calibrates_and_writes_a_data_free_recipe(mini_manifest, tmp_path):
    """prepare -> calibrate -> run: gates.json records the calibration, recipe.yaml carries phi only."""
    import json

    from graft_ui.fusion import fuse_recipe

    recipe = _recipe(mini_manifest, "lora").replace(calibrate=Calibrate(samples=2, steps=2, lr=0.1))
    result = fuse_recipe(recipe, tmp_path / "out", manifest=load_manifest(mini_manifest))
    gates = json.loads((tmp_path / "out" / "gates.json").read_text())
    assert gates["calibration"]["samples"] == 2 and result.calibration == gates["calibration"]
    saved = Recipe.load(tmp_path / "out" / "recipe.yaml")
    assert saved.calibrate is None and len(saved.phi) == 14
    some = next(iter(saved.phi))
    assert gates["modules"][some]["alpha"] == pytest.approx(saved.phi[some]["alpha"])


def test_run_recipe_refuses_an_uncalibrated_recipe(mini_manifest, tmp_path):
    """The engine does not calibrate (it sits below the analysis layer): it says so instead."""
    from graft_ui.models.merge import run_recipe

    recipe = _recipe(mini_manifest, "lora").replace(calibrate=Calibrate(samples=2, steps=2, lr=0.1))
    with pytest.raises(ValueError, match="calibrate"):
        run_recipe(recipe, tmp_path / "out")
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("kind", ["full", "lora"])
def test_calibration_fuses_with_graft_scale(mini_manifest, kind):
    """Graft's scale (extension, not in the paper) is in the calibrated model too: the fused delta doubles."""
    base_path = str(load_manifest(mini_manifest).base.path)
    fused = {}
    for scale in (1.0, 2.0):
        calib = GraftCalibrator(_recipe(mini_manifest, kind, base=base_path, params={"scale": scale}))
        try:
            fused[scale] = calib.fused_tensors()
        finally:
            calib.close()
    assert fused[1.0].keys() == fused[2.0].keys()
    if kind == "full":
        base = Checkpoint(base_path)
        names = {f"{k.name}.{leaf}": n for n in base.names for k, leaf in [parse_param(n)] if k is not None}
        for t, W in fused[1.0].items():
            torch.testing.assert_close(fused[2.0][t], torch.lerp(base.read(names[t]).float(), W, 2.0), rtol=0, atol=1e-6)
        with pytest.raises(ValueError, match="scale=2.0 needs recipe.base"):
            GraftCalibrator(_recipe(mini_manifest, kind, params={"scale": 2.0}))
    else:
        for t in (t for t in fused[1.0] if t.endswith(".lora_B")):
            torch.testing.assert_close(fused[2.0][t], 2.0 * fused[1.0][t], rtol=1e-6, atol=0)
