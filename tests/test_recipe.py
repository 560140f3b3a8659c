"""Recipe <-> YAML round trip and the rejections that name the bad key or value."""

import pytest

from graft_ui.recipe import ALL_MODULES, Recipe

YAML = """
method: graft
base: some/base
experts:
  - {path: experts/math-lora, weight: 1.0}
  - {path: experts/code-lora, weight: 1.0}
params: {a: 0.4, c: 500, bins: 10, gates: dual, global_form: algorithm}
scope: {modules: [q_proj, k_proj, v_proj, o_proj, gate_proj, up_proj, down_proj], layers: all, vision: false}
output: {kind: adapter, rank: null, dtype: float32}
seed: 0
device: auto
"""


def test_round_trip_is_identity():
    r = Recipe.from_yaml(YAML)
    assert r.scope.modules == ALL_MODULES
    assert r.params["a"] == 0.4 and r.params["bins"] == 10
    again = Recipe.from_yaml(r.to_yaml())
    assert again == r
    assert again.to_dict() == r.to_dict()


def test_defaults_are_filled_and_layers_range_round_trips():
    r = Recipe.from_dict(
        {"method": "graft", "experts": ["a", "b"], "scope": {"layers": [1, 2]}, "calibrate": {"steps": 3}}
    )
    assert r.params["c"] == 500 and r.params["gates"] == "dual"
    assert r.scope.layers == (1, 2) and r.scope.layer_in_scope(2) and not r.scope.layer_in_scope(3)
    assert Recipe.from_yaml(r.to_yaml()) == r


@pytest.mark.parametrize(
    "patch, needle",
    [
        ({"colour": "red"}, "colour"),
        ({"params": {"a": 0.4, "zeta": 1}}, "zeta"),
        ({"params": {"bins": 0}}, "bins"),
        ({"params": {"gates": "both"}}, "gates"),
        ({"scope": {"modules": ["q_proj", "lm_head"]}}, "lm_head"),
        ({"scope": {"layers": [3, 1]}}, "scope.layers"),
        ({"scope": {"depth": 2}}, "depth"),
        ({"output": {"kind": "gguf"}}, "gguf"),
        ({"output": {"rank": 0}}, "output.rank"),
        ({"method": "nearswap"}, "nearswap"),
        ({"experts": [{"path": "a"}]}, "2 or more"),
        ({"experts": []}, "'graft' fuses 2 or more experts; recipe lists 0"),
        ({"experts": [{"path": "a", "wieght": 1}, {"path": "b"}]}, "wieght"),
        ({"device": "tpu"}, "tpu"),
        ({"calibrate": {"steps": -1}}, "calibrate.steps"),
    ],
)
def test_rejections_name_the_problem(patch, needle):
    data = Recipe.from_yaml(YAML).to_dict()
    data.update(patch)
    with pytest.raises(ValueError, match=needle):
        Recipe.from_dict(data)


def test_invalid_yaml_is_a_value_error():
    with pytest.raises(ValueError, match="YAML"):
        Recipe.from_yaml("method: [graft")


def test_graft_scale_round_trips_and_is_checked():
    r = Recipe.from_yaml(YAML.replace("global_form: algorithm}", "global_form: algorithm, scale: 2}"))
    assert r.params["scale"] == 2.0
    again = Recipe.from_yaml(r.to_yaml())
    assert again == r and "scale: 2.0" in r.to_yaml()
    assert Recipe.from_yaml(YAML).params["scale"] == 1.0  # the paper's method by default
    for bad in (0, -0.5, ".nan", ".inf", "x"):
        with pytest.raises(ValueError, match="'scale'"):
            Recipe.from_yaml(YAML.replace("global_form: algorithm}", f"global_form: algorithm, scale: {bad}}}"))


NAN, INF = float("nan"), float("inf")


@pytest.mark.parametrize(
    "patch, needle",
    [
        ({"params": {"a": NAN}}, "'a'=nan must be a finite"),
        ({"params": {"c": NAN}}, "'c'=nan must be a finite"),
        ({"params": {"alpha": NAN}}, "'alpha'=nan must be a finite"),
        ({"params": {"beta": -INF}}, "'beta'=-inf must be a finite"),
        ({"params": {"bins": INF}}, "'bins'=inf must be a finite"),
        ({"experts": [{"path": "a", "weight": NAN}, {"path": "b"}]}, "'a' weight=nan must be a finite"),
        ({"experts": [{"path": "a"}, {"path": "b", "weight": INF}]}, "'b' weight=inf must be a finite"),
        ({"experts": [{"path": "a", "weight": "heavy"}, {"path": "b"}]}, "weight='heavy' must be a number"),
        ({"calibrate": {"lr": INF}}, "calibrate.lr=inf must be a finite"),
        ({"phi": {"model.layers.0.mlp.up_proj": {"alpha": NAN, "beta": 0.0}}}, r"phi\[.*\]\.alpha=nan"),
    ],
)
def test_nan_and_infinities_are_refused_with_the_field_named(patch, needle):
    data = Recipe.from_yaml(YAML).to_dict()
    data.update(patch)
    with pytest.raises(ValueError, match=needle):
        Recipe.from_dict(data)


def test_yaml_nan_weight_is_refused_not_written_back():
    with pytest.raises(ValueError, match="weight=nan"):
        Recipe.from_yaml(YAML.replace("{path: experts/math-lora, weight: 1.0}", "{path: experts/math-lora, weight: .nan}"))
