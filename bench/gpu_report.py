"""Gather bench/gpu.sh's step results into one JSON and one Markdown file (quoted by the README).

    python3 bench/gpu_report.py --work /tmp/graft-gpu --out bench/results/gpu-2026-12-07

Reads from --work: env.json (the machine), steps.tsv (each step's exit status and seconds),
merge.json (bench_merge.py), chat_memory.json (bench_chat_memory.py), first.json
(bench_first.py); a step that failed or timed out is reported as such, never left out.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path


def load(path: Path) -> dict | None:
    try:
        return json.loads(path.read_text())
    except (OSError, json.JSONDecodeError):
        return None


def steps(work: Path) -> dict[str, dict]:
    out = {}
    try:
        lines = (work / "steps.tsv").read_text().splitlines()
    except OSError:
        return out
    for line in lines:
        name, rc, seconds = line.split("\t")
        out[name] = {"rc": int(rc), "seconds": float(seconds),
                     "status": "ok" if rc == "0" else ("timed out" if rc in ("124", "137") else f"failed ({rc})")}
    return out


def merge_rows(m: dict) -> list[tuple[str, str]]:
    rows = []
    floor = (m.get("floor_gbps") or [None])[0]
    for label, r in m.get("runs", {}).items():
        vs = f", {r['gbps'] / floor:.0%} of the floor's GB/s" if floor and not label.startswith("lora") else ""
        rows.append((f"merge: {label}", f"{r['wall']:.2f} s, {r['gbps']:.2f} GB/s{vs}"))
    runs = m.get("runs", {})
    for label, r in runs.items():  # bench_merge.lora_labels: "lora graft exact[ tag]" beside "lora floor: ...[ tag]"
        if label.startswith("lora graft exact"):
            floor = runs.get("lora floor: dense deltas only" + label[len("lora graft exact"):])
            if floor:
                rows.append((f"merge: {label} / its dense-delta floor", f"{r['wall'] / floor['wall']:.2f}x"))
    return rows


def markdown(report: dict) -> str:
    env = report.get("env") or {}
    lines = [f"# GPU benchmarks, {report['date']}", "",
             f"Machine: {env.get('device_name', 'unknown')} ({env.get('memory_gb', '?')} GB), torch {env.get('torch', '?')}, "
             f"transformers {env.get('transformers', '?')}, Python {env.get('python', '?')}; `bash bench/gpu.sh`.", "",
             "| step | status | seconds |", "|---|---|---:|"]
    lines += [f"| {k} | {v['status']} | {v['seconds']:.0f} |" for k, v in report["steps"].items()]
    lines += ["", "| measurement | value |", "|---|---|"]
    if report.get("merge"):
        lines += [f"| {k} | {v} |" for k, v in merge_rows(report["merge"])]
    c = report.get("chat_memory")
    if c:
        lines.append(f"| chat pool: base + 2 LoRA + 1 fused vs one model (parameters) | {c['ratio_params']:.3f}x |")
        if "ratio_cuda" in c:
            lines.append(f"| chat pool: the same, CUDA allocated | {c['ratio_cuda']:.3f}x |")
    f = report.get("first")
    if f:
        lines.append(f"| first analysis ({f['zoo']} zoo, K={f['k']}; then another domain) | "
                     f"{f['analysis_first_s']:.2f} s (then {f['analysis_second_s']:.2f} s) |")
        lines.append(f"| first Graft fusion ({f['zoo']} zoo, exact LoRA; then again) | "
                     f"{f['fusion_first_s']:.2f} s (then {f['fusion_second_s']:.2f} s) |")
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--work", required=True, help="the folder bench/gpu.sh's steps wrote to")
    ap.add_argument("--out", required=True, help="path without suffix: OUT.json and OUT.md are written")
    ap.add_argument("--date", default=None)
    a = ap.parse_args(argv)
    work, out = Path(a.work), Path(a.out)
    import time

    report = {"date": a.date or time.strftime("%Y-%m-%d", time.gmtime()), "env": load(work / "env.json"),
              "steps": steps(work), "merge": load(work / "merge.json"), "chat_memory": load(work / "chat_memory.json"),
              "first": load(work / "first.json")}
    out.parent.mkdir(parents=True, exist_ok=True)
    out.with_suffix(".json").write_text(json.dumps(report, indent=1))
    out.with_suffix(".md").write_text(markdown(report))
    print(out.with_suffix(".md").read_text())
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
