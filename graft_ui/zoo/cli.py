"""`python -m graft_ui zoo ...` and `python -m graft_ui eval ...`.

    python -m graft_ui zoo build [--profile full|ci] [--force] [--dir DIR]
    python -m graft_ui zoo list [--profile full|ci] [--dir DIR] [--json]
    python -m graft_ui eval --model base --model math-lora [--model FOLDER ...]
                            [--zoo DIR | --manifest FILE | --profile P] [--limit N] [--out DIR]
    python -m graft_ui eval --methods --experts math-lora code-lora [--method graft ...] [--out DIR]

`eval` scores each model on every domain's held-out split and writes results.json and
results.md (rows = models, columns = domains + mean). `--methods` first fuses the experts
with every registered merge method at its defaults (graft_ui.models.merge.run_recipe),
then scores base, the experts and each fused model in one table.
"""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path

log = logging.getLogger(__name__)


def add_parser(subparsers) -> None:
    from graft_ui.zoo.profiles import PROFILES

    profiles = sorted(PROFILES)
    zoo = subparsers.add_parser("zoo", help="build or list the offline demo zoo",
                                description="The offline demo zoo (tiny Qwen2-VL + four domain experts).")
    zsub = zoo.add_subparsers(dest="zoo_command", metavar="SUBCOMMAND")
    b = zsub.add_parser("build", help="build the zoo (seeded, with progress)")
    b.add_argument("--profile", choices=profiles, default="full")
    b.add_argument("--force", action="store_true", help="rebuild even if it exists")
    b.add_argument("--dir", help="build here instead of $GRAFT_ZOO_DIR/<profile> or ~/.cache/graft_ui/zoo/<profile>")
    b.add_argument("--quiet", action="store_true", help="no progress bar")
    b.set_defaults(func=cmd_zoo_build)
    ls = zsub.add_parser("list", help="print the zoo manifest")
    ls.add_argument("--profile", choices=profiles, default="full")
    ls.add_argument("--dir", help="a zoo folder (default: the profile's cache folder)")
    ls.add_argument("--json", action="store_true", help="machine-readable output")
    ls.set_defaults(func=cmd_zoo_list)
    zoo.set_defaults(func=lambda args: (zoo.print_help(), 2)[1])

    ev = subparsers.add_parser("eval", help="score models on the zoo's mini-benchmarks",
                               description="Greedy answers on each domain's held-out split, scored exactly.")
    ev.add_argument("--model", action="append", default=[], metavar="SPEC",
                    help="manifest model name (base, math-lora, ...) or a folder (full checkpoint or adapter); repeatable")
    src = ev.add_mutually_exclusive_group()
    src.add_argument("--zoo", metavar="DIR", help="zoo folder (holding manifest.yaml)")
    src.add_argument("--manifest", metavar="FILE", help="any manifest (YAML/JSON) naming a base, experts and datasets")
    src.add_argument("--profile", choices=profiles, help="use (building if needed) this zoo profile; default full")
    ev.add_argument("--domains", nargs="+", metavar="DOMAIN", help="only these domains (default: all in the manifest)")
    ev.add_argument("--limit", type=int, help="first N samples of each eval split")
    ev.add_argument("--out", metavar="DIR", help="output folder (default runs/eval-<time>)")
    ev.add_argument("--device", default="cpu", help="cpu, cuda or auto (default cpu)")
    ev.add_argument("--batch-size", type=int, default=16)
    ev.add_argument("--outputs", action="store_true", help="also store every completion in results.json")
    ev.add_argument("--methods", action="store_true",
                    help="fuse --experts with every registered method (defaults) and score them all")
    ev.add_argument("--experts", nargs="+", metavar="NAME", help="experts to fuse with --methods, in fusion order")
    ev.add_argument("--method", action="append", metavar="NAME", help="with --methods: only these methods (repeatable)")
    ev.add_argument("--quiet", action="store_true", help="no progress bar")
    ev.set_defaults(func=cmd_eval)


# ---------------------------------------------------------------- zoo


def _zoo_path(args) -> Path:
    from graft_ui.zoo import zoo_dir

    return Path(args.dir).expanduser() if getattr(args, "dir", None) else zoo_dir(args.profile)


def cmd_zoo_build(args) -> int:
    from graft_ui.zoo import ensure_zoo, is_built
    from graft_ui.zoo.build import BUILD_INFO, build_zoo

    t = time.time()
    if args.dir:
        path = Path(args.dir).expanduser()
        if is_built(path) and not args.force:
            print(f"zoo already built: {path} (use --force to rebuild)")
            return 0
        path = build_zoo(path, args.profile, force=True, progress=not args.quiet)
    else:
        path = ensure_zoo(args.profile, force=args.force, progress=not args.quiet)
    info = json.loads((path / BUILD_INFO).read_text())
    print(f"zoo ({info['profile']}) ready at {path}  [built in {info['seconds']:.0f} s; this command {time.time() - t:.0f} s]")
    if info.get("self_check"):
        print((path / "self_check.md").read_text())
    return 0


