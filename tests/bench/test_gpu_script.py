"""bench/gpu.sh, the prepared GPU run: its --dry-run passes on CPU, and its report keeps failed steps."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "bench"))


def test_dry_run_checks_every_step_on_cpu():
    env = dict(os.environ, GRAFT_GPU_PYTHON=sys.executable)
    res = subprocess.run(["bash", "bench/gpu.sh", "--dry-run"], cwd=ROOT, env=env, capture_output=True, text=True,
                         timeout=400)
    assert res.returncode == 0, res.stderr[-3000:]
    for step in ("env", "merge", "chat", "first"):
        assert f"gpu.sh: {step} (at most" in res.stderr
    assert "| merge | ok |" in res.stdout and "every step's arguments and imports are fine" in res.stdout


def test_unknown_option_is_refused():
    res = subprocess.run(["bash", "bench/gpu.sh", "--fast"], cwd=ROOT, capture_output=True, text=True, timeout=30)
    assert res.returncode == 2 and "usage" in res.stderr


def test_report_names_failed_and_timed_out_steps(tmp_path):
    import gpu_report

    (tmp_path / "steps.tsv").write_text("env\t0\t3.0\nmerge\t124\t250.0\nchat\t1\t12.5\nfirst\t0\t40.0\n")
    (tmp_path / "env.json").write_text(json.dumps({"device_name": "NVIDIA H100", "memory_gb": 79.2, "torch": "2.11.0",
                                                   "transformers": "5.17.0", "python": "3.12.3"}))
    (tmp_path / "merge.json").write_text(json.dumps({"floor_gbps": [2.0], "runs": {
        "floor (read 2 + write 1)": {"wall": 10.0, "gbps": 2.0},
        "lora floor: dense deltas only": {"wall": 2.0, "gbps": 1.0},
        "lora graft exact": {"wall": 2.5, "gbps": 0.8}}}))
    (tmp_path / "first.json").write_text(json.dumps({"zoo": "ci", "k": 16, "analysis_first_s": 4.2,
                                                     "analysis_second_s": 0.5, "fusion_first_s": 1.5,
                                                     "fusion_second_s": 0.2}))
    out = tmp_path / "results" / "gpu-2026-12-07"
    assert gpu_report.main(["--work", str(tmp_path), "--out", str(out), "--date", "2026-12-07"]) == 0
    md = out.with_suffix(".md").read_text()
    assert "| merge | timed out | 250 |" in md and "| chat | failed (1) | 12 |" in md
    assert "first analysis (ci zoo, K=16; then another domain) | 4.20 s (then 0.50 s)" in md
    data = json.loads(out.with_suffix(".json").read_text())
    assert "| merge: lora graft exact / its dense-delta floor | 1.25x |" in md
    assert data["chat_memory"] is None and data["steps"]["first"]["status"] == "ok"
