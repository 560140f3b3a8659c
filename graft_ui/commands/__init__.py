"""Headless entry point: `python -m graft_ui COMMAND ...`, one module per command.

Each command is `graft_ui/commands/<command>.py` exposing `add_parser(subparsers)`, which
registers a sub-parser whose `func(args) -> int` does the work; `COMMANDS` below lists them,
so a new command is one module plus one line here. Modules are imported only for the
command that runs, so `methods` does not pay for importing transformers. Commands that take
a manifest share `common.add_manifest_args` / `common.load_manifest_arg`.
"""

from __future__ import annotations

import argparse
import errno
import importlib
import logging
import os
import sys

from graft_ui.checks import shorten
from graft_ui.logs import setup_logging

# command -> module exposing add_parser(subparsers); imported only when needed
COMMANDS: dict[str, str] = {
    "merge": "graft_ui.commands.merge",
    "methods": "graft_ui.commands.methods",
    "recipe": "graft_ui.commands.recipe",
    "zoo": "graft_ui.commands.zoo",
    "eval": "graft_ui.commands.eval",
    "analyze": "graft_ui.commands.analyze",
    "correlate": "graft_ui.commands.correlate",
    "votes": "graft_ui.commands.votes",
    "study": "graft_ui.commands.study",
    "report": "graft_ui.commands.report",
    "serve-plan": "graft_ui.commands.serve_plan",
    "advise": "graft_ui.commands.advise",
    "forecast": "graft_ui.commands.forecast",
    "tune": "graft_ui.commands.tune",
}


def build_parser(command: str | None = None) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m graft_ui", description=__doc__.splitlines()[0])
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    modules = [COMMANDS[command]] if command in COMMANDS else sorted(set(COMMANDS.values()))
    for module in dict.fromkeys(modules):
        importlib.import_module(module).add_parser(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    command = next((a for a in argv if not a.startswith("-")), None)
    parser = build_parser(command)
    args = parser.parse_args(argv)
    setup_logging(logging.DEBUG if args.verbose else logging.INFO)
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    try:
        return int(args.func(args) or 0)
    except (ValueError, FileNotFoundError, FileExistsError, KeyError) as exc:
        # library errors name the bad value; show them without a traceback
        logging.getLogger("graft_ui").error("%s", exc)
        return 1
    except OSError as exc:
        # the system refused (permissions, a full disk, a read-only or too long path): say so in one line
        logging.getLogger("graft_ui").error("%s", os_error_message(exc))
        return 2


def os_error_message(exc: OSError) -> str:
    """One line for an OSError: what failed, on which path, and what to do."""
    reason = exc.strerror or str(exc)
    where = f" on {shorten(exc.filename)}" if exc.filename else ""
    advice = {
        errno.EACCES: "check the permissions of that path or choose another location",
        errno.EPERM: "check the permissions of that path or choose another location",
        errno.EROFS: "the filesystem is read-only: choose another location",
        errno.ENOSPC: "free some disk space or choose another location",
        errno.ENAMETOOLONG: "use a shorter path",
    }.get(exc.errno, "check the path and try again")
    return f"{reason}{where}: {advice}"