def zoo_listing(path: Path) -> dict:
    """The manifest as JSON-able dict, with each expert's eval split, plus build info."""
    from graft_ui.models.manifest import load_manifest
    from graft_ui.zoo.build import BUILD_INFO

    m = load_manifest(path)
    info_path = Path(path) / BUILD_INFO
    info = json.loads(info_path.read_text()) if info_path.is_file() else {}
    experts = []
    for e in m.experts:
        ds = m.datasets.get(e.domain) if e.domain else None
        experts.append({"name": e.name, "domain": e.domain, "kind": e.kind, "path": e.path,
                        "eval": ds.eval if ds else None, "train": ds.train if ds else None})
    return {
        "zoo": str(Path(path).resolve()),
        "manifest": m.source,
        "name": m.name,
        "base": {"name": m.base.name, "path": m.base.path, "kind": m.base.kind},
        "experts": experts,
        "datasets": {d: {"eval": v.eval, "train": v.train} for d, v in m.datasets.items()},
        "build": {k: info.get(k) for k in ("profile", "seed", "seconds", "built_at", "parameters", "versions") if k in info},
    }


def cmd_zoo_list(args) -> int:
    from graft_ui.zoo import is_built

    path = _zoo_path(args)
    if not is_built(path):
        raise FileNotFoundError(
            f"no {args.profile} zoo at {str(path)!r}; build it with `python -m graft_ui zoo build --profile {args.profile}`")
    listing = zoo_listing(path)
    if args.json:
        print(json.dumps(listing, indent=2))
        return 0
    print(f"zoo {listing['name']} at {listing['zoo']}")
    print(f"  base     {listing['base']['path']}")
    for e in listing["experts"]:
        print(f"  {e['name']:<14} {e['kind']:<5} {e['domain']:<8} {e['path']}")
    for d, v in listing["datasets"].items():
        print(f"  data {d:<9} eval {v['eval']}")
    return 0


# ---------------------------------------------------------------- eval


def _manifest(args):
    from graft_ui.models.manifest import load_manifest
    from graft_ui.zoo import ensure_zoo

    if args.manifest:
        return load_manifest(args.manifest)
    if args.zoo:
        return load_manifest(args.zoo)
    return load_manifest(ensure_zoo(args.profile or "full", progress=not args.quiet))


def fuse_with_methods(manifest, experts: list[str], out_dir: Path, methods: list[str] | None = None,
                      device: str = "cpu", seed: int = 0) -> tuple[dict[str, str], dict[str, str]]:
    """Fuse `experts` with each registered method at its defaults; ({method: folder}, {method: error})."""
    from graft_ui.merging.registry import METHODS, get_method
    from graft_ui.recipe import ExpertRef, Output, Recipe

    try:
        from graft_ui.models.merge import run_recipe
    except ImportError as exc:
        raise ValueError(f"--methods needs graft_ui.models.merge.run_recipe, which is not available ({exc})") from None
    entries = [manifest.expert(n) for n in experts]
    if len(entries) < 2:
        raise ValueError(f"--methods fuses two or more experts; got {experts}")
    get_method(methods[0] if methods else "graft")  # importing graft_ui.merging registers every method
    names = methods or sorted(METHODS)
    unknown = sorted(set(names) - set(METHODS))
    if unknown:
        raise ValueError(f"unknown merge method(s) {unknown}; known: {sorted(METHODS)}")
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
            result = run_recipe(recipe, target)
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


def cmd_eval(args) -> int:
    from transformers.utils import logging as hf_logging

    from graft_ui.zoo.evaluate import evaluate_specs, results_markdown, write_results

    hf_logging.disable_progress_bar()  # one eval bar, not one "Loading weights" bar per model

    manifest = _manifest(args)
    out = Path(args.out) if args.out else Path("runs") / time.strftime("eval-%Y%m%d-%H%M%S")
    specs, labels, errors = list(args.model), [None] * len(args.model), {}
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
                             labels=labels)
    for name, err in errors.items():
        results["models"][name] = {"error": err}
    results["manifest"] = manifest.source
    if args.methods:
        results["fused_experts"] = list(args.experts)
    js, md = write_results(results, out)
    print(results_markdown(results), end="")
    print(f"\nwrote {js} and {md}")
    return 0
