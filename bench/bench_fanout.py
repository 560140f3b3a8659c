"""What Ray adds to a study on one machine: a local Ray head (loopback, 2 CPUs) vs `--workers 2`.

    .venv/bin/python bench/bench_fanout.py                      # 3 repeats of each, the ci zoo
    .venv/bin/python bench/bench_fanout.py --repeats 5 --json fanout.json

One run, one machine. The same study subset (ci zoo; --pairs, graft + task_arithmetic, no
ablations, 4 eval items, K=4) is run from an empty output folder with `workers=2` (spawned
local processes, one pair per task) and with `ray=ADDRESS` (one Ray task per fusion +
evaluation, 2 CPUs on the head), alternating local/Ray so that a change in the machine's load
hits both alike. The Ray head is started once (its start time is printed apart); each Ray run
includes connecting to it and uploading the graft_ui package (cached by Ray after the first).
Also timed: N no-op jobs through each backend (the per-task cost without any model work).
Prints each run's wall time, the medians, and the ratios Ray / local measured in this run.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

PAIRS = ["math-lora+code-lora", "math-lora+finance-lora", "code-lora+medical-lora", "math-full+code-full"]


def noop(job, report):
    return job


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--pairs", nargs="+", default=PAIRS)
    ap.add_argument("--noop-jobs", type=int, default=40)
    ap.add_argument("--json", metavar="FILE")
    args = ap.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TQDM_DISABLE", "1")

    from graft_ui.fanout import Backend, run_jobs
    from graft_ui.study.runner import StudyConfig, run_study
    from graft_ui.zoo import ensure_zoo
    from tests._ray import ray_head

    zoo = ensure_zoo("ci", progress=False)
    settings = dict(pairs=args.pairs, methods=["graft", "task_arithmetic"], ablations=False, resamples=200,
                    png=False, config=StudyConfig(k=4, limit=4), progress=lambda msg: None)
    runs: dict[str, list[float]] = {"local": [], "ray": []}
    noop_s: dict[str, list[float]] = {"local": [], "ray": []}
    t = time.perf_counter()
    with ray_head(num_cpus=2) as address:
        head_s = time.perf_counter() - t
        print(f"Ray head on {address} up in {head_s:.1f} s", flush=True)
        for i in range(args.repeats):
            for kind in ("local", "ray"):
                with tempfile.TemporaryDirectory(prefix="bench-fanout-") as out:
                    t = time.perf_counter()
                    study = run_study(zoo, out, workers=2, ray=address if kind == "ray" else None, **settings)
                    runs[kind].append(time.perf_counter() - t)
                assert study["run"]["fusions_done"] == 2 * len(args.pairs)
                backend = Backend(workers=2, ray=address if kind == "ray" else None)
                t = time.perf_counter()
                run_jobs(list(range(args.noop_jobs)), noop, backend)
                noop_s[kind].append(time.perf_counter() - t)
                print(f"repeat {i + 1} {kind:5}: study {runs[kind][-1]:6.1f} s; {args.noop_jobs} no-op jobs "
                      f"{noop_s[kind][-1]:5.1f} s", flush=True)
    med = {k: statistics.median(v) for k, v in runs.items()}
    med_noop = {k: statistics.median(v) for k, v in noop_s.items()}
    n_tasks = 2 * len(args.pairs)
    print(f"\nstudy of {len(args.pairs)} pair(s) x 2 methods ({n_tasks} fusions), median of {args.repeats}:")
    print(f"  --workers 2  {med['local']:6.1f} s")
    print(f"  Ray (2 CPUs) {med['ray']:6.1f} s   ratio Ray/local {med['ray'] / med['local']:.2f}, "
          f"difference {med['ray'] - med['local']:+.1f} s")
    print(f"  {args.noop_jobs} no-op jobs: local pool {med_noop['local']:.1f} s, Ray {med_noop['ray']:.1f} s "
          f"({1000 * med_noop['ray'] / args.noop_jobs:.0f} ms per Ray task incl. connecting)")
    print(f"  Ray head start (once) {head_s:.1f} s; load average now {os.getloadavg()[0]:.1f} on {os.cpu_count()} cores")
    if args.json:
        Path(args.json).write_text(json.dumps({"runs": runs, "noop": noop_s, "median": med, "median_noop": med_noop,
                                               "head_start_s": head_s, "pairs": args.pairs,
                                               "loadavg": os.getloadavg()}, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
