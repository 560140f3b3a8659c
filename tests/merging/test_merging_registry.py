"""Registry validation and the `methods` CLI command."""

import json

import pytest

from graft_ui.merging import METHODS, describe, get_method, validate_params

EXPECTED = {"graft", "average", "task_arithmetic", "ties", "dare_linear", "dare_ties", "consensus", "mmer"}
# mergekit's methods that combine two or more models
MERGEKIT = {"linear", "slerp", "nuslerp", "multislerp", "karcher", "model_stock", "breadcrumbs", "breadcrumbs_ties",
            "della", "della_linear", "sce", "nearswap", "arcee_fusion", "ram", "ramplus_tl"}


def test_all_methods_registered_with_paper_links():
    assert EXPECTED | MERGEKIT <= set(METHODS) and len(METHODS) >= 20
    for m in METHODS.values():
        # a few community methods have no paper: their reference is mergekit's own link
        assert m.paper.startswith("https://arxiv.org/abs/" if m.name in EXPECTED else "https://"), m.name
        validate_params(m.name, {})  # defaults are within their own ranges
    assert get_method("graft").needs_base is False and get_method("ties").needs_base is True


def test_validate_fills_defaults_and_coerces():
    p = validate_params("graft", {"bins": 20.0, "c": 100})
    assert p["bins"] == 20 and isinstance(p["bins"], int) and p["c"] == 100.0 and p["a"] == 0.4


@pytest.mark.parametrize(
    "method,params,match",
    [
        ("graft", {"a": 0.4, "foo": 1}, "foo"),
        ("graft", {"a": 1.5}, "'a'=1.5 is above"),
        ("ties", {"density": -0.1}, "'density'=-0.1 is below"),
        ("graft", {"gates": "both"}, "'gates'='both'"),
        ("graft", {"bins": 2.5}, "'bins'=2.5 must be an integer"),
        ("dare_linear", {"p": "half"}, "'p'='half' must be a number"),
        ("nope", {}, "'nope'"),
    ],
)
def test_validate_rejects_naming_the_bad_value(method, params, match):
    with pytest.raises(ValueError, match=match):
        validate_params(method, params)


def test_methods_cli_json_and_text(capsys):
    from graft_ui.commands import main

    assert main(["methods", "--json"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert {m["name"] for m in data} == set(METHODS)
    assert next(m for m in data if m["name"] == "slerp")["lora"].startswith("refused: SLERP")
    graft = next(m for m in data if m["name"] == "graft")
    assert {"name": "a", "default": 0.4, "kind": "float", "low": 0.0, "high": 1.0}.items() <= graft["params"][0].items()
    assert main(["methods", "ties"]) == 0
    out = capsys.readouterr().out
    assert "density" in out and "https://arxiv.org/abs/2306.01708" in out
    assert main(["methods", "nope"]) == 1
    assert describe(["mmer"])[0]["name"] == "mmer"
