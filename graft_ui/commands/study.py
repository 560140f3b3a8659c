"""`python -m graft_ui study ...`: the fusion-quality study (thin glue over study.runner)."""

from __future__ import annotations

import argparse
import os
import shlex

from graft_ui.commands.common import add_manifest_args, load_manifest_arg
from graft_ui.study.runner import StudyConfig, run_study


def add_parser(subparsers) -> None:
    p = subparsers.add_parser(
        "study", help="fusion-quality study: every method on every expert pair, predictors of the gain",
        description="Fuse every pair of experts of one kind with every registered method (plus Graft's gate and "
        "global-form ablations), score the fused models, and relate the measured gain to the pair's compatibility, "
        "the stronger expert's baseline and the task-vector similarity (Spearman rho, bootstrap 95%% interval). "
        "Writes DIR/study.json, DIR/study.md and figures; resumable (finished pieces are cached in DIR/cache).")
    add_manifest_args(p, required=True)
    p.add_argument("--out", required=True, metavar="DIR", help="output folder (also holds the cache)")
    p.add_argument("--kinds", nargs="+", choices=("lora", "full"), default=["lora", "full"])
    p.add_argument("--methods", nargs="+", metavar="METHOD",
                   help="registered methods, optionally with parameters: graft 'graft[gates=local]' ties "
                        "(default: all, plus Graft's ablations)")
    p.add_argument("--no-ablations", action="store_true", help="no Graft gate / global-form ablation rows")
    p.add_argument("--pairs", nargs="+", metavar="A+B", help="only these pairs (default: every pair of each kind)")
    p.add_argument("--limit", type=int, help="first N samples of each eval split (default: all)")
    p.add_argument("--all-domains", action="store_true", help="score fused models on every domain, not just the pair's")
    p.add_argument("-k", "--k", type=int, default=32, help="compatibility samples K on the pair's domains (default 32)")
    p.add_argument("--workers", type=int, default=1, help="worker processes (default 1)")
    p.add_argument("--ray", metavar="auto|ADDRESS",
                   help="run one Ray task per fusion + evaluation on this cluster instead of local processes "
                        "('auto': the cluster `ray start` started on this machine; HOST:PORT: its head); results go "
                        "to the same DIR/cache, so a cluster run resumes locally and vice versa. Needs "
                        "requirements-ray.txt; every node needs the same packages and the zoo at the same path")
    p.add_argument("--threads", type=int, default=1,
                   help="torch threads per process (default 1: fastest for the zoo's tiny models on busy cores)")
    p.add_argument("--seed", type=int, default=0, help="fusion, sample selection and bootstrap seed (default 0)")
    p.add_argument("--resamples", type=int, default=1000, help="bootstrap resamples for the intervals (default 1000)")
    p.add_argument("--device", default="cpu", help="cpu, cuda or auto (default cpu)")
    p.add_argument("--batch-size", type=int, default=16, help="evaluation batch size (default 16)")
    p.add_argument("--keep-fused", action="store_true", help="keep the fused models under DIR/work")
    p.add_argument("--no-png", action="store_true", help="figures as HTML only")
    p.set_defaults(func=cmd_study)


def canonical_command(args: argparse.Namespace) -> str:
    """The command line that reproduces this run, rebuilt from the parsed options (defaults included)."""
    src = ["--manifest", args.manifest] if args.manifest else ["--zoo", args.zoo]
    parts = ["python -m graft_ui study", *src, "--out", args.out, "--kinds", *args.kinds]
    if args.methods:
        parts += ["--methods", *args.methods]
    if args.no_ablations:
        parts.append("--no-ablations")
    if args.pairs:
        parts += ["--pairs", *args.pairs]
    if args.limit:
        parts += ["--limit", str(args.limit)]
    if args.all_domains:
        parts.append("--all-domains")
    parts += ["-k", str(args.k), "--seed", str(args.seed), "--resamples", str(args.resamples),
              "--workers", str(args.workers), "--threads", str(args.threads), "--device", args.device]
    if args.ray:
        parts += ["--ray", args.ray]
    return " ".join(p if p.startswith("python -m") else shlex.quote(p) for p in parts)


def cmd_study(args: argparse.Namespace) -> int:
    for name in ("limit", "k", "resamples", "threads", "workers"):
        value = getattr(args, name)
        if value is not None and value < 1:
            raise ValueError(f"--{name}={value} must be at least 1")
    config = StudyConfig(k=args.k, seed=args.seed, limit=args.limit, all_domains=args.all_domains,
                         device=args.device, batch_size=args.batch_size)
    command = canonical_command(args)
    # one progress line per finished piece (below) instead of a tqdm bar per merge and per model load;
    # worker processes inherit it
    os.environ.setdefault("TQDM_DISABLE", "1")
    study = run_study(load_manifest_arg(args), args.out, kinds=args.kinds, methods=args.methods, pairs=args.pairs,
                      ablations=not args.no_ablations, config=config, workers=args.workers, threads=args.threads,
                      resamples=args.resamples, keep_fused=args.keep_fused, command=command, png=not args.no_png,
                      progress=lambda msg: print(msg, flush=True), ray=args.ray)
    for group, c in study["correlations"].items():
        s = c["gain_graft"]["pair_score"]
        if s["rho"] is None:
            rho = f"undefined ({s.get('note')})"
        else:
            ci = "n/a" if s["ci_lo"] is None else f"[{s['ci_lo']:+.2f}, {s['ci_hi']:+.2f}]"
            rho = f"{s['rho']:+.3f} (p {s['p']:.3g}, 95% CI {ci})"
        print(f"{group}: Spearman(pair score, Graft gain) = {rho}, n = {s['n']}")
    print(f"wrote {args.out}/study.json and {args.out}/study.md")
    return 0


__all__ = ["add_parser", "cmd_study"]
