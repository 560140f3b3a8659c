"""The ci zoo looks and loads like a real Qwen2-VL checkpoint with peft experts."""

import json
import warnings
from pathlib import Path

import pytest
import torch

from graft_ui.zoo.profiles import DOMAINS
from tiny_profile import tiny_profile as _tiny

EXPECTED = {f"{d}-{k}" for d in DOMAINS for k in ("lora", "full")}


def test_manifest_lists_base_experts_and_datasets(ci_zoo, ci_manifest):
    m = ci_manifest
    assert Path(ci_zoo, "manifest.yaml").is_file()
    assert m.base.name == "base" and Path(m.base.path) == Path(ci_zoo, "base")
    assert {e.name for e in m.experts} == EXPECTED
    for e in m.experts:
        assert e.kind == e.name.split("-")[1] and e.domain == e.name.split("-")[0]
        assert Path(e.path).is_dir()
    assert set(m.datasets) == set(DOMAINS)
    for d in DOMAINS:
        assert Path(m.dataset(d).eval).is_file() and Path(m.dataset(d).train).is_file()
        assert Path(m.dataset(d).eval) == Path(ci_zoo, "data", d, "eval.jsonl")


def test_build_info(ci_zoo):
    info = json.loads(Path(ci_zoo, "build_info.json").read_text())
    assert info["profile"] == "ci" and isinstance(info["seed"], int)
    assert {"torch", "transformers", "peft", "tokenizers"} <= set(info["versions"])
    assert info["seconds"] > 0 and {"data", "tokenizer", "base", "experts"} <= set(info["stages_seconds"])
    assert set(info["cpu_seconds"]) == set(info["stages_seconds"])
    assert 5e5 < info["parameters"]["total"] < 2e7


def test_base_files_and_config_look_like_qwen2_vl(ci_zoo):
    base = Path(ci_zoo, "base")
    for name in ("config.json", "generation_config.json", "model.safetensors", "tokenizer.json",
                 "tokenizer_config.json", "chat_template.jinja", "processor_config.json"):
        assert (base / name).is_file(), name
    cfg = json.loads((base / "config.json").read_text())
    assert cfg["model_type"] == "qwen2_vl"
    assert cfg["architectures"] == ["Qwen2VLForConditionalGeneration"]
    text, vision = cfg["text_config"], cfg["vision_config"]
    head_dim = text["hidden_size"] // text["num_attention_heads"]
    assert sum(text["rope_parameters"]["mrope_section"]) == head_dim // 2
    assert vision["hidden_size"] == text["hidden_size"]  # merger output feeds the language model
    tok = json.loads((base / "tokenizer_config.json").read_text())
    assert tok["tokenizer_class"] == "Qwen2Tokenizer" and tok["eos_token"] == "<|im_end|>"


def test_special_token_ids_come_from_the_tokenizer(ci_zoo):
    from transformers import AutoConfig, AutoProcessor

    base = Path(ci_zoo, "base")
    proc = AutoProcessor.from_pretrained(base)
    cfg = AutoConfig.from_pretrained(base)
    ids = proc.tokenizer.convert_tokens_to_ids
    assert cfg.image_token_id == ids("<|image_pad|>") == proc.image_token_id
    assert cfg.video_token_id == ids("<|video_pad|>")
    assert cfg.vision_start_token_id == ids("<|vision_start|>")
    assert cfg.vision_end_token_id == ids("<|vision_end|>")
    assert cfg.text_config.eos_token_id == ids("<|im_end|>")
    unk = proc.tokenizer.unk_token_id
    for t in ("<|im_start|>", "<|im_end|>", "<|endoftext|>"):
        assert ids(t) not in (None, unk)
        assert proc.tokenizer.convert_ids_to_tokens(proc.tokenizer(t)["input_ids"]) == [t]
    assert max(ids(t) for t in ("<|video_pad|>", "<|im_end|>")) < cfg.text_config.vocab_size


