"""`python -m graft_ui analyze ...` and `python -m graft_ui correlate ...`.

analyze:   per-module activation statistics, rho', compatibility per expert and pair scores
           of the experts of a manifest on a target dataset -> DIR/analysis.json + figures.
correlate: compatibility vs fusion gain over every pair of experts of one kind
           -> DIR/correlation.json + DIR/correlation.html (+ .png with kaleido).
"""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

log = logging.getLogger(__name__)


def _source_args(p: argparse.ArgumentParser) -> None:
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--manifest", metavar="FILE", help="manifest YAML/JSON (or a folder holding manifest.yaml)")
    src.add_argument("--zoo", metavar="PROFILE_OR_DIR",
                     help="the demo zoo: a profile (ci, full; built if missing) or a zoo folder")


def _scope_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--modules", help="comma-separated module types in scope (default: all of q,k,v,o,gate,up,down)")
    p.add_argument("--layers", default="all", help="'all' or FIRST-LAST (inclusive language-model layers)")
    p.add_argument("--vision", action="store_true", help="include the vision tower's blocks")
    p.add_argument("--eps", type=float, default=None, help="sparsity threshold |a| < eps (default 1e-3)")
    p.add_argument("-k", "--k", type=int, default=32, help="number of target samples K (default 32)")
    p.add_argument("--seed", type=int, default=0, help="sample selection seed (default 0)")
    p.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N (default auto)")
    p.add_argument("--out", required=True, metavar="DIR", help="output folder")
    p.add_argument("--no-png", action="store_true", help="HTML figures only, even if kaleido is installed")


def add_parser(subparsers) -> None:
    a = subparsers.add_parser(
        "analyze", help="activation sensitivity and compatibility of experts on a target dataset",
        description="Hook every fused module of each expert on K target samples; write per-module mean "
        "magnitude, sparsity, variance, rho' and each expert's compatibility (paper 3.4) to DIR/analysis.json, "
        "with heatmaps and compatibility bars as HTML (PNG too when kaleido is installed).",
    )
    _source_args(a)
    a.add_argument("--dataset", required=True,
                   help="target: a manifest domain, a JSONL file of messages (+answers), or a union like math+code")
    a.add_argument("--experts", help="comma-separated expert names (default: all experts of the manifest)")
    a.add_argument("--source", choices=("auto", "output", "adapter"), default="auto",
                   help="activation observed: auto = the LoRA branch for adapters, the module output for full experts")
    a.add_argument("--threshold", type=float, default=None, help="compatibility threshold for 'acceptable' (default 0.2)")
    a.add_argument("--with-answer", action="store_true", help="feed the reference answers too (teacher forcing)")
    _scope_args(a)
    a.set_defaults(func=cmd_analyze)

    c = subparsers.add_parser(
        "correlate", help="Spearman correlation of pair compatibility and fusion gain over expert pairs",
        description="For every pair of experts of one kind (different domains): the pair score on the union of "
        "their domains, Graft fusion at default parameters, and the gain of the fused model over the better single "
        "expert on the two domains' mini-benchmarks. Reports Spearman rho with its p-value and a scatter plot.",
    )
    _source_args(c)
    c.add_argument("--kind", choices=("lora", "full"), default="lora", help="which experts to pair (default lora)")
    c.add_argument("--experts", help="comma-separated expert names to pair (default: all of --kind)")
    c.add_argument("--eval-limit", type=int, default=None, help="first N samples of each eval split (default all)")
    _scope_args(c)
    c.set_defaults(func=cmd_correlate)


def _manifest(args):
    from graft_ui.models.manifest import load_manifest

    if args.manifest:
        return load_manifest(args.manifest)
    if Path(args.zoo).exists():
        return load_manifest(args.zoo)
    from graft_ui.zoo import ensure_zoo

    return load_manifest(ensure_zoo(args.zoo))


def _scope(args):
    from graft_ui.recipe import ALL_MODULES, Scope

    modules = tuple(m.strip() for m in args.modules.split(",") if m.strip()) if args.modules else ALL_MODULES
    layers: str | tuple[int, int] = "all"
    if args.layers != "all":
        try:
            lo, hi = (int(x) for x in args.layers.split("-"))
        except ValueError:
            raise ValueError(f"--layers={args.layers!r} must be 'all' or FIRST-LAST, e.g. 0-11") from None
        layers = (lo, hi)
    return Scope(modules=modules, layers=layers, vision=bool(args.vision))


def cmd_analyze(args: argparse.Namespace) -> int:
    from graft_ui.analysis import plots
    from graft_ui.analysis.analyze import analyze_experts
    from graft_ui.analysis.scores import DEFAULT_THRESHOLD
    from graft_ui.analysis.stats import DEFAULT_EPS

    manifest = _manifest(args)
    experts = [e.strip() for e in args.experts.split(",") if e.strip()] if args.experts else None
    result = analyze_experts(
        manifest, experts, args.dataset, k=args.k, seed=args.seed,
        eps=DEFAULT_EPS if args.eps is None else args.eps, source=args.source, scope=_scope(args),
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


def cmd_correlate(args: argparse.Namespace) -> int:
    from graft_ui.analysis import plots
    from graft_ui.analysis.correlate import correlate
    from graft_ui.analysis.stats import DEFAULT_EPS

    manifest = _manifest(args)
    experts = [e.strip() for e in args.experts.split(",") if e.strip()] if args.experts else None
    out = Path(args.out)
    result = correlate(manifest, kind=args.kind, experts=experts, k=args.k, seed=args.seed,
                       eps=DEFAULT_EPS if args.eps is None else args.eps, scope=_scope(args),
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


__all__ = ["add_parser", "cmd_analyze", "cmd_correlate"]
