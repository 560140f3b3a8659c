"""Tensor-name parsing, scope, and the streaming safetensors reader/writer."""

import json

import pytest
import torch
from safetensors.torch import load_file, save_file

from graft_ui.models.checkpoint import BufferPool, Checkpoint, ShardedWriter, copy_tensor
from graft_ui.models.keys import LANGUAGE, VISION, canonical_name, parse_adapter_key, parse_module, parse_param
from graft_ui.models.lora_io import pattern_value, same_base
from graft_ui.models.scope import in_scope
from graft_ui.recipe import Scope


@pytest.mark.parametrize(
    "path",
    [
        "model.layers.3.self_attn.q_proj",
        "model.language_model.layers.3.self_attn.q_proj",
        "base_model.model.model.language_model.layers.3.self_attn.q_proj",
        "base_model.model.model.layers.3.self_attn.q_proj",
    ],
)
def test_language_spellings_meet(path):
    key = parse_module(path)
    assert (key.tower, key.layer, key.module, key.types) == (LANGUAGE, 3, "q_proj", ("q_proj",))
    assert key.name == "model.language_model.layers.3.self_attn.q_proj"
    assert key.tail == "layers.3.self_attn.q_proj"


@pytest.mark.parametrize("path", ["visual.blocks.7.attn.qkv", "model.visual.blocks.7.attn.qkv",
                                  "base_model.model.model.visual.blocks.7.attn.qkv"])
def test_vision_spellings_and_type_mapping(path):
    key = parse_module(path)
    assert (key.tower, key.layer, key.module) == (VISION, 7, "qkv")
    assert key.types == ("q_proj", "k_proj", "v_proj")
    assert canonical_name(path) == "model.visual.blocks.7.attn.qkv"
    assert parse_module("visual.blocks.0.mlp.fc1").types == ("gate_proj", "up_proj")
    assert parse_module("visual.blocks.0.attn.proj").types == ("o_proj",)


def test_non_fusable_names():
    for name in ["model.embed_tokens.weight", "lm_head.weight", "visual.merger.mlp.0.weight",
                 "model.layers.0.input_layernorm.weight", "visual.blocks.0.norm1.weight", "visual.patch_embed.proj.weight"]:
        assert parse_param(name)[0] is None, name
    assert parse_param("model.layers.2.self_attn.k_proj.bias")[1] == "bias"
    assert parse_adapter_key("base_model.model.model.layers.0.mlp.up_proj.lora_B.weight") == ("model.layers.0.mlp.up_proj", "lora_B")
    assert parse_adapter_key("base_model.model.x.lora_magnitude_vector")[1] == "lora_magnitude_vector"
    assert parse_adapter_key("base_model.model.lm_head.weight") is None


def test_scope_rules():
    lang = parse_module("model.layers.4.mlp.up_proj")
    vis = parse_module("visual.blocks.30.attn.qkv")
    assert in_scope(lang, Scope()) and not in_scope(vis, Scope())
    assert not in_scope(lang, Scope(layers=(0, 3))) and in_scope(lang, Scope(layers=(4, 4)))
    assert not in_scope(lang, Scope(modules=("q_proj",)))
    # the layer range counts language layers; vision blocks follow scope.vision
    assert in_scope(vis, Scope(modules=("k_proj",), layers=(0, 1), vision=True))
    assert not in_scope(vis, Scope(modules=("gate_proj", "up_proj", "down_proj"), vision=True))
    assert not in_scope(None, Scope())


def test_peft_pattern_rule_and_tails_do_not_collide():
    pats = {"layers.1.self_attn.q_proj": 3}
    assert pattern_value(pats, "model.language_model.layers.1.self_attn.q_proj", 8) == 3
    assert pattern_value(pats, "model.layers.1.self_attn.q_proj", 8) == 3
    assert pattern_value(pats, "model.language_model.layers.11.self_attn.q_proj", 8) == 8
    assert pattern_value({"v_proj": 2}, "model.layers.0.self_attn.v_proj", 8) == 2


def test_same_base(tmp_path):
    a, b = tmp_path / "Qwen2-VL-2B-Instruct", tmp_path / "other"
    a.mkdir(), b.mkdir()
    assert same_base(str(a), str(a) + "/")
    assert not same_base(str(a), str(b))
    assert same_base("Qwen/Qwen2-VL-2B-Instruct", str(a))  # hub id vs a local download
    assert not same_base("Qwen/Qwen2-VL-7B-Instruct", str(a))


def test_sharded_writer_round_trip_any_order(tmp_path):
    g = torch.Generator().manual_seed(0)
    tensors = {
        "a.weight": torch.randn(40, 30, generator=g),
        "b.bias": torch.randn(7, generator=g).to(torch.bfloat16),
        "c.scalar": torch.tensor(2.5),
        "d.idx": torch.arange(5, dtype=torch.int64),
        "e.half": torch.randn(3, 3, generator=g).half(),
        "f.empty": torch.empty(0, 4),
    }
    src = tmp_path / "src"
    src.mkdir()
    save_file(tensors, str(src / "model.safetensors"))
    ck = Checkpoint(src)
    assert set(ck.names) == set(tensors)
    out = tmp_path / "out"
    out.mkdir()
    w = ShardedWriter(out, [(n, ck.info(n).dtype, ck.info(n).shape) for n in ck.names], shard_bytes=2000)
    pool = BufferPool()
    for n in reversed(ck.names):  # out of layout order on purpose
        if n == "a.weight":
            w.write(n, ck.read(n, pool.bytes("x", ck.info(n).nbytes)).clone())
        else:
            copy_tensor(ck, n, w, pool, chunk_bytes=8)
    files = w.close()
    assert "model.safetensors.index.json" in files and len(files) > 2
    index = json.loads((out / "model.safetensors.index.json").read_text())
    got = {}
    for f in set(index["weight_map"].values()):
        got.update(load_file(str(out / f)))
    assert set(got) == set(tensors)
    for n, t in tensors.items():
        assert got[n].dtype == t.dtype and torch.equal(got[n], t), n
    again = Checkpoint(out)
    assert torch.equal(again.read("a.weight"), tensors["a.weight"])


def test_writer_refuses_wrong_shape_and_unwritten(tmp_path):
    w = ShardedWriter(tmp_path, [("x", torch.float32, (2, 2)), ("y", torch.float32, (3,))])
    with pytest.raises(ValueError, match="planned"):
        w.write("x", torch.zeros(3, 3))
    w.write("x", torch.zeros(2, 2))
    with pytest.raises(RuntimeError, match="never written"):
        w.close()
