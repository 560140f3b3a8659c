"""`python -m graft_ui correlate ...`: compatibility vs fusion gain over every pair of experts
of one kind -> DIR/correlation.json + DIR/correlation.html (+ .png with kaleido).
"""

from __future__ import annotations

import argparse
from pathlib import Path

from graft_ui.analysis import plots
from graft_ui.analysis.correlate import correlate
from graft_ui.analysis.stats import DEFAULT_EPS
from graft_ui.commands.common import add_manifest_args, add_scope_args, load_manifest_arg, scope_arg, split_names


def add_parser(subparsers) -> None:
    c = subparsers.add_parser(
        "correlate", help="Spearman correlation of pair compatibility and fusion gain over expert pairs",
        description="For every pair of experts of one kind (different domains): the pair score on the union of "
        "their domains, Graft fusion at default parameters, and the gain of the fused model over the better single "
        "expert on the two domains' mini-benchmarks. Reports Spearman rho with its p-value and a scatter plot.",
    )
    add_manifest_args(c, required=True)
    c.add_argument("--kind", choices=("lora", "full"), default="lora", help="which experts to pair (default lora)")
    c.add_argument("--experts", help="comma-separated expert names to pair (default: all of --kind)")
    c.add_argument("--eval-limit", type=int, default=None, help="first N samples of each eval split (default all)")
    add_scope_args(c)
    c.set_defaults(func=cmd_correlate)


def cmd_correlate(args: argparse.Namespace) -> int:
    manifest = load_manifest_arg(args)
    experts = split_names(args.experts)
    out = Path(args.out)
    result = correlate(manifest, kind=args.kind, experts=experts, k=args.k, seed=args.seed,
                       eps=DEFAULT_EPS if args.eps is None else args.eps, scope=scope_arg(args),
                       eval_limit=args.eval_limit, out_dir=out, device=args.device)
    path = result.save(out / "correlation.json")
    sp = result.spearman["score"]
    fig = plots.correlation_scatter(result.pairs, rho=sp["rho"], p=sp["p"],
                                    title=f"Pair compatibility vs Graft fusion gain ({result.kind} experts)")
    files = plots.save_figures({"correlation": fig}, out, png=False if args.no_png else None)
    print(f"{'pair':<32} {'score':>7} {'s_mean':>7} {'s_fused':>7} {'fused':>6} {'best':>6} {'gain':>7}")
    for r in result.pairs:
        print(f"{r['a'] + ' + ' + r['b']:<32} {r['score']:7.4f} {r['score_mean']:7.4f} {r['score_fused']:7.4f} "
              f"{r['fused']:6.1f} {r['best_single']:6.1f} {r['gain']:+7.2f}")
    for key, s in result.spearman.items():
        if s["rho"] is None:
            print(f"Spearman({key}, gain): undefined ({s.get('note')}), n = {s['n']}")
        else:
            print(f"Spearman({key}, gain): rho = {s['rho']:+.3f}, p = {s['p']:.3g}, n = {s['n']}")
    print(f"wrote {path} and {len(files)} figure file(s) in {out}")
    return 0
