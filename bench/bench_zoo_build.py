"""What the zoo build's speedups buy, measured in one run (ratios, not absolute times).

    .venv/bin/python bench/bench_zoo_build.py                      # the full zoo's base and data
    .venv/bin/python bench/bench_zoo_build.py --zoo /path/to/zoo --design 2 --steps 20 --rounds 3

1. Training step with M-RoPE positions precomputed at encode time (graft_ui/zoo/train.py) against
   the stock forward recomputing them every step: one model and one data set, blocks of `--steps`
   steps alternating between the two, single thread (as the build's workers run). The weights are
   the same either way (tests/zoo/test_zoo_build.py checks the positions and the loss).
   A third variant is the experts' step as the build runs it now: the frozen head on the answer
   positions only and each image encoded once (`train.answer_loss`, `train.with_image_embeds`; the
   one-off encoding is timed apart). The head's numbers are the stock ones; an image encoded alone
   may round an ulp differently from a batch (tests/zoo/test_zoo_build.py bounds the gradients).
2. What a fresh worker process pays before its first task (the imports of `worker._warm_imports`),
   which the persistent worker pool (graft_ui/zoo/pool.py) pays once per worker instead of once per
   base rank, expert design and evaluation share (9 processes for the full profile; 2 now).

Run under the same load for both halves of each comparison; on a busy machine compare the ratios.
"""

from __future__ import annotations

import argparse
import os
import resource
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def step_times(zoo: Path, design: int, kind: str, steps: int, rounds: int) -> dict[str, list[float]]:
    import torch

    from graft_ui.models.loading import load_model, load_processor
    from graft_ui.zoo.profiles import get_profile
    from graft_ui.zoo.stages import encode_parts, expert_training_set
    from graft_ui.zoo.train import add_lora, train_loop, train_projections_only, with_image_embeds

    torch.set_num_threads(1)
    prof = get_profile("full")
    spec = prof.experts[design]
    processor = load_processor(zoo / "base")
    data = encode_parts(processor, expert_training_set(zoo, prof, spec), zoo / "data")
    stock = [{k: v for k, v in it.items() if k != "rope_positions"} for it in data]
    model = load_model(zoo / "base")
    if kind == "lora":
        model = add_lora(model, spec.lora_rank, prof.lora_alpha_per_rank * spec.lora_rank, 1)
        params = [p for p in model.parameters() if p.requires_grad]
    else:
        params = train_projections_only(model)
    kw = dict(params=params, steps=steps, lr=1e-4, batch_size=prof.expert_batch_size, seed=1,
              pad_id=processor.tokenizer.pad_token_id, warmup=1)
    train_loop(model, data, **{**kw, "steps": 2})  # first-call costs out of the way
    t = time.process_time()
    encoded = with_image_embeds(model, data)
    once = time.process_time() - t
    out: dict[str, list[float]] = {"stock": [], "precomputed": [], "head+images": [], "encode images once": [once]}
    for _ in range(rounds):
        for name, items, frozen in (("stock", stock, False), ("precomputed", data, False), ("head+images", encoded, True)):
            t = time.process_time()  # CPU time: one thread, so a busy machine's waits do not count
            train_loop(model, items, **kw, frozen_head=frozen)
            out[name].append((time.process_time() - t) / steps)
    return out


def worker_start_cost() -> tuple[float, float]:
    """(wall, CPU) seconds of a fresh interpreter doing a worker's imports."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    t = time.perf_counter()
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=str(ROOT))
    subprocess.run([sys.executable, "-c", "from graft_ui.zoo.worker import _warm_imports; _warm_imports()"],
                   check=True, env=env, cwd=ROOT)
    wall = time.perf_counter() - t
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    return wall, (after.ru_utime + after.ru_stime) - (before.ru_utime + before.ru_stime)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--zoo", default=str(Path.home() / ".cache" / "graft_ui" / "zoo" / "full"),
                    help="a built zoo (its base and data are read, nothing is written)")
    ap.add_argument("--design", type=int, default=0, help="index of the full profile's expert design")
    ap.add_argument("--kind", choices=("lora", "full"), default="lora")
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--starts", type=int, default=2, help="fresh worker imports to time")
    args = ap.parse_args()

    times = step_times(Path(args.zoo), args.design, args.kind, args.steps, args.rounds)
    once = times.pop("encode images once")[0]
    for name, ts in times.items():
        print(f"{name:12s} CPU ms/step: " + " ".join(f"{1000 * t:.1f}" for t in ts))
    for name in ("precomputed", "head+images"):
        ratio = [p / s for s, p in zip(times["stock"], times[name])]
        print(f"{name} / stock per round: {' '.join(f'{r:.3f}' for r in ratio)} "
              f"(median {sorted(ratio)[len(ratio) // 2]:.3f})")
    print(f"encoding the design's images once: {once:.1f} CPU s "
          f"(= {once / max(1e-9, sorted(times['stock'])[len(times['stock']) // 2]):.0f} stock steps)")
    for _ in range(args.starts):
        wall, cpu = worker_start_cost()
        print(f"fresh worker imports: {wall:.1f} s wall, {cpu:.1f} s CPU "
              f"(bytecode cache writes {'off' if os.environ.get('PYTHONDONTWRITEBYTECODE') else 'on'})")


if __name__ == "__main__":
    main()
