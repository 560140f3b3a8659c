"""`python -m graft_ui methods`: list the merge methods, their parameters and papers."""

from __future__ import annotations

import argparse
import json

from graft_ui.merging.registry import base_unless, describe, get_method


def _fmt_param(p: dict) -> str:
    if p.get("kind") == "choice":
        rng = "|".join(p["choices"])
    elif "above" in p:
        rng = f"({p['above']}, {p.get('high', 'inf')}]"
    elif "low" in p or "high" in p:
        rng = f"[{p.get('low', '-inf')}, {p.get('high', 'inf')}]"
    else:
        rng = p.get("kind", "")
    return f"    {p['name']:<12} default={p['default']!r:<18} {rng}  {p.get('help', '')}".rstrip()


def run(args: argparse.Namespace) -> int:
    methods = describe(_check(args.names) if args.names else None)
    if args.json:
        print(json.dumps(methods, indent=2))
        return 0
    for m in methods:
        base = "" if m["needs_base"] else f"  (no base needed{base_unless(m)})"
        print(f"{m['name']}: {m['summary']}{base}\n  paper: {m['paper']}")
        for p in m["params"]:
            print(_fmt_param(p))
        if not m["params"]:
            print("    (no parameters)")
    return 0


def _check(names: list[str]) -> list[str]:
    return [get_method(n).name for n in names]


def add_parser(subparsers) -> None:
    p = subparsers.add_parser("methods", help="list merge methods and their parameters")
    p.add_argument("names", nargs="*", help="only these methods")
    p.add_argument("--json", action="store_true", help="machine-readable output")
    p.set_defaults(func=run)
