"""Memory of the chat pool: base + 2 LoRA experts + 1 fused LoRA on one shared base, vs one model.

    .venv/bin/python bench/bench_chat_memory.py                         # the ci demo zoo
    .venv/bin/python bench/bench_chat_memory.py --model zoo --zoo-profile full
    .venv/bin/python bench/bench_chat_memory.py --model qwen2vl-2b --workdir /tmp/bench2b [--device cuda]

`qwen2vl-2b` builds a Qwen2-VL-2B-Instruct-shaped model (2.2 B parameters, bf16, zero
weights: memory does not depend on values; nothing is downloaded) and two rank-16 LoRA
experts on its language-model projections, then fuses them with Graft (exact rank-32
adapter) through the real merge engine. Each measurement runs in a fresh subprocess:

- one:  the pool with only the base loaded (what a single model costs);
- pool: the same pool after attaching expert 1, expert 2 and the fused adapter.

Reported: parameter bytes (base, each adapter), process RSS growth over the imports, and
on CUDA `torch.cuda.memory_allocated`. The target is pool <= 1.3 x one.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

# Qwen2-VL-2B-Instruct's shapes (config.json of the hub model)
QWEN2VL_2B_TEXT = dict(vocab_size=151936, hidden_size=1536, intermediate_size=8960, num_hidden_layers=28,
                       num_attention_heads=12, num_key_value_heads=2, max_position_embeddings=32768,
                       max_window_layers=28, rms_norm_eps=1e-6, bos_token_id=151643, eos_token_id=151645,
                       rope_parameters={"rope_type": "default", "rope_theta": 1000000.0, "mrope_section": [16, 24, 24]})
QWEN2VL_2B_VISION = dict(depth=32, embed_dim=1280, hidden_size=1536, num_heads=16, mlp_ratio=4, patch_size=14,
                         spatial_merge_size=2, temporal_patch_size=2, in_channels=3)
LORA_TARGETS = r".*language_model\.layers\.\d+\.(self_attn\.(q|k|v|o)_proj|mlp\.(gate|up|down)_proj)"


def log(msg: str) -> None:
    print(f"[bench {time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


# ------------------------------------------------------------------------------------ setup

def prepare_zoo(profile: str) -> dict:
    from graft_ui.models.manifest import load_manifest
    from graft_ui.zoo import ensure_zoo

    m = load_manifest(ensure_zoo(profile) / "manifest.yaml")
    return {"base": m.base.path, "experts": [m.expert("math-lora").path, m.expert("code-lora").path]}


def prepare_2b(workdir: Path, rank: int) -> dict:
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import Qwen2VLConfig, Qwen2VLForConditionalGeneration

    base_dir = workdir / "base"
    experts = [workdir / f"expert-{i}" for i in (1, 2)]
    if (base_dir / "config.json").is_file() and all((e / "adapter_config.json").is_file() for e in experts):
        return {"base": str(base_dir), "experts": [str(e) for e in experts]}
    log("building a Qwen2-VL-2B-shaped model (zero weights, bf16)")
    config = Qwen2VLConfig(text_config=dict(QWEN2VL_2B_TEXT), vision_config=dict(QWEN2VL_2B_VISION),
                           image_token_id=151655, video_token_id=151656, vision_start_token_id=151652,
                           vision_end_token_id=151653, tie_word_embeddings=True)
    config.architectures = ["Qwen2VLForConditionalGeneration"]
    with torch.device("meta"):
        model = Qwen2VLForConditionalGeneration(config)
    model = model.to_empty(device="cpu").to(torch.bfloat16)
    with torch.no_grad():
        for p in model.parameters():
            p.zero_()
    n = sum(p.numel() for p in model.parameters())
    log(f"{n / 1e9:.2f} B parameters; saving")
    model.save_pretrained(base_dir, max_shard_size="2GB")
    for i, out in enumerate(experts, 1):
        cfg = LoraConfig(r=rank, lora_alpha=2 * rank, lora_dropout=0.0, target_modules=LORA_TARGETS, bias="none")
        torch.manual_seed(i)
        pm = get_peft_model(model, cfg)
        with torch.no_grad():
            for name, p in pm.named_parameters():
                if "lora_B" in name:
                    p.normal_(0.0, 0.01)
        pm.save_pretrained(out)
        model = pm.unload()
        log(f"expert {i}: rank {rank} adapter written")
    return {"base": str(base_dir), "experts": [str(e) for e in experts]}


def fuse(setup: dict, out: Path, device: str) -> str:
    from graft_ui.models.merge import run_recipe
    from graft_ui.recipe import Recipe

    if (out / "adapter_config.json").is_file():
        return str(out)
    recipe = Recipe.from_dict({"method": "graft", "base": setup["base"], "experts": [{"path": p} for p in setup["experts"]],
                               "device": "cuda" if device.startswith("cuda") else "cpu"})
    t = time.perf_counter()
    run_recipe(recipe, out, overwrite=True)
    log(f"fused with Graft in {time.perf_counter() - t:.1f} s -> {out}")
    return str(out)


# ------------------------------------------------------------------------------ measuring

def measure(args) -> dict:
    """In a fresh process: load base (and adapters for 'pool'); report bytes."""
    import gc

    import torch

    from graft_ui.chat.pool import ModelPool, rss_bytes

    dtype = {"bfloat16": torch.bfloat16, "float32": torch.float32, "float16": torch.float16}[args.dtype]
    pool = ModelPool(args.base, device=args.device, dtype=dtype)
    names = []
    for i, path in enumerate(args.adapters):
        name = ["expert-1", "expert-2", "fused"][i] if i < 3 else f"adapter-{i}"
        pool.register(name, path, "lora")
        names.append(name)
    gc.collect()
    cuda = pool.device.type == "cuda"
    rss0 = rss_bytes()
    cuda0 = torch.cuda.memory_allocated() if cuda else 0
    t = time.perf_counter()
    pool.load("base")
    for n in names:
        pool.load(n)
    seconds = time.perf_counter() - t
    gc.collect()
    mem = pool.memory()
    out = {
        "device": str(pool.device), "dtype": args.dtype, "loaded": ["base"] + names, "load_seconds": round(seconds, 2),
        "param_bytes": mem["total_bytes"], "base_bytes": mem["base_bytes"], "adapter_bytes": mem["adapters"],
        "rss_growth_bytes": rss_bytes() - rss0,
    }
    if cuda:
        out["cuda_allocated_bytes"] = torch.cuda.memory_allocated() - cuda0
    if args.generate:
        conv = [{"role": "user", "content": [{"type": "text", "text": "Complete: def add(a, b):"}]}]
        from graft_ui.chat import GenerationSettings

        last = None
        for last in pool.stream(["base"] + names, [conv] * (1 + len(names)), GenerationSettings(max_new_tokens=8)):
            pass
        out["generated"] = last.status
    return out


def run_measure(base: str, adapters: list[str], device: str, dtype: str, generate: bool) -> dict:
    cmd = [sys.executable, __file__, "--measure", "--base", base, "--device", device, "--dtype", dtype]
    if adapters:
        cmd += ["--adapters", *adapters]
    if generate:
        cmd.append("--generate")
    res = subprocess.run(cmd, capture_output=True, text=True, env={**os.environ, "OMP_NUM_THREADS": "2"})
    if res.returncode != 0:
        raise SystemExit(f"measurement failed:\n{res.stderr[-3000:]}")
    return json.loads(res.stdout.strip().splitlines()[-1])


def mb(n: int) -> str:
    return f"{n / 2**20:,.1f} MB"


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", choices=["zoo", "qwen2vl-2b"], default="zoo")
    p.add_argument("--zoo-profile", default="ci")
    p.add_argument("--workdir", default="/tmp/graft-bench-chat-memory")
    p.add_argument("--device", default="cpu")
    p.add_argument("--dtype", default=None, help="default: bfloat16 for qwen2vl-2b, float32 for the zoo")
    p.add_argument("--rank", type=int, default=16)
    p.add_argument("--json", help="write the results here")
    p.add_argument("--dry-run", action="store_true", help="check the arguments and imports (no gradio), then stop")
    # internal: one measurement in this process
    p.add_argument("--measure", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--base", help=argparse.SUPPRESS)
    p.add_argument("--adapters", nargs="*", default=[], help=argparse.SUPPRESS)
    p.add_argument("--generate", action="store_true", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.measure:
        print(json.dumps(measure(args)))
        return 0
    if args.dry_run:
        import graft_ui.chat.pool  # noqa: F401  what the measurements import
        import graft_ui.models.merge  # noqa: F401

        assert "gradio" not in sys.modules, "the chat pool imports gradio (not on the GPU machine)"
        log(f"dry run: arguments and imports fine (model {args.model}, device {args.device})")
        return 0
    dtype = args.dtype or ("bfloat16" if args.model == "qwen2vl-2b" else "float32")
    work = Path(args.workdir)
    work.mkdir(parents=True, exist_ok=True)
    setup = prepare_zoo(args.zoo_profile) if args.model == "zoo" else prepare_2b(work / "qwen2vl-2b", args.rank)
    fused = fuse(setup, work / f"fused-{args.model}", args.device)
    adapters = setup["experts"] + [fused]
    generate = args.model == "zoo"
    one = run_measure(setup["base"], [], args.device, dtype, generate)
    pool = run_measure(setup["base"], adapters, args.device, dtype, generate)
    result = {"model": args.model if args.model != "zoo" else f"zoo-{args.zoo_profile}", "one": one, "pool": pool,
              "ratio_params": pool["param_bytes"] / one["param_bytes"],
              "ratio_rss": pool["rss_growth_bytes"] / max(1, one["rss_growth_bytes"])}
    if "cuda_allocated_bytes" in one:
        result["ratio_cuda"] = pool["cuda_allocated_bytes"] / max(1, one["cuda_allocated_bytes"])
    print(f"\n{result['model']} on {one['device']} ({dtype}): base + 2 LoRA experts + 1 fused LoRA vs one model")
    print(f"  parameters : one {mb(one['param_bytes'])}  pool {mb(pool['param_bytes'])}  "
          f"ratio {result['ratio_params']:.3f}")
    print("  adapters   : " + ", ".join(f"{k} {mb(v)}" for k, v in pool["adapter_bytes"].items()))
    print(f"  RSS growth : one {mb(one['rss_growth_bytes'])}  pool {mb(pool['rss_growth_bytes'])}  "
          f"ratio {result['ratio_rss']:.3f}")
    if "ratio_cuda" in result:
        print(f"  CUDA alloc : one {mb(one['cuda_allocated_bytes'])}  pool {mb(pool['cuda_allocated_bytes'])}  "
              f"ratio {result['ratio_cuda']:.3f}")
    naive = 4 * one["param_bytes"]
    print(f"  (four separate models would hold {mb(naive)} of parameters: {naive / one['param_bytes']:.0f}x)")
    print(f"  target <= 1.3x: {'met' if result['ratio_params'] <= 1.3 else 'NOT met'} (parameters)")
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
