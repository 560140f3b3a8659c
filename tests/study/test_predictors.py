"""Table 1 / Table 2 arithmetic and the predictors' statistics on hand-made numbers."""

import math

import pytest

from graft_ui.study.predictors import assemble, loo_linear, table1


def _info(a, b, da, db, rel="unrelated", kind="lora"):
    doms = list(dict.fromkeys([da, db]))
    return {"pair": f"{a}+{b}", "a": a, "b": b, "kind": kind, "relatedness": rel, "domains": doms,
            "domain_a": da, "domain_b": db, "eval_domains": doms,
            "compat": None, "weights": None}


def test_kept_gain_and_rank():
    singles = {"m": {"math": 80.0, "code": 10.0}, "c": {"math": 0.0, "code": 50.0}}
    infos = [_info("m", "c", "math", "code")]
    fused = [{"pair": "m+c", "variant": "graft", "accuracy": {"math": 40.0, "code": 50.0}},
             {"pair": "m+c", "variant": "ties", "accuracy": {"math": 80.0, "code": 25.0}},
             {"pair": "m+c", "variant": "graft[gates=local]", "accuracy": {"math": 0.0, "code": 0.0}}]
    rows = {r["variant"]: r for r in table1(singles, infos, fused, ["graft", "ties", "graft[gates=local]"])}
    g = rows["graft"]
    assert g["kept_a"] == pytest.approx(0.5) and g["kept_b"] == pytest.approx(1.0) and g["kept_min"] == pytest.approx(0.5)
    # B(m) = 45, B(c) = 25 on (math, code); graft B = 45 -> gain 0; ties B = 52.5 -> +7.5
    assert g["gain"] == pytest.approx(0.0) and rows["ties"]["gain"] == pytest.approx(7.5)
    assert rows["ties"]["rank"] == 1 and g["rank"] == 2
    assert "rank" not in rows["graft[gates=local]"] and rows["graft[gates=local]"]["ablation"]


def test_kept_is_none_when_the_expert_scores_zero_on_its_domain():
    singles = {"m": {"math": 0.0}, "n": {"math": 20.0}}
    rows = table1(singles, [_info("m", "n", "math", "math", rel="same")],
                  [{"pair": "m+n", "variant": "graft", "accuracy": {"math": 10.0}}], ["graft"])
    assert rows[0]["kept_a"] is None and rows[0]["kept_b"] == pytest.approx(0.5) and rows[0]["kept_min"] == pytest.approx(0.5)


def test_loo_linear_recovers_an_exact_line_and_refuses_too_few_points():
    xs = [[1.0, 0.0], [2.0, 1.0], [3.0, 0.5], [4.0, 2.0], [5.0, 1.0]]
    y = [2 * a - 3 * b + 1 for a, b in xs]
    assert loo_linear(xs, y) == pytest.approx(y)
    assert loo_linear(xs[:3], y[:3]) == [None, None, None]


def test_assemble_correlations_with_intervals():
    singles, infos, fused = {}, [], []
    for i in range(8):
        a, b = f"e{i}a", f"e{i}b"
        singles[a], singles[b] = {"x": 50.0, "y": 10.0}, {"x": 10.0, "y": 50.0}
        info = _info(a, b, "x", "y")
        info["compat"] = {"score": 0.1 + 0.01 * i, "score_mean": 0.2, "compat_a": 0.1, "compat_b": 0.2}
        info["weights"] = {"cosine": -0.01 * i, "sign_agreement": 0.5}
        infos.append(info)
        fused.append({"pair": info["pair"], "variant": "graft", "accuracy": {"x": 20.0 + i, "y": 20.0 + i},
                      "fuse_seconds": 0.1, "eval_seconds": 1.0})
    study = assemble(singles, infos, fused, ["graft"], resamples=200, seed=0)
    c = study["correlations"]["lora"]["gain_graft"]
    assert study["correlations"]["lora"]["n_pairs"] == 8
    assert c["pair_score"]["rho"] == pytest.approx(1.0) and c["pair_score"]["n"] == 8
    assert c["tv_cosine"]["rho"] == pytest.approx(-1.0)
    assert c["pair_score"]["ci_lo"] == pytest.approx(1.0) and c["pair_score"]["ci_hi"] == pytest.approx(1.0)
    assert c["sign_agreement"]["rho"] is None  # constant predictor: undefined, not 0
    assert all(r["predicted_gain"] is not None and math.isfinite(r["predicted_gain"]) for r in study["pairs"])
    assert study["cost"]["fusions"] == 8 and study["cost"]["eval_seconds_mean"] == pytest.approx(1.0)
