"""kill -9 of a `python -m graft_ui merge --overwrite` at random points, then one more run: no
`*.tmp-*` / `*.old-*` folder is left, and `--out` is always a complete output (old or new)."""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[2]
KILLS = 6


def merge_cmd(recipe: Path, out: Path) -> list[str]:
    return [sys.executable, "-m", "graft_ui", "merge", str(recipe), "--out", str(out), "--overwrite", "--device", "cpu"]


def complete(out: Path) -> bool:
    """A published merge output: weights, the resolved recipe, gates.json, no marker."""
    names = {p.name for p in out.iterdir()}
    return {"recipe.yaml", "gates.json", "model.safetensors"} <= names and ".incomplete" not in names \
        and json.loads((out / "gates.json").read_text())["modules"]


def leftovers(parent: Path) -> list[str]:
    return sorted(p.name for p in parent.iterdir() if ".tmp-" in p.name or ".old-" in p.name)


def test_kill_9_at_random_points_leaves_a_complete_output_and_no_debris(zoo, tmp_path):
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text(yaml.safe_dump({"method": "ties", "base": str(zoo["base"]),
                                      "experts": [str(zoo["full_a"]), str(zoo["full_b"])]}))
    work = tmp_path / "outs"
    work.mkdir()
    out = work / "fused"
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=str(ROOT))
    subprocess.run(merge_cmd(recipe, out), env=env, check=True, capture_output=True, timeout=300)
    assert complete(out)
    window = run_until_written(recipe, out, env)  # seconds from the temp folder's creation to its publishing
    rng = random.Random(16)
    outcomes, hit = [], 0
    for i in range(KILLS):
        # the kills are spread (stratified, seeded) from "the temp folder exists" to a little after it was published
        outcomes.append(run_until_written(recipe, out, env, kill_after=window * 1.2 * (i + rng.random()) / KILLS))
        hit += bool(leftovers(work))
        assert out.is_dir() or leftovers(work), "a kill left neither an output nor anything to recover"
    assert hit, f"no kill landed inside the write (kills at {outcomes} s of {window:.3f} s): the test tests nothing"
    subprocess.run(merge_cmd(recipe, out), env=env, check=True, capture_output=True, timeout=300)
    assert leftovers(work) == [], outcomes
    assert complete(out)
    print(f"merge kill -9: {KILLS} kills, {hit} left debris, at {[round(o, 3) for o in outcomes]} s into a {window:.3f} s write window; "
          "no leftovers, --out complete")


def run_until_written(recipe: Path, out: Path, env: dict, kill_after: float | None = None) -> float:
    """Start a merge, wait for its temp folder; kill it `kill_after` s later (or let it finish).
    Returns the seconds from the temp folder's appearance to its rename (or to the kill)."""
    p = subprocess.Popen(merge_cmd(recipe, out), env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    tmp = out.parent / f"{out.name}.tmp-{p.pid}"
    deadline = time.monotonic() + 300
    while not tmp.exists() and p.poll() is None and time.monotonic() < deadline:
        time.sleep(0.002)
    t0 = time.perf_counter()
    if kill_after is None:
        while tmp.exists() and time.monotonic() < deadline:
            time.sleep(0.001)
        took = time.perf_counter() - t0
        assert p.wait(timeout=300) == 0
        return took
    time.sleep(kill_after)
    p.send_signal(signal.SIGKILL)
    p.wait()
    return kill_after