def test_processor_round_trip_chat_template_and_image_tokens(ci_zoo, ci_manifest):
    from qwen_vl_utils import process_vision_info
    from transformers import AutoProcessor, Qwen2VLForConditionalGeneration, Qwen2VLProcessor

    from graft_ui.models.inputs import resolve_messages
    from graft_ui.zoo.domains import read_jsonl
    from graft_ui.zoo.tokenizer import CHAT_TEMPLATE

    base = Path(ci_zoo, "base")
    proc = AutoProcessor.from_pretrained(base)
    assert isinstance(proc, Qwen2VLProcessor)
    assert proc.chat_template == CHAT_TEMPLATE
    eval_path = Path(ci_manifest.dataset("math").eval)
    sample = read_jsonl(eval_path)[0]
    messages = resolve_messages(sample["messages"], eval_path.parent)
    text = proc.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    assert text.startswith("<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n<|im_start|>user\n")
    assert "<|vision_start|><|image_pad|><|vision_end|>" in text and text.endswith("<|im_start|>assistant\n")
    images, videos = process_vision_info(messages)
    inputs = proc(text=[text], images=images, videos=videos, return_tensors="pt")
    n_pad = int((inputs["input_ids"] == proc.image_token_id).sum())
    assert n_pad == int(inputs["image_grid_thw"].prod()) // 4 and 4 <= n_pad <= 16
    # decode(encode(text)) is the text again
    assert proc.tokenizer.decode(proc.tokenizer(text)["input_ids"]) == text
    model = Qwen2VLForConditionalGeneration.from_pretrained(base).eval()
    with torch.no_grad():
        out = model.generate(**inputs, max_new_tokens=4, do_sample=False)
    assert out.shape[1] > inputs["input_ids"].shape[1]


def test_training_batches_carry_the_models_own_mrope_positions(ci_zoo):
    """collate's position_ids (computed once per sample at encode time) are the integers the
    model's get_rope_index gives the padded batch, and the loss is the same bit for bit."""
    from transformers import AutoProcessor, Qwen2VLForConditionalGeneration

    from graft_ui.zoo.domains import read_jsonl
    from graft_ui.zoo.train import collate, encode_samples

    base = Path(ci_zoo, "base")
    proc = AutoProcessor.from_pretrained(base)
    items = []
    for d in ("general", "math", "code"):  # text-only code samples share batches with image ones
        items += encode_samples(proc, read_jsonl(Path(ci_zoo, "data", d, "train.jsonl"))[:6], Path(ci_zoo, "data", d))
    assert any("rope_positions" in it for it in items) and any("pixel_values" not in it for it in items)
    model = Qwen2VLForConditionalGeneration.from_pretrained(base).eval()
    batch = collate(items[::2][:4] + items[-4:], proc.tokenizer.pad_token_id)
    ref, _ = model.model.get_rope_index(batch["input_ids"], batch["mm_token_type_ids"],
                                        image_grid_thw=batch["image_grid_thw"], attention_mask=batch["attention_mask"])
    assert torch.equal(batch["position_ids"], ref)
    with torch.no_grad():
        ours = model(**batch).loss
        stock = model(**{k: v for k, v in batch.items() if k != "position_ids"}).loss
    assert torch.equal(ours, stock)
    text_only = collate([it for it in items if "pixel_values" not in it][:3], proc.tokenizer.pad_token_id)
    assert "position_ids" not in text_only  # the model counts the columns itself
    assert "position_ids" not in collate(items[:4], proc.tokenizer.pad_token_id, left=True)  # generation


