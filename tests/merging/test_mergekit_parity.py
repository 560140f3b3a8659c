"""Our engine against mergekit 0.1.5 itself, on the same configs and checkpoints.

mergekit lives in its own virtual environment (scripts/mergekit-venv.sh creates it once, in
~/.cache/graft_ui/mergekit-venv; it pulls transformers 5.25, which must stay out of .venv).
If it cannot be installed the test FAILS with pip's error. mergekit 0.1.5 cannot read the
zoo's Qwen2-VL checkpoints (their layer count lives in text_config), so the test builds a
tiny text-only Qwen2ForCausalLM base and two experts (4 layers, hidden 64, every tensor
perturbed), runs `mergekit-yaml` on each config
(tests/merging/mergekit_many.py: mergekit-yaml's own command, all configs in one process so
mergekit is imported once) and our engine on the same config file, and compares every tensor:

- deterministic methods: equal within float32 rounding (rtol 1e-4, atol 1e-6: the two
  compute the same float32 formulas in other orders, e.g. SLERP's angle from a Gram matrix);
- random masks (DARE, DELLA): the same kept fraction of every merged task vector and the
  same L1 norm, within sampling noise (~100k entries: 0.01 absolute, 3 % relative).
"""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import pytest
import torch
import yaml

ROOT = Path(__file__).resolve().parents[2]

G_DENSITY = [{"filter": "mlp", "value": [0.3, 0.9]}, {"value": 0.6}]  # a gradient under a filter
# (name, mergekit method, base?, global parameters, per-model parameters, random)
CASES = [
    ("linear", "linear", False, {}, [{"weight": 0.3}, {"weight": 0.7}], False),
    ("linear_unnormalized", "linear", False, {"normalize": False}, [{"weight": 0.3}, {"weight": 0.5}], False),
    ("slerp", "slerp", True, {"t": 0.3}, None, False),
    ("slerp_gradient_filter", "slerp", True,
     {"t": [{"filter": "self_attn", "value": [0.0, 0.5, 0.3, 0.7, 1.0]}, {"filter": "mlp", "value": [1.0, 0.5, 0.0]},
            {"value": 0.5}]}, None, False),
    ("nuslerp", "nuslerp", False, {}, [{"weight": 0.4}, {"weight": 0.6}], False),
    ("nuslerp_rows_base", "nuslerp", True, {"nuslerp_flatten": False}, [{"weight": 1.0}, {"weight": 2.0}], False),
    ("multislerp", "multislerp", True, {}, [{"weight": 0.5}, {"weight": 0.5}], False),
    ("karcher", "karcher", False, {}, None, False),
    ("model_stock", "model_stock", True, {}, None, False),
    ("task_arithmetic", "task_arithmetic", True, {"lambda": 0.8}, [{"weight": 0.5}, {"weight": 0.7}], False),
    ("ties", "ties", True, {}, [{"weight": 0.6, "density": 0.4}, {"weight": 0.4, "density": 0.6}], False),
    ("ties_density_gradient", "ties", True, {"density": G_DENSITY, "weight": [0.2, 1.0]}, [{}, {}], False),
    ("breadcrumbs", "breadcrumbs", True, {"density": 0.7, "gamma": 0.05}, [{"weight": 0.5}, {"weight": 0.5}], False),
    ("breadcrumbs_ties", "breadcrumbs_ties", True, {"density": 0.7}, [{"weight": 1.0}, {"weight": 0.5}], False),
    ("sce", "sce", True, {"select_topk": 0.5}, None, False),
    ("nearswap", "nearswap", True, {"t": 0.01}, None, False),
    ("arcee_fusion", "arcee_fusion", True, {}, None, False),
    ("ram", "ram", True, {}, None, False),
    ("ramplus_tl", "ramplus_tl", True, {"r": 0.5}, None, False),
    ("dare_linear", "dare_linear", True, {"density": 0.5}, [{"weight": 0.5}, {"weight": 0.5}], True),
    ("dare_ties", "dare_ties", True, {"density": 0.4}, [{"weight": 1.0}, {"weight": 1.0}], True),
    ("della", "della", True, {"density": 0.5, "epsilon": 0.2}, [{"weight": 1.0}, {"weight": 1.0}], True),
    ("della_linear", "della_linear", True, {"density": 0.5}, [{"weight": 0.6}, {"weight": 0.4}], True),
]
ONE_EXPERT = {"slerp", "nearswap", "arcee_fusion"}


@pytest.fixture(scope="module")
def mergekit_venv() -> Path:
    """The mergekit venv's bin folder, installed by scripts/mergekit-venv.sh (fails, never skips)."""
    proc = subprocess.run([str(ROOT / "scripts" / "mergekit-venv.sh")], capture_output=True, text=True)
    if proc.returncode != 0:
        pytest.fail(f"could not install mergekit==0.1.5 into its venv:\n{proc.stderr[-4000:]}")
    return Path(proc.stdout.strip()).parent


