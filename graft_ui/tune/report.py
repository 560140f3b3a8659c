"""Write a tuning run: tune.json (everything), tune.md (held-out table first), the recipes, the Pareto figure."""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Mapping

import yaml

from graft_ui.atomic import write_bytes
from graft_ui.tune.plots import pareto_figure
from graft_ui.tune.tuner import values_text

log = logging.getLogger(__name__)


def _atomic(path: Path, text: str) -> None:
    write_bytes(path, text.encode())  # a crash leaves the old file or the new one


def heldout_table(result: Mapping) -> str:
    rows = result["heldout"]["rows"]
    doms = list(result["splits"])
    head = "| model | role | " + " | ".join(doms) + " | mean |\n|---|---|" + "---|" * (len(doms) + 1)
    body = [f"| {r['label']} | {r['role']} | " + " | ".join(f"{r['accuracy'][d]:.1f}" for d in doms)
            + f" | **{r['mean']:.1f}** |" for r in rows]
    return "\n".join([head, *body])


def markdown(result: Mapping, command: str | None = None) -> str:
    cfg, best = result["config"], result["best"]
    n = {d: s["n"] for d, s in result["splits"].items()}
    lines = ["# Tuning run", ""]
    if command:
        lines += ["```bash", command, "```", ""]
    lines += [f"- method **{result['method']}** on {' + '.join(result['experts'])}; dev domains "
              f"{', '.join(f'{d} ({k} items)' for d, k in n.items())}, carved from the train split "
              "(tune/splits.py: disjoint from the held-out eval split, checked)",
              f"- sampler: optuna TPE, seed {cfg['seed']}; {len(result['trials'])} trial(s) in "
              f"{result['search_seconds']:.0f} s ({result['stopped']}); budget {cfg['budget_s']:.0f} s (a trial that "
              "has started runs to its end)",
              f"- held-out: {'all' if not cfg['heldout_limit'] else 'first ' + str(cfg['heldout_limit'])} eval items "
              f"per domain, scored in {result['heldout']['seconds']:.0f} s",
              "", "## Held-out (the numbers that count)", "", heldout_table(result), ""]
    if result.get("verdict"):
        lines += [f"**{result['verdict'][0].upper() + result['verdict'][1:]}.** The tuned recipe is the best trial "
                  "on dev; the held-out numbers were not used to choose it.", ""]
    lines += ["Caveat: the experts were fine-tuned on the train split the dev split is carved from, so dev "
              "accuracies are optimistic; compare held-out numbers only.", ""]
    for note in result.get("notes") or []:
        lines.append(f"- note: {note}")
    lines += ["", "## Trials (dev accuracy %)", "",
              "| trial | " + " | ".join(n) + " | mean | seconds | values |", "|---|" + "---|" * (len(n) + 3)]
    for t in result["trials"]:
        accs = " | ".join(f"{t['dev'][d]:.1f}" if d in t["dev"] else "—" for d in n)
        mean = "failed" if t["mean"] is None else f"{t['mean']:.1f}"
        tag = " (defaults)" if t["default"] else (" (best)" if best and t["number"] == best["number"] else "")
        lines.append(f"| {t['number']}{tag} | {accs} | {mean} | {t['seconds']:.1f} | {values_text(t['values'])} |")
    return "\n".join(lines) + "\n"


def write(result: dict, out_dir: str | Path, command: str | None = None) -> dict[str, Path]:
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    paths = {"json": out / "tune.json", "markdown": out / "tune.md", "default": out / "default-recipe.yaml",
             "pareto": out / "pareto.html"}
    _atomic(paths["json"], json.dumps(result, indent=1, allow_nan=False) + "\n")
    _atomic(paths["markdown"], markdown(result, command))
    _atomic(paths["default"], yaml.safe_dump(result["default_recipe"], sort_keys=False))
    if result.get("tuned_recipe"):
        paths["tuned"] = out / "tuned-recipe.yaml"
        _atomic(paths["tuned"], yaml.safe_dump(result["tuned_recipe"], sort_keys=False))
    fig = pareto_figure(result["trials"], list(result["splits"]), result["experts_dev"],
                        best=(result["best"] or {}).get("number"))
    fig.write_html(paths["pareto"], include_plotlyjs="directory")
    log.info("wrote %s", ", ".join(str(p) for p in paths.values()))
    return paths
