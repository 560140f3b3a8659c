"""Leave-one-expert-out validation of the kept-fraction forecast, and its intervals over experts."""

import pytest
from _forecast import synthetic_rows

from graft_ui.advisor import kept, validate as V

EXPERTS = [f"e{i}" for i in range(7)]
METHODS = ["task_arithmetic", "ties", "graft"]


def _rows(noise=0.0):
    return synthetic_rows("lora", tuple(METHODS), len(EXPERTS), noise)


def test_leave_one_expert_out_never_fits_on_a_pair_containing_the_held_out_expert(monkeypatch):
    rows = _rows()
    seen = []
    real = V.fit

    def spy(train, *args, **kwargs):
        seen.append({n for r in train for n in (r["a"], r["b"])})
        return real(train, *args, **kwargs)

    monkeypatch.setattr(V, "fit", spy)
    preds, folds = V.loeo(rows, V.MODEL_FEATURES)
    assert [f["expert"] for f in folds] == EXPERTS and len(seen) == len(EXPERTS)
    for fold, experts in zip(folds, seen):
        assert fold["expert"] not in experts  # no training row names the held-out expert
        assert fold["test_rows"] == (len(EXPERTS) - 1) * len(METHODS)
    assert all(p is not None for p in preds)


def test_a_signal_that_determines_kept_min_is_recovered_held_out():
    rows = _rows()
    preds, _ = V.loeo(rows, V.MODEL_FEATURES)
    s = V.score(rows, preds, resamples=200)
    assert s["rho"] > 0.95 and s["ci"][0] > 0.9 and s["rmse"] < 0.05
    assert s["pairs"] == 21 and s["experts"] == 7 and set(s["per_method"]) == set(METHODS)


def test_the_expert_bootstrap_is_seeded_and_widens_with_noise():
    rows = _rows(noise=0.3)
    preds, _ = V.loeo(rows, V.MODEL_FEATURES)
    one = V.expert_bootstrap(rows, preds, [r["kept_min"] for r in rows], resamples=200, seed=3)
    two = V.expert_bootstrap(rows, preds, [r["kept_min"] for r in rows], resamples=200, seed=3)
    assert one == two
    clean = V.score(_rows(), V.loeo(_rows(), V.MODEL_FEATURES)[0], resamples=200)
    assert one["hi"] - one["lo"] > clean["ci"][1] - clean["ci"][0]


def test_the_artifact_round_trips_and_labels_a_forecast_without_transfer_weak(tmp_path):
    art = kept.build(_rows(), resamples=100)
    v = art["kinds"]["lora"]["validation"]
    assert v["protocol"] == "leave-one-expert-out" and v["transfer_rho"] is None and not v["meets_targets"]
    from graft_ui.advisor import report

    report.write(art, tmp_path)
    loaded = kept.load_artifact(tmp_path)
    fc = kept.KeptForecast.from_artifact(loaded, "lora")
    assert fc.weak and fc.error("ties") == pytest.approx(v["per_method"]["ties"]["rmse"])
    row = _rows()[0]
    assert fc.predict(row)["kept_min"] == pytest.approx(row["kept_min"], abs=0.05)
    assert "leave-one-expert-out" in (tmp_path / "study.md").read_text()
    assert 'src="../plotly.min.js"' in (tmp_path / "kept_lora.html").read_text()  # one shared copy
    with pytest.raises(ValueError, match="method 'dare'"):
        fc.predict({**row, "method": "dare"})


def test_transfer_never_scores_a_pair_the_model_was_fitted_on(monkeypatch):
    rows = _rows()
    other = [r for r in rows if {r["a"], r["b"]} <= {"e0", "e1", "e2"}]  # a zoo that shares three experts' pairs
    fitted = []
    real = V.fit

    def spy(train, *args, **kwargs):
        fitted.append({frozenset((r["a"], r["b"])) for r in train})
        return real(train, *args, **kwargs)

    monkeypatch.setattr(V, "fit", spy)
    v = kept.build(rows, transfer=other, resamples=50)["kinds"]["lora"]["validation"]
    shared = {frozenset((r["a"], r["b"])) for r in other}
    assert len(shared) == 3 and any(pairs and not pairs & shared and len(pairs) == 18 for pairs in fitted)
    assert v["transfer_pairs"] == 3 and v["transfer_fit_pairs"] == 18 and v["transfer_rho"] > 0.9