@pytest.fixture(scope="module")
def tiny_models(tmp_path_factory) -> dict[str, Path]:
    """A text-only Qwen2ForCausalLM base and two experts with every tensor perturbed."""
    from transformers import Qwen2Config, Qwen2ForCausalLM

    root = tmp_path_factory.mktemp("mk-models")
    cfg = Qwen2Config(vocab_size=256, hidden_size=64, intermediate_size=128, num_hidden_layers=4,
                      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=128,
                      tie_word_embeddings=False)
    torch.manual_seed(0)
    base = Qwen2ForCausalLM(cfg).float()
    out = {"base": root / "base"}
    base.save_pretrained(str(out["base"]))
    state = {k: v.clone() for k, v in base.state_dict().items()}
    for i, seed in enumerate((1, 2)):
        g = torch.Generator().manual_seed(seed)
        with torch.no_grad():
            for name, p in base.named_parameters():
                p.copy_(state[name] + torch.randn(p.shape, generator=g) * 0.02)
        out[f"e{i}"] = root / f"e{i}"
        base.save_pretrained(str(out[f"e{i}"]))
    return out


def _config(case, models) -> dict:
    name, method, use_base, params, per_model, _ = case
    experts = [models["e0"]] if method in ONE_EXPERT else [models["e0"], models["e1"]]
    entries = [{"model": str(p), **({"parameters": per_model[i]} if per_model else {})} for i, p in enumerate(experts)]
    if use_base:
        entries.insert(0, {"model": str(models["base"])})
    cfg = {"merge_method": method, "models": entries, "dtype": "float32"}
    if use_base:
        cfg["base_model"] = str(models["base"])
    if params:
        cfg["parameters"] = params
    return cfg


def _load(folder: Path) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    out = {}
    for f in sorted(folder.glob("*.safetensors")):
        out.update(load_file(str(f)))
    return out


def test_every_shared_method_matches_mergekit(mergekit_venv, tiny_models, tmp_path):
    from graft_ui.mergekit_config import load_any
    from graft_ui.models.merge import run_recipe

    env = dict(os.environ, HF_HUB_OFFLINE="1", OMP_NUM_THREADS="1", TOKENIZERS_PARALLELISM="false")

    args = []
    for case in CASES:
        cfg_path = tmp_path / f"{case[0]}.yml"
        cfg_path.write_text(yaml.safe_dump(_config(case, tiny_models)))
        args += [str(cfg_path), str(tmp_path / f"mk-{case[0]}")]
    proc = subprocess.run([str(mergekit_venv / "python"), str(Path(__file__).with_name("mergekit_many.py")), *args,
                           "--", "--device", "cpu", "--no-copy-tokenizer", "--random-seed", "0"],
                          env=env, capture_output=True, text=True)
    status = {r["config"]: r for r in map(json.loads, filter(None, proc.stdout.splitlines()))}
    failures = []
    for case in CASES:
        name, method, _, _, _, random = case
        cfg_path, mk_out = tmp_path / f"{name}.yml", tmp_path / f"mk-{name}"
        run = status.get(str(cfg_path))
        if run is None or not run["ok"]:
            failures.append(f"{name}: mergekit-yaml failed: {run['error'] if run else proc.stderr[-1500:]}")
            continue
        ours = tmp_path / f"ours-{name}"
        run_recipe(load_any(cfg_path).replace(device="cpu"), ours)
        theirs_t, ours_t = _load(mk_out), _load(ours)
        base_t = _load(tiny_models["base"])
        if set(theirs_t) != set(ours_t):
            failures.append(f"{name}: tensor names differ: {sorted(set(theirs_t) ^ set(ours_t))[:5]}")
            continue
        if random:
            kept_mk = sum(int((theirs_t[n] != base_t[n]).sum()) for n in theirs_t)
            kept_us = sum(int((ours_t[n] != base_t[n]).sum()) for n in ours_t)
            total = sum(t.numel() for t in theirs_t.values())
            l1_mk = sum(float((theirs_t[n] - base_t[n]).abs().sum()) for n in theirs_t)
            l1_us = sum(float((ours_t[n] - base_t[n]).abs().sum()) for n in ours_t)
            if abs(kept_mk - kept_us) / total > 0.01 or abs(l1_mk - l1_us) / l1_mk > 0.03:
                failures.append(f"{name}: statistics differ: kept {kept_us / total:.4f} vs mergekit "
                                f"{kept_mk / total:.4f}, L1 {l1_us:.4f} vs {l1_mk:.4f}")
            continue
        for n, want in theirs_t.items():
            got = ours_t[n]
            if not torch.allclose(got.float(), want.float(), rtol=1e-4, atol=1e-6):
                err = float((got.float() - want.float()).abs().max())
                failures.append(f"{name}: tensor {n} differs by up to {err:.3g}")
                break
    assert not failures, "\n".join(failures)
