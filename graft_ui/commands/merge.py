"""`python -m graft_ui merge RECIPE.yaml --out DIR [--overwrite] [--dry-run] [--device D]`."""

from __future__ import annotations

import argparse
import json
import logging

from graft_ui.commands.common import add_manifest_args, load_manifest_arg
from graft_ui.fusion import fuse_recipe
from graft_ui.mergekit_config import load_any

log = logging.getLogger(__name__)


def add_parser(subparsers) -> None:
    p = subparsers.add_parser(
        "merge",
        help="fuse the experts of a recipe into a model or adapter folder",
        description="Fuse the experts named in RECIPE.yaml (a Graft Studio recipe or a mergekit config, told "
        "apart by its merge_method key). Writes the fused model/adapter, "
        "DIR/recipe.yaml (resolved, with the device used) and DIR/gates.json (per-module stats).",
    )
    p.add_argument("recipe", help="recipe YAML file, or a mergekit config")
    p.add_argument("--out", help="output folder (must not exist unless --overwrite)")
    p.add_argument("--overwrite", action="store_true", help="replace an existing output folder")
    p.add_argument("--dry-run", action="store_true", help="list what would be fused; write nothing")
    p.add_argument("--device", help="override the recipe's device: auto, cpu, cuda or cuda:N")
    p.add_argument("--json", action="store_true", help="print the result as JSON")
    add_manifest_args(p, manifest_help="manifest whose expert names the recipe may use (and whose datasets "
                      "feed phi calibration)")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    recipe = load_any(args.recipe)
    manifest = load_manifest_arg(args)
    if manifest is not None:
        recipe = recipe.resolve_names(manifest)
    if args.device:
        recipe = recipe.replace(device=args.device)
    if not args.dry_run and not args.out:
        raise ValueError("--out DIR is required (or use --dry-run)")
    result = fuse_recipe(recipe, args.out, overwrite=args.overwrite, dry_run=args.dry_run, manifest=manifest)
    if args.json:
        data = result.summary()
        if args.dry_run:
            data["plan"] = list(result.modules.values())
        print(json.dumps(data, indent=1))
        return 0
    if args.dry_run:
        print(f"dry run: {result.method} on {len(recipe.experts)} {result.experts_kind} expert(s), "
              f"output {result.output_kind}, device {result.device_label}")
        print(f"{len(result.fused)} module(s) would be fused:")
        for row in result.modules.values():
            if row.get("action", "fuse") == "fuse":
                extra = f" {row['mode']} rank {row['ranks']} -> {row['rank_out']}" if "mode" in row else ""
                print(f"  {row['module']} {row['shape']}{extra}")
        print(f"{len(result.copied)} tensor(s)/module(s) taken from the first expert")
    else:
        print(f"wrote {result.out_dir} ({result.output_kind}) in {result.seconds:.1f} s on {result.device_label}: "
              f"{len(result.fused)} module(s) fused, {len(result.copied)} copied from the first expert")
    for note in result.notes:
        print(f"note: {note}")
    return 0