def test_expert_loss_runs_the_head_on_answers_and_reuses_encoded_images(ci_zoo):
    """The experts' loss (head on the answer positions only, images encoded once) gives the stock
    loss and the stock gradients of what an expert trains; encoded images need a frozen tower."""
    from transformers import AutoProcessor, Qwen2VLForConditionalGeneration

    from graft_ui.zoo.domains import read_jsonl
    from graft_ui.zoo.train import answer_loss, collate, encode_samples, train_loop, train_projections_only, with_image_embeds

    base = Path(ci_zoo, "base")
    proc = AutoProcessor.from_pretrained(base)
    items = []
    for d in ("math", "code"):
        items += encode_samples(proc, read_jsonl(Path(ci_zoo, "data", d, "train.jsonl"))[:4], Path(ci_zoo, "data", d))
    model = Qwen2VLForConditionalGeneration.from_pretrained(base)
    params = train_projections_only(model)
    encoded = with_image_embeds(model, items)
    assert not any("pixel_values" in it for it in encoded)
    with_img = [it for it in encoded if "image_embeds" in it]
    assert with_img and all(it["image_embeds"].shape[-1] == model.config.text_config.hidden_size for it in with_img)
    pad = proc.tokenizer.pad_token_id

    def grads(loss_of):
        model.zero_grad(set_to_none=True)
        loss = loss_of()
        loss.backward()
        return loss.detach(), [p.grad.clone() for p in params]

    stock_loss, stock = grads(lambda: model(**collate(items, pad), use_cache=False).loss)
    ours_loss, ours = grads(lambda: answer_loss(model, collate(encoded, pad)))
    # a tolerance, not bit equality: an image encoded alone may round differently (one ulp) than in a batch
    assert torch.allclose(ours_loss, stock_loss, rtol=1e-6, atol=0)
    assert all((a - b).norm() <= 1e-5 * b.norm() for a, b in zip(ours, stock))
    assert sum(g.abs().sum() for g in ours) > 0
    _, pixels = grads(lambda: answer_loss(model, collate(items, pad)))  # the head on the answers only, stock images
    assert all((a - b).norm() <= 1e-6 * b.norm() for a, b in zip(pixels, stock))
    with pytest.raises(ValueError, match="image_embeds"):
        train_loop(model, encoded, params=params, steps=1, lr=1e-3, batch_size=2, seed=0, pad_id=pad)


def test_full_expert_trains_the_projections_only(ci_manifest):
    from safetensors.torch import load_file

    base = load_file(str(Path(ci_manifest.base.path, "model.safetensors")))
    full = load_file(str(Path(ci_manifest.expert("math-full").path, "model.safetensors")))
    assert base.keys() == full.keys()
    # saved in the Hub layout of Qwen2-VL checkpoints: visual.* and model.layers.*
    vision = [k for k in base if k.startswith("visual.")]
    lm = [k for k in base if k.startswith("model.layers.")]
    assert vision and lm
    assert all(torch.equal(base[k], full[k]) for k in vision)
    proj = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")
    changed = {k for k in base if not torch.equal(base[k], full[k])}
    assert changed and all(k.startswith("model.layers.") and k.split(".")[-2] in proj for k in changed)
    assert any(k.endswith("q_proj.weight") for k in changed) and any(k.endswith("down_proj.weight") for k in changed)
    assert Path(ci_manifest.expert("math-full").path, "tokenizer.json").is_file()


def test_lora_experts_load_without_missing_keys(ci_manifest):
    from peft import PeftModel
    from transformers import Qwen2VLForConditionalGeneration

    for name in ("math-lora", "code-lora", "finance-lora", "medical-lora"):
        entry = ci_manifest.expert(name)
        cfg = json.loads(Path(entry.path, "adapter_config.json").read_text())
        assert cfg["peft_type"] == "LORA"
        assert set(cfg["target_modules"]) == {"q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"}
        base = Qwen2VLForConditionalGeneration.from_pretrained(ci_manifest.base.path)
        with warnings.catch_warnings():
            warnings.filterwarnings("error", message=".*[Mm]issing adapter keys.*")
            model = PeftModel.from_pretrained(base, entry.path)
        lora = {n: p for n, p in model.named_parameters() if "lora_B" in n}
        assert lora and all("language_model.layers" in n for n in lora)
        assert any(p.abs().sum() > 0 for p in lora.values())  # trained, not the zero init


def test_loader_raises_on_missing_adapter_keys(ci_manifest, tmp_path):
    """An adapter whose keys do not match the model (e.g. saved by old transformers) must not load silently."""
    import shutil

    from safetensors.torch import load_file, save_file

    from graft_ui.models.loading import load_model

    src = Path(ci_manifest.expert("math-lora").path)
    bad = tmp_path / "old-style-adapter"
    shutil.copytree(src, bad)
    weights = load_file(str(bad / "adapter_model.safetensors"))
    # transformers 4.x named the text layers model.layers.*, not model.language_model.layers.*
    save_file({k.replace("language_model.", ""): v for k, v in weights.items()}, str(bad / "adapter_model.safetensors"))
    with pytest.raises(ValueError, match="missing adapter keys"):
        load_model(bad, base=ci_manifest.base.path)
    model = load_model(src, base=ci_manifest.base.path)  # the real one loads
    assert model is not None


