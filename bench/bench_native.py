"""Time the two C kernels (graft_ui/native.py) against the code they replace, per build target.

    .venv/bin/python bench/bench_native.py                        # this CPU's build
    .venv/bin/python bench/bench_native.py --targets native,x86-64-v3 --repeat 5

For each build target (`GRAFT_NATIVE_MARCH`) a child process times, on one thread:
- the LoRA gate statistics of rank-16 random factors per --shapes module: `lora_gates.native`
  (the kernel Graft uses), `lora_gates.reference` (the torch code it replaced) and the floor
  `s * B @ A` of both deltas;
- the activation hooks' reduction (`StatsAccumulator.observe`) of --activations float32 and
  bfloat16 activations: path "native" (the C kernel) against "numpy" (its fallback);
each alternated --repeat times; it prints the medians and the kernel / fallback ratios. The target
x86-64-v3 also runs torch as an AVX2 CPU would (ATEN_CPU_CAPABILITY=avx2, MKL_ENABLE_INSTRUCTIONS=AVX2,
ONEDNN_MAX_CPU_ISA=AVX2: `EMULATION`), so an AVX-512 machine measures the AVX2 pair. On a shared
machine the medians still move with its load: compare the ratios, measured in the same child.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

# the environment under which torch's own kernels, MKL and oneDNN use AVX2 code only
EMULATION = {"x86-64-v3": {"ATEN_CPU_CAPABILITY": "avx2", "MKL_ENABLE_INSTRUCTIONS": "AVX2",
                           "ONEDNN_MAX_CPU_ISA": "AVX2"}}


def target_env(target: str) -> dict:
    """os.environ for children that build the kernels for `target` (and emulate its CPU where listed)."""
    env = dict(os.environ, GRAFT_NATIVE_MARCH=target, HF_HUB_OFFLINE="1")
    env.update(EMULATION.get(target, {}))
    return env


def _medians(fns: dict, repeat: int) -> tuple[dict, dict]:
    """{name: median seconds}, {name: every time}: each of `fns` once to warm, then alternated `repeat` times."""
    times = {k: [] for k in fns}
    for f in fns.values():  # warm: first calls build and fault pages
        f()
    for _ in range(repeat):
        for k, f in fns.items():
            t0 = time.perf_counter()
            f()
            times[k].append(time.perf_counter() - t0)
    return {k: statistics.median(v) for k, v in times.items()}, times


def child_stats(sizes: list[int], repeat: int, calls: int = 200) -> list[dict]:
    """Seconds per `calls` observed activations of each size and dtype, native path vs numpy path."""
    import torch

    from graft_ui.analysis.stats import StatsAccumulator

    rows = []
    for n in sizes:
        for dtype in (torch.float32, torch.bfloat16):
            x = torch.randn(n, generator=torch.Generator().manual_seed(n)).to(dtype)
            accs = {p: StatsAccumulator(["m"], 1e-3, path=p) for p in ("native", "numpy")}

            def run(acc):
                for _ in range(calls):
                    acc.observe("m", x)
                acc.discard_sample()

            med, _ = _medians({p: (lambda acc=acc: run(acc)) for p, acc in accs.items()}, repeat)
            rows.append({"n": n, "dtype": str(dtype).replace("torch.", ""), "calls": calls,
                         "us_per_call": {p: v / calls * 1e6 for p, v in med.items()},
                         "native_vs_numpy": med["native"] / med["numpy"]})
    return rows


def child(shapes: list[tuple[int, int]], rank: int, repeat: int) -> dict:
    import torch

    from graft_ui.kernels import lora_gates as G
    from graft_ui.native import cpu_vector_isa

    torch.set_num_threads(1)
    out = {"cpu": cpu_vector_isa(), "torch": torch.backends.cpu.get_cpu_capability(), "kernel": G.describe_kernel(),
           "modules": []}
    if G.kernel_target() is None:
        raise RuntimeError("the C kernel did not build")
    for M, N in shapes:
        g = torch.Generator().manual_seed(0)
        Bb, Bg = (torch.randn(M, rank, generator=g) * 0.02 for _ in range(2))
        Ab, Ag = (torch.randn(rank, N, generator=g) * 0.02 for _ in range(2))
        med, times = _medians({"kernel": lambda: G.native(Bb, Ab, 2.0, Bg, Ag, 0.5, 10),
                               "reference": lambda: G.reference(Bb, Ab, 2.0, Bg, Ag, 0.5, 10),
                               "dense products": lambda: ((Bb @ Ab).mul_(2.0), (Bg @ Ag).mul_(0.5))}, repeat)
        out["modules"].append({"shape": [M, N], "rank": rank, "ms": {k: v * 1e3 for k, v in med.items()},
                               "kernel_vs_reference": med["kernel"] / med["reference"],
                               "all_ms": {k: [x * 1e3 for x in v] for k, v in times.items()}})
    return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--targets", default="native", help="comma-separated GRAFT_NATIVE_MARCH values")
    ap.add_argument("--shapes", default="1536x1536,8960x1536", help="MxN of each module (out x in)")
    ap.add_argument("--rank", type=int, default=16)
    ap.add_argument("--activations", default="8192,196608",
                    help="elements of each hooked activation timed (zoo-sized, 2B-sized: 128 tokens x 1536)")
    ap.add_argument("--repeat", type=int, default=5)
    ap.add_argument("--child", default=None, help=argparse.SUPPRESS)
    a = ap.parse_args(argv)
    shapes = [tuple(int(x) for x in s.split("x")) for s in a.shapes.split(",")]
    sizes = [int(n) for n in a.activations.split(",") if n]
    if a.child:
        print(json.dumps(dict(child(shapes, a.rank, a.repeat), stats=child_stats(sizes, a.repeat))))
        return 0
    for target in a.targets.split(","):
        env = dict(target_env(target), OMP_NUM_THREADS="1", MKL_NUM_THREADS="1")
        proc = subprocess.run([sys.executable, __file__, "--child", target, "--shapes", a.shapes, "--rank",
                               str(a.rank), "--repeat", str(a.repeat), "--activations", a.activations], env=env, capture_output=True, text=True)
        if proc.returncode != 0:
            sys.exit(f"target {target} failed:\n{proc.stderr[-3000:]}")
        r = json.loads(proc.stdout.strip().splitlines()[-1])
        print(f"target {target}: CPU {r['cpu']}, torch's kernels {r['torch']}, {r['kernel']}")
        for m in r["modules"]:
            ms = m["ms"]
            print(f"  {m['shape'][0]}x{m['shape'][1]} rank {m['rank']}, 1 thread, medians of {a.repeat}: "
                  f"kernel {ms['kernel']:.1f} ms, torch reference {ms['reference']:.1f} ms, dense products "
                  f"{ms['dense products']:.1f} ms; kernel / reference {m['kernel_vs_reference']:.2f}x")
        for row in r["stats"]:
            us = row["us_per_call"]
            print(f"  activation statistics, {row['n']} {row['dtype']}: native {us['native']:.1f} us a call, "
                  f"numpy {us['numpy']:.1f} us; native / numpy {row['native_vs_numpy']:.2f}x")
    return 0


if __name__ == "__main__":
    sys.exit(main())
