"""The tuner end to end on the ci zoo: 3 trials, tiny splits, the CLI's files; seeds; Stop."""

import json

import pytest
import yaml

from graft_ui.commands import main
from graft_ui.recipe import Recipe

RECIPE = {"method": "graft", "experts": [{"path": "math-lora", "name": "math-lora"},
                                         {"path": "code-lora", "name": "code-lora"}]}


@pytest.fixture(scope="module")
def tuned(ci_zoo, tmp_path_factory):
    out = tmp_path_factory.mktemp("tune")
    (out / "recipe.yaml").write_text(yaml.safe_dump(RECIPE))
    mp = pytest.MonkeyPatch()
    mp.setenv("TQDM_DISABLE", "1")
    try:
        assert main(["tune", str(out / "recipe.yaml"), "--zoo", str(ci_zoo), "--dev-domains", "math", "code",
                     "--trials", "3", "--dev-size", "4", "--limit", "4", "--top", "2", "--out", str(out / "run")]) == 0
    finally:
        mp.undo()
    return out / "run"


def test_tune_writes_its_report_with_held_out_numbers_side_by_side(tuned):
    res = json.loads((tuned / "tune.json").read_text())
    assert len(res["trials"]) == 3 and res["stopped"] == "3 trial(s) done"
    t0 = res["trials"][0]
    assert t0["default"] and t0["values"]["scale"] == 1.0 and t0["values"]["a"] == 0.4  # trial 0 = the recipe
    assert res["dev_eval_disjoint"] and {s["n"] for s in res["splits"].values()} == {4}
    for d, s in res["splits"].items():
        assert all(i.startswith(f"{d}-train-") for i in s["ids"])  # carved from the train split
    roles = [r["role"] for r in res["heldout"]["rows"]]
    assert roles[:2] == ["expert", "expert"] and "default" in roles
    assert ("tuned" in roles) != (res["best"]["number"] == 0)  # the defaults are "tuned" when nothing beat them
    assert all(set(r["accuracy"]) == {"math", "code"} and set(r["n"].values()) == {4} for r in res["heldout"]["rows"])
    assert res["verdict"].startswith("held-out mean over math+code")
    md = (tuned / "tune.md").read_text()
    assert "## Held-out (the numbers that count)" in md and "defaults (trial 0)" in md
    assert "--zoo" in md and "--dev-domains math code --trials 3" in md  # the command that reproduces the run
    tuned_recipe = Recipe.from_yaml((tuned / "tuned-recipe.yaml").read_text())
    assert tuned_recipe.method == "graft" and len(tuned_recipe.experts) == 2
    assert (tuned / "pareto.html").is_file() and not (tuned / "work").exists()


def test_the_sampler_is_seeded(ci_zoo, tmp_path):
    from graft_ui.models.manifest import load_manifest
    from graft_ui.tune.tuner import TuneConfig, Tuner

    m = load_manifest(ci_zoo)

    def proposals(seed):
        t = Tuner(Recipe.from_dict(RECIPE), m, TuneConfig(("math",), dev_size=2, seed=seed), tmp_path)
        out = []
        for _ in range(3):
            trial = t.study.ask()
            out.append({d.name: d.suggest(trial) for d in t.dims})
        return out

    a, b, c = proposals(0), proposals(0), proposals(1)
    assert a == b and a[1:] != c[1:] and a[0]["a"] == 0.4  # trial 0 is the recipe whatever the seed


def test_stop_ends_the_search_after_the_running_trial(ci_zoo, tmp_path):
    from graft_ui.models.manifest import load_manifest
    from graft_ui.study.worker import release_models
    from graft_ui.tune.tuner import TuneConfig, Tuner

    t = Tuner(Recipe.from_dict(RECIPE), load_manifest(ci_zoo), TuneConfig(("math",), trials=20, dev_size=2), tmp_path)
    try:
        for r in t.run():
            t.stop.set()  # the user pressed Stop during trial 0
    finally:
        release_models()
    assert len(t.results) == 1 and t.stopped == "stopped by the user" and t.best().default


def test_bad_settings_are_named():
    from graft_ui.tune.tuner import TuneConfig

    with pytest.raises(ValueError, match="dev domain"):
        TuneConfig(())
    with pytest.raises(ValueError, match="budget_s"):
        TuneConfig(("math",), budget_s=0)
