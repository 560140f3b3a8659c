"""`python -m graft_ui merge RECIPE.yaml --out DIR` end to end (in process)."""

import json

import yaml

from graft_ui.commands import main
from graft_ui.recipe import Recipe


def _write(tmp_path, data):
    path = tmp_path / "recipe.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


def test_merge_writes_model_recipe_and_gates(zoo, tmp_path, capsys):
    recipe = _write(tmp_path, {"method": "graft", "experts": [str(zoo["lora_a"]), str(zoo["lora_b"])],
                               "output": {"rank": 5}, "params": {"bins": 16}})
    out = tmp_path / "out"
    assert main(["merge", str(recipe), "--out", str(out), "--device", "cpu"]) == 0
    assert "wrote" in capsys.readouterr().out
    resolved = Recipe.load(out / "recipe.yaml")
    assert resolved.device == "cpu" and resolved.params["bins"] == 16 and resolved.output.rank == 5
    assert resolved.base == str(zoo["base"])  # taken from the adapters
    gates = json.loads((out / "gates.json").read_text())
    assert {"method", "device", "seconds", "modules"} <= set(gates)
    assert all(st["rank"] == min(5, sum(st["ranks"])) and st["bins"] == 16 for st in gates["modules"].values())
    # the written recipe reproduces the run
    again = tmp_path / "again"
    assert main(["merge", str(out / "recipe.yaml"), "--out", str(again)]) == 0
    assert (again / "adapter_model.safetensors").read_bytes() == (out / "adapter_model.safetensors").read_bytes()
    assert main(["merge", str(recipe), "--out", str(out)]) == 1  # exists, no --overwrite
    assert main(["merge", str(recipe), "--out", str(out), "--overwrite"]) == 0


def test_dry_run_prints_the_modules(zoo, tmp_path, capsys):
    recipe = _write(tmp_path, {"method": "ties", "base": str(zoo["base"]),
                               "experts": [str(zoo["full_a"]), str(zoo["full_b"])],
                               "scope": {"modules": ["gate_proj"], "layers": [0, 1]}})
    out = tmp_path / "out"
    assert main(["merge", str(recipe), "--out", str(out), "--dry-run"]) == 0
    text = capsys.readouterr().out
    assert "2 module(s) would be fused" in text and "layers.1.mlp.gate_proj" in text
    assert not out.exists()
    assert main(["merge", str(recipe), "--dry-run", "--json"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert data["modules_fused"] == 2 and len(data["plan"]) == 2


def test_bad_recipes_are_named(zoo, tmp_path, caplog):
    for data, needle in [
        ({"method": "graft", "experts": [str(zoo["lora_a"]), str(zoo["lora_b"])], "colour": 1}, "colour"),
        ({"method": "graft", "experts": [str(zoo["lora_a"]), str(zoo["lora_b"])], "params": {"bins": 0}}, "bins"),
        ({"method": "graft", "experts": [str(zoo["lora_a"]), str(zoo["lora_b"])], "scope": {"vison": True}}, "vison"),
    ]:
        caplog.clear()
        assert main(["merge", str(_write(tmp_path, data)), "--out", str(tmp_path / "o")]) == 1
        assert needle in caplog.text
        assert not (tmp_path / "o").exists()


def test_permission_error_is_one_line_exit_2_no_traceback(zoo, tmp_path, capsys, caplog, monkeypatch):
    import graft_ui.models.merge as engine

    def read_only(out, *a, **kw):  # what a read-only output parent does (tests run as root: chmod is no test)
        raise PermissionError(13, "Permission denied", f"{out}.tmp-1")

    monkeypatch.setattr(engine, "temp_folder", read_only)
    recipe = _write(tmp_path, {"method": "graft", "experts": [str(zoo["lora_a"]), str(zoo["lora_b"])]})
    assert main(["merge", str(recipe), "--out", str(tmp_path / "ro" / "out")]) == 2
    captured = capsys.readouterr()
    assert "Traceback" not in captured.out + captured.err + caplog.text
    errors = [r.getMessage() for r in caplog.records if r.levelname == "ERROR"]
    assert len(errors) == 1 and "Permission denied" in errors[0] and "choose another location" in errors[0]
