"""The study (and eval --methods) through a real Ray head on 127.0.0.1 (the suite's `ray_address`):
the same numbers as the local run, the same resumable cache."""

import json
import math

import pytest

PAIRS = ["math-lora+code-lora", "math-full+code-full"]
METHODS = ["graft", "task_arithmetic"]
SETTINGS = dict(pairs=PAIRS, methods=METHODS, ablations=False, resamples=100, png=False)


@pytest.fixture(scope="module")
def runs(ci_zoo, ray_address, tmp_path_factory):
    """(local study, Ray study, Ray output folder): the same subset, k=4 and 4 eval items per domain."""
    from graft_ui.study.runner import StudyConfig, run_study

    cfg = StudyConfig(k=4, limit=4)
    local = run_study(ci_zoo, tmp_path_factory.mktemp("local"), config=cfg, **SETTINGS)
    out = tmp_path_factory.mktemp("ray")
    events = []
    on_ray = run_study(ci_zoo, out, config=cfg, ray=ray_address, progress=events.append, **SETTINGS)
    assert any("on Ray at 127.0.0.1" in e for e in events)
    return local, on_ray, out


def test_a_ray_run_matches_the_local_run(runs):
    local, on_ray, _ = runs
    assert on_ray["run"]["fusions_done"] == len(PAIRS) * len(METHODS) and on_ray["config"]["ray"]
    assert [r["variant"] for r in on_ray["table1"]] == [r["variant"] for r in local["table1"]]
    for a, b in zip(local["table1"], on_ray["table1"]):
        assert "error" not in b, b
        # accuracies are counts of exact answers over 4 items: a one-ulp difference between the
        # processes' kernels must not flip an answer, so they agree to rounding
        assert a["accuracy"].keys() == b["accuracy"].keys()
        assert all(math.isclose(a["accuracy"][d], b["accuracy"][d], abs_tol=1e-9) for d in a["accuracy"])
    for a, b in zip(local["pairs"], on_ray["pairs"]):
        # compatibility and cosine are float reductions over activations and weights: equal to 1e-5
        for key in ("pair_score", "compat_a", "compat_b", "tv_cosine", "sign_agreement", "gain_graft"):
            assert (a[key] is None and b[key] is None) or a[key] == pytest.approx(b[key], rel=1e-5, abs=1e-6), key


def test_a_ray_run_resumes_locally_from_the_same_cache(runs, ci_zoo, monkeypatch):
    import graft_ui.models.merge as merge
    from graft_ui.study.runner import StudyConfig, run_study

    _, on_ray, out = runs
    pieces = list((out / "cache").rglob("*.json"))
    assert {p.parent.name for p in pieces} >= {"singles", "compat", "weights"} and len(pieces) >= 10
    assert not (out / "work").exists()  # the tasks fused into their own temp folders

    def no_fusion(*a, **k):
        raise AssertionError("the Ray run's cache must satisfy a local resume")

    monkeypatch.setattr(merge, "run_recipe", no_fusion)
    again = run_study(ci_zoo, out, config=StudyConfig(k=4, limit=4), **SETTINGS)
    assert again["run"]["fusions_cached"] == len(PAIRS) * len(METHODS) and again["run"]["fusions_done"] == 0
    assert again["table1"] == on_ray["table1"]


def test_a_local_run_resumes_on_ray(runs, ci_zoo, ray_address, tmp_path):
    """Half a study done locally; the Ray run does only the rest."""
    from graft_ui.study.runner import StudyConfig, run_study

    cfg = StudyConfig(k=4, limit=4)
    one = {**SETTINGS, "pairs": PAIRS[:1]}
    run_study(ci_zoo, tmp_path, config=cfg, **{**one, "methods": METHODS[:1]})
    done = run_study(ci_zoo, tmp_path, config=cfg, ray=ray_address, **one)
    assert done["run"]["fusions_cached"] == 1 and done["run"]["fusions_done"] == len(METHODS) - 1
    assert json.loads((tmp_path / "study.json").read_text())["config"]["ray"] == ray_address


def test_a_missing_cluster_is_named(ci_zoo, tmp_path):
    from graft_ui.fanout import Backend, run_jobs

    with pytest.raises(ValueError, match="no Ray cluster at '127.0.0.1:9'"):
        run_jobs([1], lambda job, report: job, Backend(ray="127.0.0.1:9"))


def test_eval_methods_on_ray_matches_the_local_table(ci_zoo, ray_address, tmp_path):
    from graft_ui.commands import main

    args = ["eval", "--methods", "--experts", "math-lora", "code-lora", "--method", "task_arithmetic", "--zoo",
            str(ci_zoo), "--domains", "math", "--limit", "2", "--quiet"]
    assert main([*args, "--out", str(tmp_path / "local")]) == 0
    assert main([*args, "--ray", ray_address, "--out", str(tmp_path / "ray")]) == 0
    local, on_ray = (json.loads((tmp_path / d / "results.json").read_text()) for d in ("local", "ray"))
    assert list(on_ray["models"]) == ["base", "math-lora", "code-lora", "task_arithmetic"] == list(local["models"])
    for name, row in local["models"].items():  # exact-match counts over 2 items: equal, see above
        assert math.isclose(row["mean"], on_ray["models"][name]["mean"], abs_tol=1e-9), name
