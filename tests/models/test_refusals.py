"""Every refusal names the problem and leaves no output (and no temporary) folder."""

import json
import shutil

import pytest
import torch
from safetensors.torch import load_file, save_file

from graft_ui.models.merge import run_recipe


def _copy(src, dst):
    shutil.copytree(src, dst)
    return dst


def _edit_weights(folder, fn, file="model.safetensors"):
    path = folder / file
    tensors = load_file(str(path))
    fn(tensors)
    save_file(tensors, str(path), metadata={"format": "pt"})


def _refuse(recipe, out, exc, match):
    with pytest.raises(exc, match=match):
        run_recipe(recipe, out)
    assert not out.exists()
    assert not list(out.parent.glob(f"{out.name}.tmp-*"))


def test_adapter_trained_on_another_base(zoo, make_recipe, tmp_path):
    _refuse(make_recipe("graft", [zoo["lora_a"], zoo["lora_other"]]), tmp_path / "o", ValueError, "another base")
    _refuse(make_recipe("graft", [zoo["lora_a"], zoo["lora_b"]], base=zoo["other_base"]), tmp_path / "o", ValueError,
            "trained on base")


def test_dora_and_unknown_adapter_types(zoo, make_recipe, tmp_path):
    _refuse(make_recipe("graft", [zoo["lora_a"], zoo["dora"]]), tmp_path / "o", ValueError, "DoRA")
    ia3 = _copy(zoo["lora_a"], tmp_path / "ia3")
    cfg = json.loads((ia3 / "adapter_config.json").read_text())
    cfg["peft_type"] = "IA3"
    (ia3 / "adapter_config.json").write_text(json.dumps(cfg))
    _refuse(make_recipe("graft", [zoo["lora_a"], ia3]), tmp_path / "o", ValueError, "peft_type='IA3'")
    dora_keys = _copy(zoo["lora_a"], tmp_path / "dora-keys")  # config says LoRA, weights say DoRA
    _edit_weights(dora_keys, lambda t: t.update({"base_model.model.model.language_model.layers.0.self_attn.q_proj"
                                                  ".lora_magnitude_vector": torch.ones(64)}), "adapter_model.safetensors")
    _refuse(make_recipe("graft", [zoo["lora_a"], dora_keys]), tmp_path / "o", ValueError, "DoRA")


def test_shape_mismatch(zoo, make_recipe, tmp_path):
    bad = _copy(zoo["full_a"], tmp_path / "bad")
    _edit_weights(bad, lambda t: t.update({"model.layers.1.mlp.up_proj.weight": torch.zeros(90, 64)}))
    _refuse(make_recipe("graft", [zoo["full_a"], bad]), tmp_path / "o", ValueError, "shape mismatch.*up_proj")
    bad_lora = _copy(zoo["lora_c"], tmp_path / "bad-lora")
    key = "base_model.model.model.language_model.layers.0.self_attn.q_proj.lora_B.weight"
    _edit_weights(bad_lora, lambda t: t.update({key: torch.zeros(60, 2)}), "adapter_model.safetensors")
    _refuse(make_recipe("graft", [zoo["lora_a"], bad_lora]), tmp_path / "o", ValueError, "shape mismatch")


def test_missing_tensors(zoo, make_recipe, tmp_path):
    bad = _copy(zoo["full_a"], tmp_path / "bad")
    _edit_weights(bad, lambda t: t.pop("model.layers.2.self_attn.k_proj.bias"))
    _refuse(make_recipe("graft", [zoo["full_a"], bad]), tmp_path / "o", ValueError, "missing.*k_proj.bias")
    _refuse(make_recipe("graft", [bad, zoo["full_a"]]), tmp_path / "o", ValueError, "missing.*k_proj.bias")
    # a shard listed in the index but absent
    sharded = _copy(zoo["full_b"], tmp_path / "sharded")
    next(sharded.glob("model-0000*.safetensors")).unlink()
    _refuse(make_recipe("graft", [zoo["full_a"], sharded]), tmp_path / "o", FileNotFoundError, "does not exist")
    half = _copy(zoo["lora_a"], tmp_path / "half")
    _edit_weights(half, lambda t: t.pop("base_model.model.model.language_model.layers.1.mlp.up_proj.lora_B.weight"),
                  "adapter_model.safetensors")
    _refuse(make_recipe("graft", [zoo["lora_b"], half]), tmp_path / "o", ValueError, "lora_B tensor is missing")


@pytest.mark.parametrize("tensor", ["model.layers.2.mlp.down_proj.weight", "model.norm.weight"])
def test_nan_or_inf_weights_fused_or_copied(zoo, make_recipe, tmp_path, tensor):
    bad = _copy(zoo["full_a"], tmp_path / "bad")

    def poison(t):
        t[tensor].view(-1)[3] = float("nan") if "down" in tensor else float("inf")

    _edit_weights(bad, poison)
    # the poisoned tensor comes late in the file: the run is interrupted mid-way and must clean up
    _refuse(make_recipe("graft", [bad, zoo["full_b"]]), tmp_path / "o", ValueError, f"{tensor}.*NaN or inf")


@pytest.mark.parametrize("method", ["graft", "ties"])  # ties: read inside a module job on a worker thread
def test_nan_in_adapter(zoo, make_recipe, tmp_path, method):
    bad = _copy(zoo["lora_c"], tmp_path / "bad")
    key = "base_model.model.model.language_model.layers.2.mlp.up_proj.lora_A.weight"
    _edit_weights(bad, lambda t: t[key].view(-1).__setitem__(0, float("nan")), "adapter_model.safetensors")
    extra = {"base": zoo["base"]} if method != "graft" else {}
    _refuse(make_recipe(method, [zoo["lora_a"], bad], **extra), tmp_path / "o", ValueError, "NaN or inf")


def test_existing_output_folder_and_overwrite(zoo, make_recipe, tmp_path):
    out = tmp_path / "exists"
    out.mkdir()
    (out / "keep.txt").write_text("x")
    recipe = make_recipe("graft", [zoo["lora_a"], zoo["lora_c"]])
    with pytest.raises(FileExistsError, match="already exists"):
        run_recipe(recipe, out)
    assert (out / "keep.txt").is_file()
    run_recipe(recipe, out, overwrite=True)
    assert not (out / "keep.txt").exists() and (out / "adapter_model.safetensors").is_file()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["exists"]
    with pytest.raises(ValueError, match="would overwrite the input"):
        run_recipe(recipe, zoo["lora_a"], overwrite=True)


def test_other_refusals(zoo, make_recipe, tmp_path):
    _refuse(make_recipe("ties", [zoo["full_a"], zoo["full_b"]]), tmp_path / "o", ValueError, "needs recipe.base")
    _refuse(make_recipe("graft", [zoo["full_a"], zoo["lora_a"]]), tmp_path / "o", ValueError, "mix LoRA adapters and full")
    _refuse(make_recipe("graft", [zoo["full_a"], tmp_path / "nope"]), tmp_path / "o", FileNotFoundError, "nope")
    _refuse(make_recipe("graft", [zoo["full_a"], zoo["full_b"]], output={"rank": 4}), tmp_path / "o", ValueError,
            "output.rank")
