"""`python -m graft_ui advise` on the ci zoo, fitted on a small real study of that zoo."""

import json

import pytest

from graft_ui.commands import main


@pytest.fixture(scope="module")
def ci_study(ci_zoo, tmp_path_factory):
    """Every LoRA pair of the ci zoo, Graft only, 4 eval items and K = 4: a real study, small and quick."""
    out = tmp_path_factory.mktemp("study")
    mp = pytest.MonkeyPatch()
    mp.setenv("TQDM_DISABLE", "1")
    try:
        assert main(["study", "--zoo", str(ci_zoo), "--out", str(out), "--kinds", "lora", "--methods", "graft",
                     "--no-ablations", "--limit", "4", "-k", "4", "--resamples", "50", "--no-png"]) == 0
    finally:
        mp.undo()
    return out / "study.json"


@pytest.fixture(autouse=True)
def no_kept_forecast(monkeypatch, tmp_path, request):
    """The Graft-gain tests run without a fitted kept forecast (it would preview every pair and method)."""
    if "tiny_forecast" not in request.fixturenames:
        from graft_ui.advisor import kept

        monkeypatch.setenv(kept.ENV, str(tmp_path / "absent.json"))


def test_advise_prints_every_pair_ranked_with_its_error(ci_zoo, ci_study, capsys):
    assert main(["advise", "--zoo", str(ci_zoo), "--dataset", "math+code", "--study", str(ci_study),
                 "--kinds", "lora", "-k", "4"]) == 0
    out = capsys.readouterr().out
    assert "== lora pairs on math+code: Graft gain" in out
    assert "Fitted on this zoo's own study" in out and "held-out Spearman" in out and "RMSE" in out
    ranked = [line for line in out.splitlines() if line[:3].strip().isdigit()]
    assert len(ranked) == 6  # 4 LoRA experts: every pair
    assert "recommendation: Fuse " in out and "points on math+code" in out


def test_advise_json_is_sorted_by_predicted_accuracy_and_marks_measured_pairs(ci_zoo, ci_study, capsys):
    assert main(["advise", "--zoo", str(ci_zoo), "--dataset", "math+code", "--study", str(ci_study),
                 "--kinds", "lora", "-k", "4", "--json"]) == 0
    (fc,) = json.loads(capsys.readouterr().out)["gain_forecasts"]
    accs = [p["predicted_accuracy"] for p in fc["pairs"]]
    assert accs == sorted(accs, reverse=True)
    study = json.loads(ci_study.read_text())
    by_pair = {p["pair"]: p for p in fc["pairs"]}
    own = by_pair["math-lora+code-lora"]
    row = next(r for r in study["pairs"] if r["pair"] == "math-lora+code-lora")
    assert not own["extrapolated"] and own["measured_gain"] == pytest.approx(row["gain_graft"])
    assert own["tv_cosine"] == pytest.approx(row["tv_cosine"])  # the same zoo: read from the study
    assert by_pair["finance-lora+medical-lora"]["extrapolated"]
    for p in fc["pairs"]:
        assert p["predicted_accuracy"] == pytest.approx(min(100, max(0, p["best_single"] + p["predicted_gain"])))
        assert p["error"] >= 0 and 0.0 <= p["compatibility"] <= 1.0
    assert fc["sources"]["best_single"] == "study" and fc["sources"]["tv_cosine"] == "study"


def test_without_any_study_the_command_says_no_predictor_exists(ci_zoo, monkeypatch, tmp_path, caplog):
    from graft_ui.advisor import source

    monkeypatch.setattr(source, "COMMITTED", tmp_path / "absent.json")
    monkeypatch.delenv(source.ENV, raising=False)
    assert main(["advise", "--zoo", str(ci_zoo), "--dataset", "math"]) == 1
    assert "No fitted predictor exists" in caplog.text


def test_an_unknown_domain_is_named(ci_zoo, ci_study, caplog):
    assert main(["advise", "--zoo", str(ci_zoo), "--dataset", "math+poetry", "--study", str(ci_study),
                 "--kinds", "lora"]) == 1
    assert "poetry" in caplog.text


def test_own_experts_are_told_the_predictor_is_the_demo_zoos(ci_zoo, ci_study, tmp_path, capsys):
    """A manifest that is not the zoo the study was made on: every signal is measured afresh, and the note says so."""
    from graft_ui.models.manifest import load_manifest

    load_manifest(ci_zoo).save(tmp_path / "manifest.yaml")  # the same experts, but not a zoo build
    assert main(["advise", "--manifest", str(tmp_path / "manifest.yaml"), "--dataset", "math", "--study",
                 str(ci_study), "--kinds", "lora", "-k", "2", "--limit", "2", "--json"]) == 0
    (fc,) = json.loads(capsys.readouterr().out)["gain_forecasts"]
    assert "fitted on the ci demo zoo, not on the loaded experts" in fc["note"]
    assert fc["sources"] == {"compatibility": "computed on K=2 samples", "tv_cosine": "computed",
                             "best_single": "evaluated (first 2)"}
    assert all(p["measured_gain"] is None for p in fc["pairs"])  # the study's measurements are of another zoo


def test_advise_forecasts_kept_fraction_per_pair_and_method_with_its_validation(ci_zoo, ci_study, tiny_forecast,
                                                                                capsys):
    args = ["advise", "--zoo", str(ci_zoo), "--dataset", "math+code", "--study", str(ci_study), "--kinds", "lora",
            "-k", "2", "--forecast", str(tiny_forecast), "--preview-k", "2"]
    assert main(args) == 0
    out = capsys.readouterr().out
    line = next(x for x in out.splitlines() if x.startswith("validation: "))
    assert "leave-one-expert-out over 21 pairs" in line and "pooled ρ" in line and "WEAK" in line
    assert "recommendation: Fuse " in out and " with " in out and "weak forecast" in out
    assert main(args + ["--json"]) == 0  # the previews are cached: the second run computes nothing new
    data = json.loads(capsys.readouterr().out)
    v = data["validation"]["lora"]
    assert v["protocol"] == "leave-one-expert-out" and v["pairs"] == 21 and len(v["ci"]) == 2
    assert {"rho", "rmse", "transfer_rho", "reliability", "per_method"} <= set(v)
    assert set(v["per_method"]) == {"graft", "ties"} and {"rho", "ci"} <= set(v["per_method"]["ties"])
    pairs = data["pairs"]
    assert len(pairs) == 6 * 2  # 4 LoRA experts: 6 pairs, 2 methods
    for p in pairs:
        assert p["kind"] == "lora" and p["method"] in ("graft", "ties") and len(p["experts"]) == 2
        assert p["error"] == pytest.approx(v["per_method"][p["method"]]["rmse"])
        assert 0.0 <= p["predicted_kept_min"] <= 1.5
