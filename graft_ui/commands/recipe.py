"""`python -m graft_ui recipe convert IN --to mergekit|graft [--out FILE]`: recipes <-> mergekit configs."""

from __future__ import annotations

import argparse

from graft_ui.atomic import write_bytes
from graft_ui.mergekit_config import dump_mergekit, load_any


def add_parser(subparsers) -> None:
    p = subparsers.add_parser("recipe", help="recipe tools (convert to and from mergekit configs)")
    sub = p.add_subparsers(dest="recipe_command", metavar="ACTION", required=True)
    c = sub.add_parser("convert", help="convert a recipe to a mergekit config or back",
                       description="Read IN (a recipe or a mergekit config, told apart by its keys) and write it "
                       "as --to mergekit (mergekit's defaults written out) or graft (a recipe, defaults filled).")
    c.add_argument("input", help="recipe or mergekit config YAML")
    c.add_argument("--to", required=True, choices=("mergekit", "graft"))
    c.add_argument("--out", help="write here instead of printing")
    c.set_defaults(func=convert)


def convert(args: argparse.Namespace) -> int:
    recipe = load_any(args.input)
    text = dump_mergekit(recipe) if args.to == "mergekit" else recipe.to_yaml()
    if args.out:
        write_bytes(args.out, text.encode())
    else:
        print(text, end="")
    return 0
