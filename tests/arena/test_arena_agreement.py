"""Best-of-N groups from tuning records, and ratings against held-out accuracy (Spearman), on hand-made files."""

from __future__ import annotations

import json

import pytest

from graft_ui.arena.agreement import ALL, accuracy_records, human_vs_auto
from graft_ui.arena.plots import agreement_figure
from graft_ui.arena.verdicts import tuning_groups


def tuned(folder, method, experts, trials, accuracy=None):
    (folder / "tune").mkdir(parents=True)
    rows = [{"label": "x", "role": "tuned", "accuracy": accuracy}] if accuracy else []
    (folder / "tune" / "tune.json").write_text(json.dumps(
        {"method": method, "experts": experts, "trials": [{}] * trials, "heldout": {"rows": rows}}))
    return folder


def test_tuning_groups_count_the_siblings_tried(tmp_path):
    dirs = {"tuned-ties-1": tuned(tmp_path / "t1", "ties", ["math-lora", "code-lora"], 12),
            "tuned-ties-2": tuned(tmp_path / "t2", "ties", ["math-lora", "code-lora"], 8),
            "tuned-graft-1": tuned(tmp_path / "g1", "graft", ["math-lora", "code-lora"], 5),
            "plain": tmp_path / "plain"}
    groups = tuning_groups(dirs)
    assert set(groups) == {"tuned-ties-1", "tuned-ties-2", "tuned-graft-1"}
    ties = groups["tuned-ties-1"]
    assert ties is groups["tuned-ties-2"] and ties.trials == 20 and ties.variants == ("tuned-ties-1", "tuned-ties-2")
    assert groups["tuned-graft-1"].trials == 5 and groups["tuned-graft-1"].key == "graft: math-lora + code-lora"


def test_human_vs_auto_rows_and_spearman(tmp_path):
    zoo = tmp_path / "zoo"
    zoo.mkdir()
    (zoo / "build_info.json").write_text(json.dumps({"self_check": {"models": {
        "base": {"domains": {"math": {"accuracy": 10.0}}},
        "math-lora": {"domains": {"math": {"accuracy": 60.0}}}}}}))
    acc = accuracy_records(zoo, {"tuned-1": tuned(tmp_path / "t", "ties", ["m"], 3, {"math": 40.0})})
    assert acc == {"base": {"math": 10.0}, "math-lora": {"math": 60.0}, "tuned-1": {"math": 40.0}}
    order = ["math-lora", "tuned-1", "base"]  # people agree with the benchmark: rho = 1
    votes = [{"turn_id": f"{i}-{j}", "variant_a": order[i], "variant_b": order[j], "vote": "a", "domain": "math",
              "blind": True} for i in range(3) for j in range(i + 1, 3) for _ in range(5)]
    rows, rho = human_vs_auto(votes, acc)
    assert rho["math"] == pytest.approx(1.0) and rho[ALL] == pytest.approx(1.0)
    math_rows = {r["variant"]: r for r in rows if r["domain"] == "math"}
    assert math_rows["math-lora"]["rating"] > math_rows["tuned-1"]["rating"] > math_rows["base"]["rating"]
    flipped = [dict(v, vote="b") for v in votes]  # people disagree: rho = -1
    assert human_vs_auto(flipped, acc)[1]["math"] == pytest.approx(-1.0)
    fig = agreement_figure(rows, rho)
    assert len(fig.data) == 2 and "ρ = +1.00" in fig.data[0].name
