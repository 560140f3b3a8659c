"""The study end to end on the ci zoo: CLI -> study.json / study.md / figures, then resume from the cache."""

import json
import math
from pathlib import Path

import pytest

PAIRS = ["math-lora+code-lora", "math-lora+finance-lora", "code-lora+medical-lora", "math-full+code-full"]
ARGS = ["--pairs", *PAIRS, "--methods", "graft", "task_arithmetic", "--no-ablations", "--limit", "4", "-k", "4",
        "--resamples", "200"]


@pytest.fixture(scope="module")
def study_dir(ci_zoo, tmp_path_factory):
    from graft_ui.commands import main

    out = tmp_path_factory.mktemp("study")
    mp = pytest.MonkeyPatch()
    mp.setenv("TQDM_DISABLE", "1")  # what the CLI would set: keep it from leaking into other tests
    try:
        assert main(["study", "--zoo", str(ci_zoo), "--out", str(out), *ARGS]) == 0
    finally:
        mp.undo()
    return out


def test_study_json_has_both_tables_and_the_fingerprint(study_dir, ci_zoo):
    from graft_ui.study.lookup import zoo_fingerprint

    study = json.loads((study_dir / "study.json").read_text())
    assert study["zoo"]["fingerprint"] == zoo_fingerprint(ci_zoo)
    assert study["zoo"]["fingerprint"]["profile"] == "ci" and len(study["zoo"]["fingerprint"]["settings_hash"]) == 16
    assert [p["pair"] for p in study["pairs"]] == PAIRS
    rel = {p["pair"]: p["relatedness"] for p in study["pairs"]}
    assert rel["math-lora+finance-lora"] == "related" and rel["math-lora+code-lora"] == "unrelated"
    t1 = study["table1"]
    assert len(t1) == len(PAIRS) * 2 and {r["variant"] for r in t1} == {"graft", "task_arithmetic"}
    for r in t1:
        assert "error" not in r, r
        assert set(r["accuracy"]) == set(next(p for p in study["pairs"] if p["pair"] == r["pair"])["domains"])
        for k in ("kept_a", "kept_b", "kept_min"):
            assert r[k] is None or (0.0 <= r[k] < math.inf)
        assert r["fuse_seconds"] > 0 and r["eval_seconds"] > 0
    for p in study["pairs"]:
        assert 0.0 <= p["pair_score"] <= 1.0 and 0.0 <= p["compat_a"] <= 1.0
        assert -1.0 <= p["tv_cosine"] <= 1.0 and 0.0 <= p["sign_agreement"] <= 1.0
        assert p["best_single"] == max(p["single_a"], p["single_b"]) and p["gain_graft"] is not None
        assert p["best_method"] in ("graft", "task_arithmetic", "all tie")
    corr = study["correlations"]
    assert corr["lora"]["n_pairs"] == 3 and corr["full"]["n_pairs"] == 1 and corr["all"]["n_pairs"] == 4
    for pred in ("pair_score", "two_factor_rank", "two_factor_linear", "tv_cosine", "sign_agreement"):
        s = corr["all"]["gain_graft"][pred]
        assert {"rho", "p", "n", "ci_lo", "ci_hi", "resamples", "skipped"} <= set(s)
        if s["rho"] is not None and s["ci_lo"] is not None:
            assert -1.0 <= s["ci_lo"] <= s["ci_hi"] <= 1.0
    assert study["run"]["fusions_done"] == 8 and study["run"]["fusions_cached"] == 0
    assert study["run"]["machine"]["nproc"] >= 1 and "torch" in study["run"]["machine"]["versions"]
    assert study["cost"]["fusions"] == 8 and study["cost"]["fuse_seconds_mean"] > 0


def test_markdown_and_figures(study_dir):
    md = (study_dir / "study.md").read_text()
    assert "python -m graft_ui study --zoo" in md and "## Table 1" in md and "## Table 2" in md
    assert "95% CI" in md and "math-lora+finance-lora | related" in md
    for stem in ("gain_vs_pair_score", "gain_vs_two_factor_linear", "kept_lora", "kept_full"):
        assert (study_dir / f"{stem}.html").stat().st_size > 1000
    from graft_ui.study.plots import chromium

    if chromium():
        assert (study_dir / "kept_lora.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert not (study_dir / "work").exists()  # fused models removed after scoring


def test_resume_reuses_every_cached_result(study_dir, ci_zoo, monkeypatch):
    import graft_ui.models.merge as merge
    from graft_ui.study.runner import StudyConfig, run_study

    def no_fusion(*a, **k):
        raise AssertionError("a resumed study must not fuse again")

    monkeypatch.setattr(merge, "run_recipe", no_fusion)
    before = json.loads((study_dir / "study.json").read_text())
    cfg = StudyConfig(k=4, limit=4)
    again = run_study(ci_zoo, study_dir, pairs=PAIRS, methods=["graft", "task_arithmetic"], ablations=False,
                      config=cfg, resamples=200, png=False)
    assert again["run"]["fusions_done"] == 0 and again["run"]["fusions_cached"] == 8
    assert again["table1"] == before["table1"] and again["pairs"] == before["pairs"]

    # one lost result is redone alone (the rest stays cached)
    monkeypatch.undo()
    cached = next(Path(again["config"]["cache_key"] and study_dir / "cache").rglob("graft.json"))
    cached.unlink()
    third = run_study(ci_zoo, study_dir, pairs=PAIRS, methods=["graft", "task_arithmetic"], ablations=False,
                      config=cfg, resamples=200, png=False)
    assert third["run"]["fusions_done"] == 1 and third["run"]["fusions_cached"] == 7