def test_interrupted_build_leaves_nothing(tmp_path, monkeypatch):
    import graft_ui.zoo.train as train_mod
    from graft_ui.zoo.build import build_zoo
    from graft_ui.zoo.profiles import get_profile

    def boom(*a, **k):
        raise KeyboardInterrupt

    monkeypatch.setattr(train_mod, "train_loop", boom)
    tiny = get_profile("ci").with_overrides(general_train=8, domain_train=4, domain_eval=2)
    with pytest.raises(KeyboardInterrupt):
        build_zoo(tmp_path / "zoo", tiny, progress=False)
    assert list(tmp_path.iterdir()) == []


def test_zoo_location(monkeypatch, tmp_path):
    from graft_ui.zoo import ensure_zoo, zoo_dir

    monkeypatch.setenv("GRAFT_ZOO_DIR", str(tmp_path))
    assert zoo_dir("ci") == tmp_path / "ci"
    assert zoo_dir("full") == tmp_path / "full"
    monkeypatch.delenv("GRAFT_ZOO_DIR")
    assert zoo_dir("full") == Path.home() / ".cache" / "graft_ui" / "zoo" / "full"
    with pytest.raises(ValueError, match="'huge'"):
        ensure_zoo("huge")


def test_ensure_zoo_returns_cached(ci_zoo):
    import time

    from graft_ui.zoo import ensure_zoo

    t = time.monotonic()
    assert ensure_zoo("ci") == ci_zoo
    assert time.monotonic() - t < 2


def test_build_is_deterministic(tmp_path):
    """Same profile and seed -> byte-identical data, tokenizer and weights."""
    import hashlib

    from graft_ui.zoo.build import build_zoo

    tiny = _tiny(base_steps=3)

    def digest(root: Path) -> dict:
        out = {}
        for p in sorted(root.rglob("*")):
            if p.is_file() and p.name != "build_info.json":
                data = p.read_bytes()
                if p.name == "adapter_config.json":  # names its own zoo's base folder
                    data = data.replace(str(root).encode(), b"ZOO")
                out[str(p.relative_to(root))] = hashlib.sha256(data).hexdigest()
        return out

    a = digest(build_zoo(tmp_path / "a", tiny, progress=False))
    b = digest(build_zoo(tmp_path / "b", tiny, progress=False))
    assert any(k.endswith("model.safetensors") for k in a)
    assert a == b


def test_parallel_build_uses_worker_processes(tmp_path):
    """The full profile's layout: a data-parallel base (2 processes) and experts in 2 workers."""
    from graft_ui.models.manifest import load_manifest
    from graft_ui.zoo.build import build_zoo

    tiny = _tiny(base_steps=4, base_procs=2, workers=2)
    zoo = build_zoo(tmp_path / "zoo", tiny, progress=False)
    info = json.loads((zoo / "build_info.json").read_text())
    assert info["settings"]["base_procs"] == 2 and info["settings"]["workers"] == 2
    m = load_manifest(zoo)
    assert all(Path(e.path).is_dir() for e in m.experts) and len(m.experts) == 8
    assert not list(zoo.glob(".rendezvous*")) and not list(tmp_path.glob(".zoo.building-*"))
    lora = json.loads(Path(m.expert("code-lora").path, "adapter_config.json").read_text())
    assert lora["base_model_name_or_path"] == str(zoo / "base")  # the final place, not the temp folder


