"""`zoo list`, `eval` and `eval --methods` end to end on the ci zoo."""

import json
import shutil
import types
from pathlib import Path

import pytest

from graft_ui.commands import main
from graft_ui.zoo.profiles import DOMAINS


def test_zoo_list_json(ci_zoo, capsys, monkeypatch):
    monkeypatch.setenv("GRAFT_ZOO_DIR", str(Path(ci_zoo).parent))
    assert main(["zoo", "list", "--profile", "ci", "--json"]) == 0
    listing = json.loads(capsys.readouterr().out)
    assert Path(listing["base"]["path"]) == Path(ci_zoo, "base")
    names = {e["name"] for e in listing["experts"]}
    assert names == {f"{d}-{k}" for d in DOMAINS for k in ("lora", "full")}
    for e in listing["experts"]:
        assert e["kind"] in ("lora", "full") and e["domain"] in DOMAINS
        assert Path(e["path"]).is_dir() and Path(e["eval"]).is_file()
    assert listing["build"]["profile"] == "ci"


def test_zoo_list_missing_is_a_clear_error(tmp_path, monkeypatch, caplog):
    monkeypatch.setenv("GRAFT_ZOO_DIR", str(tmp_path))
    assert main(["zoo", "list", "--profile", "ci"]) == 1
    assert "zoo build --profile ci" in caplog.text


def test_zoo_build_existing_is_quick(ci_zoo, capsys, monkeypatch):
    monkeypatch.setenv("GRAFT_ZOO_DIR", str(Path(ci_zoo).parent))
    assert main(["zoo", "build", "--profile", "ci", "--quiet"]) == 0
    assert str(ci_zoo) in capsys.readouterr().out


def test_eval_table(ci_zoo, ci_manifest, tmp_path, capsys):
    out = tmp_path / "eval"
    args = ["eval", "--zoo", str(ci_zoo), "--model", "base", "--model", "math-lora",
            "--model", ci_manifest.expert("code-full").path, "--limit", "2", "--out", str(out), "--quiet", "--outputs"]
    assert main(args) == 0
    printed = capsys.readouterr().out
    assert "| model | math | code | finance | medical | mean |" in printed
    results = json.loads((out / "results.json").read_text())
    assert list(results["models"]) == ["base", "math-lora", "code-full"]
    for row in results["models"].values():
        assert set(row["domains"]) == set(DOMAINS)
        for d in row["domains"].values():
            assert d["n"] == 2 and 0 <= d["accuracy"] <= 100 and len(d["outputs"]) == 2
        assert row["mean"] == pytest.approx(sum(d["accuracy"] for d in row["domains"].values()) / 4)
    md = (out / "results.md").read_text().splitlines()
    assert md[0] == "| model | math | code | finance | medical | mean |" and len(md) == 2 + 3


def test_eval_scores_reference_answers_perfectly(ci_manifest):
    """The scoring half of the benchmark: the reference answers get 100% on every domain."""
    from graft_ui.zoo.domains import read_jsonl
    from graft_ui.zoo.evaluate import score_domain

    for d in DOMAINS:
        samples = read_jsonl(ci_manifest.dataset(d).eval)
        assert all(score_domain(samples, [s["answer"] for s in samples]))
        assert not any(score_domain(samples, ["I see a picture." for _ in samples]))


def test_eval_unknown_model_is_named(ci_zoo, tmp_path, caplog):
    assert main(["eval", "--zoo", str(ci_zoo), "--model", "poetry-lora", "--out", str(tmp_path), "--quiet"]) == 1
    assert "poetry-lora" in caplog.text


def test_eval_methods_fuses_with_every_registered_method(ci_zoo, ci_manifest, tmp_path, monkeypatch, capsys):
    """The --methods path: one recipe per registered method -> run_recipe -> scored row.

    The merge engine is stubbed (it copies the first expert), so this checks the wiring
    only; the real engine is tested in its own package.
    """
    from graft_ui.merging import registry

    calls = []

    def run_recipe(recipe, out_dir):
        calls.append(recipe)
        shutil.copytree(recipe.experts[0].path, out_dir)
        return types.SimpleNamespace(out_dir=str(out_dir))

    monkeypatch.setattr("graft_ui.models.merge.run_recipe", run_recipe)
    monkeypatch.setattr(registry, "get_method", lambda name: registry.METHODS[name])
    for name in ("stub_a", "stub_b"):
        monkeypatch.setitem(registry.METHODS, name, registry.Method(
            name=name, merge=lambda *a, **k: None, params=(), paper="-", summary="stub"))
    monkeypatch.setattr("graft_ui.recipe.validate_params", lambda name, params: dict(params or {}))
    out = tmp_path / "methods"
    assert main(["eval", "--zoo", str(ci_zoo), "--methods", "--experts", "math-lora", "code-lora",
                 "--method", "stub_a", "--method", "stub_b", "--limit", "1", "--out", str(out), "--quiet"]) == 0
    assert [r.method for r in calls] == ["stub_a", "stub_b"]
    assert all(r.output.kind == "adapter" and [e.name for e in r.experts] == ["math-lora", "code-lora"] for r in calls)
    assert calls[0].base == ci_manifest.base.path
    results = json.loads((out / "results.json").read_text())
    assert list(results["models"]) == ["base", "math-lora", "code-lora", "stub_a", "stub_b"]
    assert results["fused_experts"] == ["math-lora", "code-lora"]


def test_eval_methods_needs_experts(ci_zoo, tmp_path):
    assert main(["eval", "--zoo", str(ci_zoo), "--methods", "--out", str(tmp_path), "--quiet"]) == 1
