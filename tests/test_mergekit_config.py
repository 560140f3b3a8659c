"""mergekit configs in and out: the example runs through `merge` and round-trips through
`recipe convert`; mergekit's defaults are mapped explicitly; what has no equivalent is refused."""

import json
from pathlib import Path

import pytest
import yaml

from graft_ui.commands import main
from graft_ui.mergekit_config import from_mergekit, load_any, to_mergekit
from graft_ui.recipe import Recipe

ROOT = Path(__file__).resolve().parents[1]
EXAMPLE = ROOT / "examples" / "mergekit-ties-gradient.yml"


@pytest.fixture(scope="module")
def ci_zoo():
    from graft_ui.zoo import ensure_zoo

    return ensure_zoo("ci", progress=False)


def test_example_converts_both_ways_and_round_trips(tmp_path, capsys):
    recipe = load_any(EXAMPLE)
    assert recipe.method == "ties" and recipe.scope.all_tensors and recipe.params["normalize"] is True
    assert recipe.params["density"] == [{"filter": "mlp", "value": [0.2, 0.5, 0.8]}, {"value": 0.5}]
    assert [e.weight for e in recipe.experts] == [0.6, 0.4]
    assert main(["recipe", "convert", str(EXAMPLE), "--to", "mergekit", "--out", str(tmp_path / "mk.yml")]) == 0
    mk = yaml.safe_load((tmp_path / "mk.yml").read_text())
    # mergekit's defaults are written out, names mapped back
    assert mk["parameters"]["lambda"] == 1.0 and mk["parameters"]["rescale"] is False
    assert mk["parameters"]["density"] == recipe.params["density"]
    back = from_mergekit(mk)
    assert back.to_dict() == recipe.to_dict()
    assert main(["recipe", "convert", str(tmp_path / "mk.yml"), "--to", "graft"]) == 0
    assert Recipe.from_yaml(capsys.readouterr().out).to_dict() == recipe.to_dict()


def test_example_merges_with_its_gradient(ci_zoo, tmp_path, capsys):
    out = tmp_path / "out"
    assert main(["merge", str(EXAMPLE), "--out", str(out), "--device", "cpu"]) == 0
    gates = json.loads((out / "gates.json").read_text())
    mods = gates["modules"]
    assert any("embed_tokens" in n for n in mods)  # every tensor is merged, as in mergekit
    layers = sorted({int(n.split("layers.")[1].split(".")[0]) for n in mods if "language" not in n and "layers." in n
                     and "visual" not in n})
    first, last = layers[0], layers[-1]

    def used(layer, part):
        name = next(n for n in mods if f"layers.{layer}.{part}" in n and "visual" not in n)
        return mods[name]["used"]["density"]

    assert used(first, "mlp.up_proj") == pytest.approx(0.2) and used(last, "mlp.up_proj") == pytest.approx(0.8)
    assert used(last, "self_attn.q_proj") == 0.5


def test_mergekit_defaults_are_mapped_not_changed():
    cfg = {"merge_method": "dare_ties", "base_model": "/b", "models": [{"model": "/x", "parameters": {"weight": 1}},
                                                                    {"model": "/y", "parameters": {"density": 0.3}}]}
    r = from_mergekit(cfg)
    # mergekit: density 1, L1 rescale, no normalisation -- not our DARE-TIES defaults
    assert r.params["p"] == 0.0 and r.params["rescale"] == "l1" and r.params["normalize"] is False
    assert r.experts[1].params == {"p": 0.7}
    mk = to_mergekit(r)
    assert mk["models"][1]["parameters"]["density"] == pytest.approx(0.3)
    ties = from_mergekit({"merge_method": "ties", "base_model": "/b", "models": [{"model": "/x"}, {"model": "/y"}]})
    assert ties.params["density"] == 1.0 and ties.params["normalize"] is True
    slerp = from_mergekit({"merge_method": "slerp", "base_model": "/a",
                           "slices": [{"sources": [{"model": "/a", "layer_range": [0, 4]},
                                                   {"model": "/b", "layer_range": [0, 4]}]}],
                           "parameters": {"t": [0, 1]}})
    assert slerp.base == "/a" and [e.path for e in slerp.experts] == ["/b"] and slerp.params["t"] == [0.0, 1.0]
    lora = from_mergekit({"merge_method": "task_arithmetic", "base_model": "/b",
                          "models": [{"model": "/b+/l1"}, {"model": "/b+/l2"}]})
    assert [e.path for e in lora.experts] == ["/l1", "/l2"] and not lora.scope.all_tensors


@pytest.mark.parametrize("method", ["graft", "consensus", "mmer"])
def test_methods_without_mergekit_equivalent_are_refused(method):
    r = Recipe.from_dict({"method": method, "base": "/b", "experts": ["/x", "/y"]})
    with pytest.raises(ValueError, match="has no mergekit equivalent"):
        to_mergekit(r)


@pytest.mark.parametrize("cfg,match", [
    ({"merge_method": "linear", "modules": {"text": {}}}, "modules"),
    ({"merge_method": "passthrough", "slices": [{"sources": [{"model": "/a", "layer_range": [0, 2]}]}]}, "passthrough"),
    ({"merge_method": "linear", "slices": [{"sources": [{"model": "/a", "layer_range": [0, 2]}]},
                                           {"sources": [{"model": "/a", "layer_range": [2, 4]}]}]}, "frankenmerges"),
    ({"merge_method": "ties", "models": [{"model": "/a", "parameters": {"lambda": 2}}]}, "top-level"),
    ({"merge_method": "ties", "models": [{"model": "/a"}], "parameters": {"bogus": 1}}, "bogus"),
    ({"merge_method": "nope", "models": [{"model": "/a"}]}, "unknown merge method"),
])
def test_unsupported_mergekit_configs_are_refused_by_name(cfg, match):
    with pytest.raises(ValueError, match=match):
        from_mergekit(cfg)
