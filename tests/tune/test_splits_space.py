"""Dev splits (carved from train, disjoint from eval: asserted) and the search space."""

import json

import pytest

from graft_ui.models.manifest import load_manifest
from graft_ui.recipe import Recipe
from graft_ui.tune.space import MODULE_GROUPS, apply, method_dims, recipe_values, search_dims
from graft_ui.tune.splits import SplitOverlap, assert_disjoint, content_key, dev_split
from graft_ui.zoo.domains import read_jsonl


@pytest.fixture(scope="module")
def manifest(ci_zoo):
    return load_manifest(ci_zoo)


def test_dev_split_is_disjoint_from_eval_and_deterministic(manifest):
    for d in manifest.datasets:
        s = dev_split(manifest, d, size=8, seed=0)
        heldout = read_jsonl(manifest.dataset(d).eval)
        assert len(s.items) == 8 and s.source == "train split (carved)"
        assert not set(s.ids) & {x["id"] for x in heldout}
        assert not {content_key(x) for x in s.items} & {content_key(x) for x in heldout}
        assert dev_split(manifest, d, size=8, seed=0).ids == s.ids
        train_ids = [x["id"] for x in read_jsonl(manifest.dataset(d).train)]
        assert set(s.ids) <= set(train_ids) and s.ids == [i for i in train_ids if i in set(s.ids)]  # file order
    assert dev_split(manifest, "math", size=8, seed=1).ids != dev_split(manifest, "math", size=8, seed=0).ids


def test_an_eval_item_in_train_is_never_a_dev_item(manifest, tmp_path):
    heldout = read_jsonl(manifest.dataset("math").eval)
    train = read_jsonl(manifest.dataset("math").train)[:5]
    leaked = dict(heldout[0], id="renamed-copy")  # the same question under another id
    (tmp_path / "train.jsonl").write_text("\n".join(json.dumps(x) for x in [leaked, *train]) + "\n")
    (tmp_path / "manifest.yaml").write_text(
        f"base: {{path: {manifest.base.path}}}\ndatasets:\n  math: {{eval: {manifest.dataset('math').eval}, "
        f"train: {tmp_path / 'train.jsonl'}}}\n")
    s = dev_split(load_manifest(tmp_path / "manifest.yaml"), "math", size=10)
    assert s.dropped == 1 and "renamed-copy" not in s.ids and len(s.items) == 5
    with pytest.raises(SplitOverlap, match="1 shared question"):
        assert_disjoint([leaked, *train], heldout, "math")
    with pytest.raises(SplitOverlap, match="1 shared id"):
        assert_disjoint([dict(train[0], id=heldout[1]["id"])], heldout, "math")


def test_a_domain_without_train_split_is_refused(manifest, tmp_path):
    (tmp_path / "m.yaml").write_text(f"base: {{path: {manifest.base.path}}}\ndatasets:\n"
                                     f"  math: {{eval: {manifest.dataset('math').eval}}}\n")
    with pytest.raises(ValueError, match="no train split"):
        dev_split(load_manifest(tmp_path / "m.yaml"), "math")


def test_the_recipe_itself_is_a_point_of_its_search_space():
    r = Recipe.from_dict({"method": "graft", "experts": ["a", "b"], "params": {"c": 9000.0, "scale": 1.0},
                          "scope": {"layers": [1, 2]}, "calibrate": {"samples": 2}})
    dims = {d.name: d for d in search_dims(r, 4)}
    assert {"a", "c", "bins", "gates", "alpha", "beta", "scale", "first_layer", "last_layer", "modules"} == set(dims)
    assert dims["c"].high == 9000.0  # widened to contain the recipe's own value
    own = recipe_values(r, 4)
    back = apply(r, own, 4)
    assert dict(back.params) == dict(r.params) and back.scope == r.scope and back.calibrate is None
    moved = apply(r, dict(own, first_layer=3, last_layer=0, modules="mlp", scale=2.0), 4)
    assert moved.scope.layers == "all" and moved.scope.modules == MODULE_GROUPS["mlp"] and moved.params["scale"] == 2.0
    assert [d.name for d in method_dims("ties")] == ["density", "lam"]
    assert [d.name for d in method_dims("task_arithmetic")] == ["lam"]


def test_scale_is_labelled_as_not_in_the_paper():
    from graft_ui.merging import graft
    from graft_ui.merging.registry import describe

    assert "NOT in the paper" in graft.__doc__
    scale = next(p for m in describe() if m["name"] == "graft" for p in m["params"] if p["name"] == "scale")
    assert scale["default"] == 1.0 and "NOT in the paper" in scale["help"]  # the Fuse tab shows help as the info
