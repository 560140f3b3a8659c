"""The merge preview's cost against its targets: fusion <= 1 s, the app's one-pair preview <= 10 s.

    .venv/bin/python bench/bench_preview.py --zoo .zoo/full [--k 16] [--device cpu|cuda] [--repeats 3]

One run, one machine. For a LoRA and a full pair of the zoo and each method, times the preview of
graft_ui.advisor.preview (fuse + the fused model's greedy answers and teacher-forced log-probs on K
prompts per expert domain) with the experts' answers already cached (the app's second and later
previews), and once cold (the first: the experts' answers too). Prints the median fusion and
preview seconds per method and their ratio to the targets, measured in this run.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # run as a script: the package is the checkout's

FUSE_TARGET_S = 1.0
PREVIEW_TARGET_S = 10.0


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--zoo", required=True, help="a zoo folder (holding manifest.yaml)")
    p.add_argument("--k", type=int, default=16)
    p.add_argument("--device", default="cpu")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--threads", type=int, default=1)
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    from graft_ui.advisor.preview import Previewer
    from graft_ui.advisor.signals import METHODS
    from graft_ui.models.manifest import load_manifest

    m = load_manifest(args.zoo)
    for kind in ("lora", "full"):
        a, b = [e.name for e in m.experts if e.kind == kind][:2]
        pv = Previewer(m, k=args.k, device=args.device)
        t = time.perf_counter()
        pv.preview(a, b, METHODS[0])
        cold = time.perf_counter() - t
        print(f"{kind} {a} + {b}: cold preview (experts' answers included) {cold:.1f} s "
              f"= {cold / PREVIEW_TARGET_S:.2f} x the {PREVIEW_TARGET_S:g} s target")
        for method in METHODS:
            runs = [pv.preview(a, b, method) for _ in range(args.repeats)]
            fuse = statistics.median(r["fuse_seconds"] for r in runs)
            total = statistics.median(r["seconds"] for r in runs)
            print(f"  {method:<16} fuse {fuse:.2f} s ({fuse / FUSE_TARGET_S:.2f} x target), preview {total:.1f} s "
                  f"({total / PREVIEW_TARGET_S:.2f} x target), K={args.k} per domain on {args.device}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
