"""Hook overhead of the activation analysis: K forward passes with vs without the statistics hooks.

    python bench/bench_hooks.py --shape 2b --device cuda --dtype bfloat16 -k 32 --seq 512
    python bench/bench_hooks.py --shape zoo --device cpu -k 32 --seq 128

One process, one model, the same K inputs; the two variants alternate for --repeats rounds
(target: analysis <= 1.15 x baseline). On a shared VM a round's speed varies by up to 2x
(runs fall into a fast and a slow mode), so the overhead is reported two ways:
`overhead_pct`, the median over rounds of each round's analysis / baseline ratio (with
its interquartile range), and `overhead_of_minima_pct`, fastest analysis over fastest
baseline, the usual estimate of the cost without interference. The fallback path of the
device (numpy on CPU, torch ops on CUDA) is timed the same way for comparison. The baseline
synchronises once at the end; the analysis brings each sample's scalars to the host
once per sample, which is part of what is measured. `--lora R` wraps the language
model's projections in LoRA adapters of rank R (random B) and hooks the adapter branch,
as the analysis of a LoRA expert does. Prints one JSON line.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from graft_ui.analysis import _native_stats as N  # noqa: E402
from graft_ui.analysis import stats as S  # noqa: E402
from graft_ui.analysis.modules import scope_modules  # noqa: E402
from graft_ui.analysis.collect import collect_stats  # noqa: E402

SHAPES = {
    # Qwen2-VL-2B-Instruct's language model (the vision tower does not run on text inputs)
    "2b": dict(vocab_size=151936, hidden_size=1536, intermediate_size=8960, num_hidden_layers=28,
               num_attention_heads=12, num_key_value_heads=2, mrope=[16, 24, 24]),
    # the demo zoo's model (graft_ui/zoo/profiles.py ModelSize defaults)
    "zoo": dict(vocab_size=2112, hidden_size=128, intermediate_size=512, num_hidden_layers=4,
                num_attention_heads=4, num_key_value_heads=2, mrope=[4, 6, 6]),
}


def build(shape: str, device: str, dtype: torch.dtype, lora: int):
    from transformers import Qwen2VLConfig, Qwen2VLForConditionalGeneration

    s = dict(SHAPES[shape])
    mrope = s.pop("mrope")
    cfg = Qwen2VLConfig(
        text_config=dict(**s, max_position_embeddings=32768,
                         rope_parameters={"rope_type": "default", "rope_theta": 1e6, "mrope_section": mrope},
                         bos_token_id=0, eos_token_id=1, pad_token_id=0),
        vision_config=dict(depth=2, embed_dim=64, hidden_size=s["hidden_size"], num_heads=4, mlp_ratio=4,
                           patch_size=14, spatial_merge_size=2, temporal_patch_size=2, in_channels=3),
        image_token_id=s["vocab_size"] - 4, video_token_id=s["vocab_size"] - 3,
        vision_start_token_id=s["vocab_size"] - 2, vision_end_token_id=s["vocab_size"] - 1,
    )
    torch.manual_seed(0)
    with torch.device(device):
        model = Qwen2VLForConditionalGeneration(cfg).to(dtype)
    if lora:
        from peft import LoraConfig, get_peft_model

        model = get_peft_model(model, LoraConfig(
            r=lora, lora_alpha=2 * lora, init_lora_weights=False, lora_dropout=0.0,
            target_modules=r".*language_model\.layers\.\d+\.(self_attn\.(q|k|v|o)_proj|mlp\.(gate|up|down)_proj)"))
        model = model.to(device=device, dtype=dtype)
    return model.eval()


def sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def baseline(model, batches, device: str) -> float:
    t = time.perf_counter()
    with torch.inference_mode():
        for b in batches:
            model(**b, use_cache=False, logits_to_keep=1)
    sync(device)
    return time.perf_counter() - t


def analysis(model, batches, device: str, modules) -> float:
    sync(device)
    t = time.perf_counter()
    collect_stats(model, batches, modules=modules)
    sync(device)
    return time.perf_counter() - t


def rounds(model, batches, device: str, modules, repeats: int) -> dict:
    """Alternate baseline and analysis `repeats` times; the overhead both ways (see the module docstring)."""
    base_t, hook_t = [], []
    for _ in range(repeats):
        base_t.append(baseline(model, batches, device))
        hook_t.append(analysis(model, batches, device, modules))
    ratios = sorted(h / b for b, h in zip(base_t, hook_t))
    q = lambda f: ratios[min(len(ratios) - 1, int(f * len(ratios)))]  # noqa: E731
    return {
        "baseline_s": round(statistics.median(base_t), 4), "analysis_s": round(statistics.median(hook_t), 4),
        "overhead_pct": round(100 * (statistics.median(ratios) - 1), 2),
        "overhead_iqr_pct": [round(100 * (q(0.25) - 1), 2), round(100 * (q(0.75) - 1), 2)],
        "overhead_of_minima_pct": round(100 * (min(hook_t) / min(base_t) - 1), 2),
        "baseline_runs": [round(x, 4) for x in base_t], "analysis_runs": [round(x, 4) for x in hook_t],
    }


def fallback(model, batches, device: str, modules, repeats: int, cuda: bool) -> dict:
    """The path this device falls back to without its fast kernel: its overhead, and how far its statistics are
    from the fast path's."""
    ref = collect_stats(model, batches, modules=modules)
    if cuda:
        saved, S._FUSED = S._FUSED, False
    else:
        saved, N._LOADED = N._LOADED, None
    try:
        res = rounds(model, batches, device, modules, repeats)
        other = collect_stats(model, batches, modules=modules)
    finally:
        if cuda:
            S._FUSED = saved
        else:
            N._LOADED = saved
    rel = max(abs(getattr(ref.modules[m], f) - getattr(other.modules[m], f)) / max(abs(getattr(other.modules[m], f)), 1e-30)
              for m in other.modules for f in ("mu", "s", "v"))
    return {**{k: res[k] for k in ("analysis_s", "overhead_pct", "overhead_of_minima_pct")}, "max_rel_diff": rel}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--shape", choices=sorted(SHAPES), default="zoo")
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--dtype", choices=("float32", "bfloat16"), default=None)
    ap.add_argument("-k", type=int, default=32)
    ap.add_argument("--seq", type=int, default=256, help="tokens per sample")
    ap.add_argument("--repeats", type=int, default=15)
    ap.add_argument("--lora", type=int, default=0, help="LoRA rank (0 = plain model, full outputs hooked)")
    ap.add_argument("--threads", type=int, default=None, help="torch intra-op threads (default: torch's)")
    args = ap.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    dtype = getattr(torch, args.dtype or ("bfloat16" if args.device.startswith("cuda") else "float32"))
    model = build(args.shape, args.device, dtype, args.lora)
    modules = scope_modules(model)
    g = torch.Generator().manual_seed(0)
    vocab = SHAPES[args.shape]["vocab_size"] - 8
    # lengths vary a little, as real samples do
    batches = [{"input_ids": torch.randint(10, vocab, (1, args.seq - (i % 8)), generator=g).to(args.device)}
               for i in range(args.k)]
    baseline(model, batches[:2], args.device)  # warm-up (kernels, allocator)
    analysis(model, batches[:2], args.device, modules)
    res = rounds(model, batches, args.device, modules, args.repeats)
    cuda = args.device.startswith("cuda")
    fast, slow = ("triton", "torch") if cuda else ("native", "numpy")
    device_name = torch.cuda.get_device_name() if cuda else f"CPU ({torch.get_num_threads()} threads)"
    print(json.dumps({
        "shape": args.shape, "device": device_name, "dtype": str(dtype).replace("torch.", ""), "lora": args.lora,
        "modules_hooked": len(modules), "k": args.k, "seq": args.seq, "repeats": args.repeats,
        "path": fast if (S._fused() if cuda else N.load()) is not None else slow, **res,
        f"{slow}_path": fallback(model, batches, args.device, modules, args.repeats, cuda),
    }))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
