"""`python -m graft_ui analyze ...`: per-module activation statistics, rho', compatibility per
expert and pair scores of the experts of a manifest on a target dataset -> DIR/analysis.json
+ figures.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from graft_ui.analysis import plots
from graft_ui.analysis.analyze import analyze_experts
from graft_ui.analysis.scores import DEFAULT_THRESHOLD
from graft_ui.analysis.stats import DEFAULT_EPS
from graft_ui.commands.common import add_manifest_args, add_scope_args, load_manifest_arg, scope_arg, split_names


def add_parser(subparsers) -> None:
    a = subparsers.add_parser(
        "analyze", help="activation sensitivity and compatibility of experts on a target dataset",
        description="Hook every fused module of each expert on K target samples; write per-module mean "
        "magnitude, sparsity, variance, rho' and each expert's compatibility (paper 3.4) to DIR/analysis.json, "
        "with heatmaps and compatibility bars as HTML (PNG too when kaleido is installed).",
    )
    add_manifest_args(a, required=True)
    a.add_argument("--dataset", required=True,
                   help="target: a manifest domain, a JSONL file of messages (+answers), or a union like math+code")
    a.add_argument("--experts", help="comma-separated expert names (default: all experts of the manifest)")
    a.add_argument("--source", choices=("auto", "output", "adapter"), default="auto",
                   help="activation observed: auto = the LoRA branch for adapters, the module output for full experts")
    a.add_argument("--threshold", type=float, default=None, help="compatibility threshold for 'acceptable' (default 0.2)")
    a.add_argument("--with-answer", action="store_true", help="feed the reference answers too (teacher forcing)")
    add_scope_args(a)
    a.set_defaults(func=cmd_analyze)


def cmd_analyze(args: argparse.Namespace) -> int:
    manifest = load_manifest_arg(args)
    experts = split_names(args.experts)
    result = analyze_experts(
        manifest, experts, args.dataset, k=args.k, seed=args.seed,
        eps=DEFAULT_EPS if args.eps is None else args.eps, source=args.source, scope=scope_arg(args),
        threshold=DEFAULT_THRESHOLD if args.threshold is None else args.threshold,
        with_answer=args.with_answer, device=args.device, progress=True,
    )
    out = Path(args.out)
    path = result.save(out / "analysis.json")
    files = plots.save_figures(plots.analysis_figures(result), out, png=False if args.no_png else None)
    print(f"compatibility on {result.dataset} (K={result.k}, eps={result.eps:g}, threshold {result.threshold:g}):")
    for row in result.table():
        mark = "acceptable" if row["acceptable"] else "below threshold"
        print(f"  {row['expert']:<16} {row['kind']:<5} {row['source']:<8} {row['compatibility']:.4f}  {mark}")
    for p in result.pairs:
        print(f"  pair {p['a']} + {p['b']}: {p['score']:.4f} (mean of separate: {p['score_mean']:.4f})")
    print(f"wrote {path} and {len(files)} figure file(s) in {out}")
    return 0
