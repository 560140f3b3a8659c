"""Where the predictor's study comes from, fitting per kind, provenance sentences, the recommendation line."""

import json

import pytest

from graft_ui.advisor import source
from graft_ui.advisor.forecast import PairForecast, recommendation
from graft_ui.advisor.source import NoPredictor, fit_all, fit_kind, locate_study, provenance

FP = {"format": 7, "profile": "ci", "seed": 1, "settings_hash": "abc"}


def fake_study(n=6, kind="lora"):
    pairs = [{"pair": f"e{i}+e{i + 1}", "a": f"e{i}", "b": f"e{i + 1}", "kind": kind, "pair_score": 0.1 * i,
              "tv_cosine": 0.05 * (i % 3), "best_single": 10.0 * (i % 2), "gain_graft": 2.0 * i - 5.0}
             for i in range(n)]
    return {"pairs": pairs, "zoo": {"fingerprint": FP, "manifest": "m.yaml"}, "_path": "s.json"}


def test_fit_kind_reports_held_out_quality():
    p = fit_kind(fake_study(), "lora")
    assert p.heldout["n"] == 6 and p.error == pytest.approx(p.heldout["rmse"]) and p.error >= 0
    assert p.features == ("pair_score", "tv_cosine", "best_single")
    assert [t["pair"] for t in p.training] == [f"e{i}+e{i + 1}" for i in range(6)]
    assert "leave-one-pair-out over 6 lora pairs" in p.quality()
    # the gain rises with pair_score in the fake data: a higher score predicts a higher gain
    assert p.predict({"pair_score": 0.5, "tv_cosine": 0.05, "best_single": 0}) > \
        p.predict({"pair_score": 0.0, "tv_cosine": 0.05, "best_single": 0})


def test_too_few_pairs_is_said_not_fitted():
    with pytest.raises(NoPredictor, match="needs 4"):
        fit_kind(fake_study(3), "lora")
    assert isinstance(fit_all(fake_study(3))["lora"], str)


def test_locate_study_order(tmp_path, monkeypatch):
    committed, mine, env = tmp_path / "committed.json", tmp_path / "mine", tmp_path / "env.json"
    monkeypatch.setattr(source, "COMMITTED", committed)
    monkeypatch.delenv(source.ENV, raising=False)
    with pytest.raises(NoPredictor, match="No fitted predictor exists"):
        locate_study()
    committed.write_text(json.dumps(fake_study()))
    assert locate_study() == committed
    env.write_text("{}")
    monkeypatch.setenv(source.ENV, str(env))
    assert locate_study() == env
    mine.mkdir()
    (mine / "study.json").write_text("{}")
    assert locate_study(mine) == mine / "study.json"  # an explicit study wins
    with pytest.raises(FileNotFoundError, match="not a study.json"):
        locate_study(tmp_path / "missing.json")


def test_provenance_says_when_the_experts_are_not_the_fitted_zoo():
    p = fit_kind(fake_study(), "lora")
    assert provenance(p, FP).startswith("Fitted on this zoo's own study")
    other = provenance(p, dict(FP, settings_hash="zzz"))
    assert "fitted on the ci demo zoo, not on the loaded experts" in other
    assert "fitted on the ci demo zoo" in provenance(p, None)


def test_recommendation_line():
    r = PairForecast("math-lora", "finance-lora", "lora", ["math", "finance"], 0.4, 0.1, 50.0, "math-lora",
                     6.2, 4.1, 56.2, False, measured_gain=5.0)
    text = recommendation([r], ["math", "finance"])
    assert text.startswith("Fuse math-lora + finance-lora: predicted +6 ± 5 points on math+finance")  # error rounded up
    assert "measured +5" in text and "extrapolated" not in text
    assert recommendation([], ["math"]) == "No pair to recommend."
    small = PairForecast("a", "b", "lora", ["math"], 0.4, 0.1, 0.0, "a", -0.3, 0.4, 0.0, True)
    assert "predicted +0 ± 1 points" in recommendation([small], ["math"])
