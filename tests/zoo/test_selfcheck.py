"""The zoo's self-check: regime targets, showcase choice, and the profile's expert designs."""

import json
from pathlib import Path
from types import SimpleNamespace

import pytest

from graft_ui.zoo.profiles import DOMAINS, PROFILES, ExpertSpec, Profile, relatedness
from graft_ui.zoo.selfcheck import check_targets, kept_fraction, pick_showcase


def _row(**acc):
    return {"domains": {d: {"accuracy": a} for d, a in acc.items()}}


def _expert(name, domain):
    return SimpleNamespace(name=name, domain=domain)


def test_targets_met_in_the_regime():
    models = {"base": _row(math=20, code=30), "math-lora": _row(math=60, code=25), "code-lora": _row(math=20, code=90)}
    assert check_targets(models, [_expert("math-lora", "math"), _expert("code-lora", "code")]) == []


def test_each_missed_target_is_named():
    models = {"base": _row(math=5, code=70), "math-lora": _row(math=25, code=55)}
    missed = check_targets(models, [_expert("math-lora", "math")])
    assert any("base scores 5.0% on math" in m for m in missed)
    assert any("base scores 70.0% on code" in m for m in missed)
    assert any("math-lora gains +20.0 points" in m for m in missed)
    assert any("math-lora loses 15.0 points against the base on code" in m for m in missed)
    assert len(missed) == 4


def test_margins_name_the_tightest_cell_of_each_target():
    from graft_ui.zoo.selfcheck import target_margins

    models = {"base": _row(math=20, code=12), "math-lora": _row(math=50, code=4), "code-lora": _row(math=18, code=90)}
    m = target_margins(models, [_expert("math-lora", "math"), _expert("code-lora", "code")])
    assert m["base above its floor"] == {"margin": 2.0, "where": "base on code"}
    assert m["base below its ceiling"] == {"margin": 45.0, "where": "base on math"}
    assert m["own-domain gain"] == {"margin": 5.0, "where": "math-lora on math"}
    assert m["drop elsewhere"] == {"margin": 2.0, "where": "math-lora on code"}  # 8 points under the base
    models["math-lora"] = _row(math=40, code=0)  # missed: a negative margin
    assert target_margins(models, [_expert("math-lora", "math")])["drop elsewhere"]["margin"] == -2.0


def test_kept_fraction():
    manifest = SimpleNamespace(expert=lambda n: _expert(n, n.split("-")[0]))
    models = {"math-lora": _row(math=80), "code-lora": _row(code=0)}
    fused = _row(math=60, code=10)
    assert kept_fraction(fused, ["math-lora", "code-lora"], models, manifest) == {"math-lora": 0.75, "code-lora": 0.0}


def test_showcase_prefers_items_the_experts_get_and_the_base_misses(tmp_path):
    data = tmp_path / "data" / "math"
    data.mkdir(parents=True)
    samples = [{"id": f"m{i}", "messages": [{"role": "user", "content": [
        {"type": "image", "image": f"images/m{i}.png"}, {"type": "text", "text": q}]}], "answer": str(i)}
        for i, q in enumerate(["How many?", "How many?", "Sum?", "Count and add?"])]
    (data / "eval.jsonl").write_text("".join(json.dumps(s) + "\n" for s in samples))

    def outputs(ok_ids):
        return {"domains": {"math": {"outputs": [{"id": s["id"], "ok": s["id"] in ok_ids} for s in samples]}}}

    models = {"base": outputs({"m0", "m2"}), "math-lora": outputs({"m0", "m1", "m2"}), "math-full": outputs({"m1", "m2"})}
    manifest = SimpleNamespace(datasets={"math": SimpleNamespace(eval=str(data / "eval.jsonl"))},
                               experts=[_expert("math-lora", "math"), _expert("math-full", "math")])
    show = pick_showcase(models, manifest, tmp_path, per_domain=3)
    # m3: nobody; m1: both experts, base wrong (first); m2: both experts, base right; m0 repeats m1's question
    assert [s["sample_id"] for s in show] == ["m1", "m2"]
    assert show[0]["image"] == "data/math/images/m1.png" and show[0]["correct_by"] == ["math-full", "math-lora"]
    assert show[0]["label"].startswith("Math · ") and show[0]["answer"] == "1"


def test_profile_round_trips_with_its_expert_designs():
    prof = PROFILES["full"]
    again = Profile.from_dict(json.loads(json.dumps(prof.to_dict())))
    assert again == prof
    names = prof.expert_names()
    assert len(names) == len(set(names))
    for kind in ("lora", "full"):  # the study needs >= 15 pairs per kind
        n = sum(name.split("-")[1] == kind for name in names)
        assert n * (n - 1) // 2 >= 15
    assert ExpertSpec("math", 10, variant="b").name("lora") == "math-lora-b"


def test_relatedness_classes():
    assert relatedness("math", "math") == "same"
    assert relatedness("finance", "math") == "related"
    assert relatedness("code", "medical") == "unrelated"
    assert relatedness(None, "math") == "n/a"
    pairs = {relatedness(a, b) for i, a in enumerate(DOMAINS) for b in DOMAINS[i:]}
    assert pairs == {"same", "related", "unrelated"}


@pytest.mark.slow
def test_ci_build_writes_self_check_and_showcase(ci_zoo):
    info = json.loads(Path(ci_zoo, "build_info.json").read_text())
    check = info["self_check"]
    assert set(check["models"]) == {"base", *(f"{d}-{k}" for d in DOMAINS for k in ("lora", "full"))}
    assert all(set(row["domains"]) == set(DOMAINS) for row in check["models"].values())
    assert {f"graft(math-{k}+code-{k})" for k in ("lora", "full")} <= set(check["fusions"])
    assert Path(ci_zoo, "self_check.md").read_text().startswith("# Zoo self-check")
    show = json.loads(Path(ci_zoo, "showcase.json").read_text())
    assert show == [] or {s["domain"] for s in show} == set(DOMAINS)  # every domain, or none


@pytest.mark.slow
def test_scoring_in_worker_processes_gives_the_inline_scores(ci_zoo):
    """The self-check's models and fusions scored as tasks of two worker processes (one model or
    fusion a task) give exactly what scoring them here one after another gives."""
    from graft_ui.zoo.selfcheck import FUSION_WORK, _score

    def without_times(rows):
        return {name: {**row, "domains": {d: {k: v for k, v in e.items() if k != "seconds"}
                                          for d, e in row["domains"].items()}}
                for name, row in rows.items()}

    names = ["base", "math-lora", "code-full"]
    inline = _score(Path(ci_zoo), names, 3, True, 1, None)
    pooled = _score(Path(ci_zoo), names, 3, True, 2, None)
    assert list(pooled[0]) == names and list(pooled[1]) == list(inline[1]) and len(inline[1]) == 4
    assert without_times(pooled[0]) == without_times(inline[0])
    assert without_times(pooled[1]) == without_times(inline[1])
    assert any(d["outputs"] for row in pooled[0].values() for d in row["domains"].values())  # kept for the showcase
    assert not Path(ci_zoo, FUSION_WORK).exists()
