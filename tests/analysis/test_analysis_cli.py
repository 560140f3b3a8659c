"""`python -m graft_ui analyze` / `correlate` end to end on the mini manifest."""

from __future__ import annotations

import json

import pytest

from graft_ui.commands import main

MODULE_KEYS = {"mu", "s", "v", "rho", "mu_n", "s_n", "v_n", "rho_n", "tower", "layer", "module_type", "calls"}


def test_analyze_writes_json_and_figures(mini_manifest, tmp_path, capsys):
    out = tmp_path / "an"
    rc = main(["analyze", "--manifest", str(mini_manifest), "--dataset", "math", "-k", "3", "--out", str(out),
               "--device", "cpu", "--no-png", "--experts", "math-lora,medical-lora,math-full"])
    assert rc == 0
    data = json.loads((out / "analysis.json").read_text())
    assert data["schema"] == 1 and data["k"] == 3 and len(data["sample_ids"]) == 3
    assert list(data["experts"]) == ["math-lora", "medical-lora", "math-full"]
    lora, full = data["experts"]["math-lora"], data["experts"]["math-full"]
    assert lora["source"] == "adapter" and full["source"] == "output"
    assert len(lora["modules"]) == 14 and set(next(iter(lora["modules"].values()))) == MODULE_KEYS
    assert 0.0 <= lora["compatibility"] <= 1.0 and isinstance(lora["acceptable"], bool)
    assert [(p["a"], p["b"]) for p in data["pairs"]] == [("math-lora", "medical-lora")]
    for f in ("heatmap-math-lora.html", "diff-math-lora-vs-medical-lora.html", "compatibility.html", "pairs.html"):
        assert (out / f).is_file(), f
    printed = capsys.readouterr().out
    assert "math-lora" in printed and "pair math-lora + medical-lora" in printed


def test_analyze_union_target_and_jsonl(mini_manifest, tmp_path):
    out = tmp_path / "u"
    assert main(["analyze", "--manifest", str(mini_manifest), "--dataset", "math+medical", "-k", "12", "--out", str(out),
                 "--device", "cpu", "--no-png", "--experts", "math-full", "--layers", "1-1", "--modules", "q_proj,down_proj",
                 "--vision"]) == 0
    data = json.loads((out / "analysis.json").read_text())
    ids = data["sample_ids"]
    assert sum(i.startswith("math") for i in ids) == 6 and sum(i.startswith("medical") for i in ids) == 6
    mods = data["experts"]["math-full"]["modules"]
    assert set(mods) == {"model.language_model.layers.1.self_attn.q_proj", "model.language_model.layers.1.mlp.down_proj",
                         "model.visual.blocks.0.attn.qkv", "model.visual.blocks.0.mlp.fc2"}
    jsonl = mini_manifest.parent / "data" / "medical" / "eval.jsonl"
    assert main(["analyze", "--manifest", str(mini_manifest), "--dataset", str(jsonl), "-k", "2", "--out",
                 str(tmp_path / "j"), "--device", "cpu", "--no-png", "--experts", "medical-lora"]) == 0


def test_analyze_reports_bad_input(mini_manifest, tmp_path):
    assert main(["analyze", "--manifest", str(mini_manifest), "--dataset", "nope", "--out", str(tmp_path),
                 "--device", "cpu"]) == 1


def test_correlate_on_one_pair(mini_manifest, tmp_path, capsys):
    pytest.importorskip("graft_ui.models.merge")
    out = tmp_path / "c"
    rc = main(["correlate", "--manifest", str(mini_manifest), "--kind", "full", "-k", "2", "--eval-limit", "2",
               "--out", str(out), "--device", "cpu", "--no-png"])
    assert rc == 0
    data = json.loads((out / "correlation.json").read_text())
    (pair,) = data["pairs"]
    assert (pair["a"], pair["b"]) == ("math-full", "medical-full")
    assert pair["gain"] == pytest.approx(pair["fused"] - max(pair["single_a"], pair["single_b"]))
    assert set(data["spearman"]) == {"score", "score_mean", "score_fused"}
    assert data["spearman"]["score"]["rho"] is None and data["spearman"]["score"]["n"] == 1  # honest: undefined
    assert (out / "correlation.html").is_file()
    assert "Spearman(score, gain): undefined" in capsys.readouterr().out
