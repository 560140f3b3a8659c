"""`zoo trial`: expert designs trained on a built zoo's base and scored against the regime targets."""

import json

from graft_ui.commands import main
from graft_ui.zoo.build import BUILD_INFO
from graft_ui.zoo.reuse import weights_hash


def test_trial_trains_designs_on_the_zoos_base_and_reports_gains(ci_zoo, tmp_path, capsys):
    before = weights_hash(ci_zoo)
    designs = ['{"domain": "math", "steps": 3, "variant": "t1"}',
               '{"domain": "math", "steps": 3, "variant": "t2", "lora_rank": 4}']
    assert main(["zoo", "trial", "--zoo", str(ci_zoo), "--out", str(tmp_path / "trial"), "--json",
                 *[a for d in designs for a in ("--design", d)]]) == 0
    rows = json.loads(capsys.readouterr().out)
    assert [r["name"] for r in rows] == ["math-lora-t1", "math-full-t1", "math-lora-t2", "math-full-t2"]
    info = json.loads((tmp_path / "trial" / BUILD_INFO).read_text())
    base = info["self_check"]["models"]["base"]["domains"]
    for r in rows:  # the gain and drops are the self-check's cells against the source zoo's base
        assert r["gain"] == round(r["accuracy"]["math"] - base["math"]["accuracy"], 1)
        assert r["worst_drop"] == round(max(base[d]["accuracy"] - a for d, a in r["accuracy"].items()
                                            if d != "math"), 1)
        assert all(m.startswith(r["name"] + " ") for m in r["missed"])
    assert info["base_from"]["path"] == str(ci_zoo)
    assert info["settings"]["experts"][1]["lora_rank"] == 4
    assert weights_hash(ci_zoo) == before  # the source zoo is not touched


def test_trial_refuses_a_bad_design_by_name(ci_zoo, tmp_path, caplog):
    assert main(["zoo", "trial", "--zoo", str(ci_zoo), "--out", str(tmp_path / "t"),
                 "--design", '{"domain": "math", "steps": 3, "rank": 4}']) == 1
    assert "unknown design field(s) ['rank']" in caplog.text
    assert main(["zoo", "trial", "--zoo", str(ci_zoo), "--out", str(tmp_path / "t"),
                 "--design", "steps=3"]) == 1
    assert "is not JSON" in caplog.text
    assert not (tmp_path / "t").exists()