def test_a_profile_reuses_another_zoos_base_and_identical_designs_and_resumes(tmp_path, monkeypatch):
    """The study profile's mechanism: the base_from zoo's base (byte-equal) and its identically
    trained designs are copied, new designs are trained, and an interrupted build goes on from
    its finished designs; a zoo with other base settings is refused by name."""
    import graft_ui.zoo.stages as stages
    from graft_ui.models.manifest import load_manifest
    from graft_ui.zoo.build import build_zoo
    from graft_ui.zoo.profiles import ExpertSpec

    full = _tiny(base_steps=3)
    src = build_zoo(tmp_path / "full", full, progress=False)
    new = (ExpertSpec("code", 2, variant="s2", lora_rank=4, replay_general=4, replay_domains=1, seed_offset=9),
           ExpertSpec("math", 2, variant="s2", replay_general=2, replay_domains=1, seed_offset=8))
    study = full.with_overrides(name="study", domain_eval=3, base_from="ci", resumable=True,
                                experts=full.experts[:2] + new)
    trained = []
    real = stages.train_expert_pair

    def fail_on_math(task, report=None):  # the build trains the longest first; ties in order: code-s2, math-s2
        if study.experts[task["spec"]].domain == "math":
            raise KeyboardInterrupt
        trained.append(task["label"])
        return real(task, report)

    monkeypatch.setattr(stages, "train_expert_pair", fail_on_math)
    with pytest.raises(KeyboardInterrupt):
        build_zoo(tmp_path / "study", study, progress=False, base_from=src)
    assert (tmp_path / ".study.partial").is_dir() and not (tmp_path / "study").exists()  # kept to resume
    monkeypatch.setattr(stages, "train_expert_pair", lambda task, report=None: (trained.append(task["label"]),
                                                                                 real(task, report))[1])
    zoo = build_zoo(tmp_path / "study", study, progress=False, base_from=src)
    assert trained == ["code-*-s2", "math-*-s2"]  # the two copied designs were never trained, code-s2 once
    assert (zoo / "base" / "model.safetensors").read_bytes() == (src / "base" / "model.safetensors").read_bytes()
    for name in ("math-lora", "math-full", "code-lora", "code-full"):
        for f in (src / "experts" / name).glob("*.safetensors"):
            assert f.read_bytes() == (zoo / "experts" / name / f.name).read_bytes()
    m = load_manifest(zoo)
    assert len(m.experts) == 8 and m.expert("code-lora-s2").kind == "lora"
    lora = json.loads(Path(m.expert("math-lora").path, "adapter_config.json").read_text())
    assert lora["base_model_name_or_path"] == str(zoo / "base")  # re-pointed from the source zoo's base
    info = json.loads((zoo / "build_info.json").read_text())
    assert info["base_from"]["path"] == str(src) and info["experts"]["math-lora"]["reused_from"] == str(src)
    assert len(info["weights_hash"]) == 16 and info["weights_hash"] != json.loads(
        (src / "build_info.json").read_text())["weights_hash"]
    assert not (tmp_path / ".study.partial").exists() and not list(zoo.rglob(".design-*"))
    assert len((zoo / "data" / "math" / "eval.jsonl").read_text().splitlines()) == 3
    with pytest.raises(ValueError, match=r"other base settings \['base_steps'\]"):
        build_zoo(tmp_path / "other", study.with_overrides(base_steps=4), progress=False, base_from=src)


def test_zoo_is_published_before_its_self_check_unless_strict(tmp_path, monkeypatch):
    """The app can take the zoo while its self-check runs (the check's results join build_info.json
    after); a strict profile is checked before it is published, and a miss keeps it out."""
    import graft_ui.zoo.build as build_mod
    from graft_ui.zoo import is_built

    seen = []

    def fake_check(zoo, **kw):  # where the check runs, and whether a loader could take that zoo then
        seen.append((Path(zoo), is_built(zoo)))
        return {"missed_targets": ["base scores 0.0% on code, outside [10, 65]"], "models": {}}

    monkeypatch.setattr(build_mod, "self_check", fake_check)
    monkeypatch.setattr(build_mod, "self_check_markdown", lambda check: "\n".join(check["missed_targets"]))
    out = build_mod.build_zoo(tmp_path / "zoo", _tiny(base_steps=2, self_check=True), progress=False)
    assert seen == [(out, True)]
    info = json.loads((out / "build_info.json").read_text())
    assert info["self_check"]["missed_targets"] and "self_check" in info["stages_seconds"]
    assert 0 < info["ready_seconds"] <= info["seconds"]

    seen.clear()
    with pytest.raises(RuntimeError, match="missed its regime targets"):
        build_mod.build_zoo(tmp_path / "strict", _tiny(base_steps=2, self_check=True, strict=True), progress=False)
    assert len(seen) == 1 and seen[0][0] != tmp_path / "strict" and not seen[0][1]
    assert not (tmp_path / "strict").exists() and (tmp_path / ".strict.rejected" / "manifest.yaml").is_file()
