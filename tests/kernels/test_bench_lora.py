"""bench/bench_merge.py's LoRA runs on one Qwen2-VL-2B-shaped layer: they run, name the CPU and the
kernel's build beside the ratio, and the exactness check it prints holds: the merge's kernel path
within 1e-6 relative of merging/lora.py's dense reference (fused factors, gates) and the kernel's
statistics within the bounds `_lora_gates.c` promises against float64 (true on any CPU, unlike
bit-equality with torch's BLAS)."""

import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_bench_merge_lora_runs_and_its_exact_check_holds(tmp_path):
    cmd = [sys.executable, str(ROOT / "bench" / "bench_merge.py"), "--layers", "1", "--no-full", "--only-graft-lora",
           "--svd-sample", "0", "--exact-sample", "2", "--workdir", str(tmp_path / "work")]
    res = subprocess.run(cmd, capture_output=True, text=True, timeout=600, env=dict(os.environ, HF_HUB_OFFLINE="1"))
    assert res.returncode == 0, res.stderr[-3000:]
    out = res.stdout
    ratio = next(line for line in out.splitlines() if line.startswith("exact LoRA Graft / dense-delta floor (same run, 1 layers)"))
    assert "CPU " in ratio and "kernel built for -march=" in ratio, ratio
    checks = [line for line in out.splitlines() if line.startswith("exact check ")]
    assert len(checks) == 2 and all(line.endswith("(factors within 1e-6 and promise kept: yes)") for line in checks), out
    assert not (tmp_path / "work").exists()  # not kept without --keep
