"""`python -m graft_ui eval ...`: score models on the zoo's mini-benchmarks.

    python -m graft_ui eval --model base --model math-lora [--model FOLDER ...]
                            [--zoo PROFILE_OR_DIR | --manifest FILE] [--limit N] [--out DIR]
    python -m graft_ui eval --methods --experts math-lora code-lora [--method graft ...] [--out DIR] [--ray auto|ADDRESS]

`eval` scores each model on every domain's held-out split and writes results.json and
results.md (rows = models, columns = domains + mean). `--methods` first fuses the experts
with every registered merge method at its defaults (graft_ui.models.merge.run_recipe),
then scores base, the experts and each fused model in one table; with `--ray`, each model (a
method's fusion + its evaluation, or a base/expert evaluation) is one task on a Ray cluster.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path

from transformers.utils import logging as hf_logging

from graft_ui.commands.common import add_manifest_args, load_manifest_arg
from graft_ui.fanout import Backend, run_jobs
from graft_ui.merging.registry import METHODS, get_method
from graft_ui.models import merge
from graft_ui.models.manifest import load_manifest
from graft_ui.recipe import ExpertRef, Output, Recipe
from graft_ui.zoo.evaluate import evaluate_specs, results_markdown, write_results

log = logging.getLogger(__name__)


def add_parser(subparsers) -> None:
    ev = subparsers.add_parser("eval", help="score models on the zoo's mini-benchmarks",
                               description="Greedy answers on each domain's held-out split, scored exactly.")
    ev.add_argument("--model", action="append", default=[], metavar="SPEC",
                    help="manifest model name (base, math-lora, ...) or a folder (full checkpoint or adapter); repeatable")
    add_manifest_args(ev, manifest_help="any manifest (YAML/JSON) naming a base, experts and datasets "
                      "(default: the full zoo, built if missing)")
    ev.add_argument("--domains", nargs="+", metavar="DOMAIN", help="only these domains (default: all in the manifest)")
    ev.add_argument("--limit", type=int, help="first N samples of each eval split")
    ev.add_argument("--out", metavar="DIR", help="output folder (default runs/eval-<time>)")
    ev.add_argument("--device", default="cpu", help="cpu, cuda or auto (default cpu)")
    ev.add_argument("--batch-size", type=int, default=16)
    ev.add_argument("--allow-base-mismatch", action="store_true",
                    help="load an adapter on the manifest's base even when its adapter_config.json names another base")
    ev.add_argument("--outputs", action="store_true", help="also store every completion in results.json")
    ev.add_argument("--methods", action="store_true",
                    help="fuse --experts with every registered method (defaults) and score them all")
    ev.add_argument("--experts", nargs="+", metavar="NAME", help="experts to fuse with --methods, in fusion order")
    ev.add_argument("--method", action="append", metavar="NAME", help="with --methods: only these methods (repeatable)")
    ev.add_argument("--ray", metavar="auto|ADDRESS",
                    help="with --methods: one Ray task per fusion + evaluation (and per base/expert evaluation) on "
                         "this cluster (needs requirements-ray.txt; the zoo at the same path on every node)")
    ev.add_argument("--quiet", action="store_true", help="no progress bar")
    ev.set_defaults(func=cmd_eval)


def method_names(methods: list[str] | None) -> list[str]:
    """The methods asked for (None: the defaults; mergekit's family only when named); an unknown one is named."""
    get_method(methods[0] if methods else "graft")  # importing graft_ui.merging registers every method
    names = methods or sorted(n for n, m in METHODS.items() if m.in_defaults)
    unknown = sorted(set(names) - set(METHODS))
    if unknown:
        raise ValueError(f"unknown merge method(s) {unknown}; known: {sorted(METHODS)}")
    return names


def fuse_with_methods(manifest, experts: list[str], out_dir: Path, methods: list[str] | None = None,
                      device: str = "cpu", seed: int = 0) -> tuple[dict[str, str], dict[str, str]]:
    """Fuse `experts` with each registered method at its defaults; ({method: folder}, {method: error})."""
    entries = [manifest.expert(n) for n in experts]
    if len(entries) < 2:
        raise ValueError(f"--methods fuses two or more experts; got {experts}")
    names = method_names(methods)
    kinds = {e.kind for e in entries}
    if len(kinds) > 1:
        raise ValueError(f"--experts mixes LoRA and full experts ({', '.join(f'{e.name}={e.kind}' for e in entries)}); "
                         "fuse experts of one kind")
    kind = "adapter" if kinds == {"lora"} else "full"
    fused, errors = {}, {}
    for name in names:
        target = out_dir / "fused" / name
        try:
            recipe = Recipe(
                method=name,
                base=manifest.base.path,
                experts=tuple(ExpertRef(path=e.path, name=e.name) for e in entries),
                output=Output(kind=kind),
                seed=seed,
                device=device,
                name=f"{name}:{'+'.join(experts)}",
            )
            result = merge.run_recipe(recipe, target)
            path = None
            for attr in ("out_dir", "output_dir", "path"):
                path = getattr(result, attr, None) or (result.get(attr) if isinstance(result, dict) else None)
                if path:
                    break
            fused[name] = str(path or target)
        except Exception as exc:  # one failing method must not sink the whole table
            log.error("method %s failed: %s", name, exc)
            errors[name] = f"{type(exc).__name__}: {exc}"
    return fused, errors


def eval_job(job: dict, report) -> dict:
    """One model of `eval --methods --ray` (fanout job): fuse `method` if given, then score it; {label: row}."""
    manifest = load_manifest(job["manifest"])
    label, spec = job["label"], job.get("spec")
    if job.get("method"):
        fused, errors = fuse_with_methods(manifest, job["experts"], Path(job["out"]), [job["method"]],
                                          device=job["device"])
        if errors:
            report({"model": label, "error": errors[label]})
            return {label: {"error": errors[label]}}
        spec = fused[label]
    res = evaluate_specs([spec], manifest, domains=job["domains"], limit=job["limit"], device=job["device"],
                         batch_size=job["batch_size"], keep_outputs=job["outputs"], labels=[label],
                         allow_base_mismatch=job["allow_base_mismatch"])
    report({"model": label, "mean": res["models"][label]["mean"]})
    return res["models"]


def eval_on_ray(args, manifest, out: Path) -> dict:
    """`eval --methods --ray`: every model (given, base, experts, each method's fusion) as one Ray task."""
    common = {"manifest": str(Path(manifest.source).resolve()), "experts": list(args.experts),
              "out": str(out.resolve()), "device": args.device, "limit": args.limit, "batch_size": args.batch_size,
              "outputs": args.outputs, "allow_base_mismatch": args.allow_base_mismatch,
              "domains": list(args.domains or manifest.datasets)}
    given = list(dict.fromkeys([*args.model, manifest.base.name, *args.experts]))
    jobs = [{**common, "label": s, "spec": s} for s in given]
    jobs += [{**common, "label": m, "method": m} for m in method_names(args.method)]
    rows: dict[str, dict] = {}
    run_jobs(jobs, eval_job, Backend(ray=args.ray, gpus=0 if args.device == "cpu" else None),
             on_event=lambda ev: log.info("%s: %s", ev["model"], ev.get("error") or f"mean {ev['mean']:.1f}"),
             on_result=lambda job, res: rows.update(res))
    return {"domains": common["domains"], "limit": args.limit, "models": {j["label"]: rows[j["label"]] for j in jobs}}


def cmd_eval(args) -> int:
    hf_logging.disable_progress_bar()  # one eval bar, not one "Loading weights" bar per model

    manifest = load_manifest_arg(args, default_zoo="full", progress=not args.quiet)
    out = Path(args.out) if args.out else Path("runs") / time.strftime("eval-%Y%m%d-%H%M%S")
    specs, labels, errors = list(args.model), [None] * len(args.model), {}
    if args.ray and not (args.methods and args.experts):
        raise ValueError("--ray applies to --methods --experts NAME NAME [...]")
    if args.ray:
        return _write(eval_on_ray(args, manifest, out), args, manifest, out)
    if args.methods:
        if not args.experts:
            raise ValueError("--methods needs --experts NAME NAME [...]")
        fused, errors = fuse_with_methods(manifest, args.experts, out, args.method, device=args.device)
        for extra in [manifest.base.name, *args.experts]:
            if extra not in specs:
                specs.append(extra)
                labels.append(extra)
        specs += list(fused.values())
        labels += list(fused)
    elif args.experts or args.method:
        raise ValueError("--experts and --method only apply with --methods")
    if not specs:
        raise ValueError("nothing to evaluate: give --model SPEC (repeatable) or --methods --experts ...")
    results = evaluate_specs(specs, manifest, domains=args.domains, limit=args.limit, device=args.device,
                             batch_size=args.batch_size, progress=not args.quiet, keep_outputs=args.outputs,
                             labels=labels, allow_base_mismatch=args.allow_base_mismatch)
    for name, err in errors.items():
        results["models"][name] = {"error": err}
    return _write(results, args, manifest, out)


def _write(results: dict, args, manifest, out: Path) -> int:
    results["manifest"] = manifest.source
    if args.methods:
        results["fused_experts"] = list(args.experts)
    js, md = write_results(results, out)
    print(results_markdown(results), end="")
    print(f"\nwrote {js} and {md}")
    return 0
