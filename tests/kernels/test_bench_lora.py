"""bench/bench_merge.py's LoRA runs on one Qwen2-VL-2B-shaped layer: they run, and the exactness
check it prints (the merge's kernel path against merging/lora.py's dense reference) holds."""

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
    assert "exact LoRA Graft / dense-delta floor (same run, 1 layers)" in out
    checks = [line for line in out.splitlines() if line.startswith("exact check ")]
    assert len(checks) == 2 and all(line.endswith("(within 1e-6: yes)") for line in checks), out
    assert not (tmp_path / "work").exists()  # not kept without --keep
