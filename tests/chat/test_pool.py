"""ModelPool: one shared base, LoRA variants as peft adapters, streaming, Stop, errors, memory."""

from __future__ import annotations

import json
import threading

import pytest

from graft_ui.chat import GenerationSettings, ModelPool

GREEDY = GenerationSettings(max_new_tokens=10, greedy=True)


def final(updates):
    last = None
    for last in updates:
        pass
    return last


def test_nothing_loads_until_asked(zoo_manifest):
    p = ModelPool(zoo_manifest.base.path, device="cpu")
    p.register("math-lora", zoo_manifest.expert("math-lora").path, "lora")
    assert not p.is_loaded("base") and not p.is_loaded("math-lora")
    assert p.memory()["total_bytes"] == 0


def test_mixed_batch_streams_all_columns_and_matches_single_runs(pool, image_prompt):
    names = ["base", "math-lora", "code-lora"]
    assert pool.plan(names) == [[0, 1, 2]]  # one batch over the shared base
    updates = []
    for u in pool.stream(names, [image_prompt] * 3, GREEDY):
        updates.append((list(u.texts), list(u.status)))
    texts, status = updates[-1]
    assert status == ["done"] * 3
    assert all(texts), texts
    # text arrives in several updates, columns growing side by side (a column may answer in one token)
    growing = [i for i in range(3) if len({u[0][i] for u in updates}) > 2]
    assert len(updates) > 3 and len(growing) >= 2
    for name, text in zip(names, texts):
        assert pool.generate(name, image_prompt, GREEDY) == text, name


def test_full_models_run_after_the_shared_base(pool, image_prompt):
    names = ["math-full", "base", "math-lora"]
    assert pool.plan(names) == [[1, 2], [0]]
    u = final(pool.stream(names, [image_prompt] * 3, GREEDY))
    assert u.status == ["done"] * 3 and all(u.texts)
    assert pool.is_loaded("math-full")


def test_full_models_are_an_lru(pool, image_prompt):
    # max_full=1 in the fixture: a second full model replaces the first
    pool.generate("math-full", image_prompt, GREEDY)
    pool.generate("code-full", image_prompt, GREEDY)
    assert pool.is_loaded("code-full") and not pool.is_loaded("math-full")


def test_vision_adapters_rule_out_the_mixed_batch(pool):
    pool._vision_adapters.add("code-lora")
    try:
        assert pool.plan(["base", "math-lora", "code-lora"]) == [[0], [1], [2]]
    finally:
        pool._vision_adapters.discard("code-lora")


def test_stop_ends_every_column(pool, image_prompt):
    stop = threading.Event()
    settings = GenerationSettings(max_new_tokens=300, greedy=True, ignore_eos=True)
    seen = None
    for u in pool.stream(["base", "math-lora", "math-full"], [image_prompt] * 3, settings, stop):
        if any(u.texts) and not stop.is_set():
            stop.set()
        seen = u
    assert seen.finished
    assert seen.status == ["stopped"] * 3  # the full model never started
    assert seen.texts[2] == ""
    tok = pool.processor.tokenizer
    assert all(len(tok(t)["input_ids"]) < 100 for t in seen.texts[:2])


def test_a_broken_adapter_fails_alone(pool, image_prompt, tmp_path):
    bad = tmp_path / "broken-lora"
    bad.mkdir()
    (bad / "adapter_config.json").write_text("{not json")
    pool.register("broken", str(bad), "lora")
    try:
        u = final(pool.stream(["base", "broken", "math-lora"], [image_prompt] * 3, GREEDY))
    finally:
        pool.unregister("broken")
    assert u.status == ["done", "error", "done"]
    assert "adapter_config.json" in u.errors[1] and "unreadable" in u.errors[1]
    assert u.texts[0] and u.texts[2]


def test_an_adapter_with_missing_keys_is_refused(pool, image_prompt, tmp_path, zoo_manifest):
    import shutil

    from safetensors.torch import load_file, save_file

    src = zoo_manifest.expert("math-lora").path
    dst = tmp_path / "partial-lora"
    shutil.copytree(src, dst)
    weights = load_file(str(dst / "adapter_model.safetensors"))
    keep = dict(list(weights.items())[: len(weights) // 2])
    save_file(keep, str(dst / "adapter_model.safetensors"))
    pool.register("partial", str(dst), "lora")
    try:
        u = final(pool.stream(["partial", "base"], [image_prompt] * 2, GREEDY))
    finally:
        pool.unregister("partial")
    assert u.status[0] == "error" and "missing adapter keys" in u.errors[0]
    assert u.status[1] == "done"
    assert "partial" not in json.dumps(pool.memory()["adapters"])


def test_lora_variants_share_one_base(pool, image_prompt):
    for n in ("math-lora", "code-lora", "finance-lora"):
        pool.load(n)
    mem = pool.memory()
    base = mem["base_bytes"]
    assert set(mem["adapters"]) >= {"math-lora", "code-lora", "finance-lora"}
    # three LoRA variants on one base cost far less than three more bases
    assert sum(mem["adapters"].values()) < 0.5 * base


def test_unknown_names_and_mismatched_lengths(pool, image_prompt):
    with pytest.raises(KeyError, match="no model named 'nope'"):
        list(pool.stream(["nope"], [image_prompt]))
    with pytest.raises(ValueError, match="2 model names but 1"):
        list(pool.stream(["base", "math-lora"], [image_prompt]))


def test_settings_are_validated():
    with pytest.raises(ValueError, match="max_new_tokens"):
        GenerationSettings(max_new_tokens=0)
    with pytest.raises(ValueError, match="max_new_tokens"):
        GenerationSettings(max_new_tokens=100000)
    with pytest.raises(ValueError, match="temperature"):
        GenerationSettings(temperature=0)
    kw = GenerationSettings(greedy=False, temperature=0.5).generate_kwargs(0)
    assert kw["do_sample"] is True and kw["temperature"] == 0.5
