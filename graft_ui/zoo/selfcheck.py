"""The zoo build's self-check: is the zoo in the regime where merging works?

After a build it scores the base and every expert on every domain's held-out split, fuses
two pairs (math + code, LoRA and full) with Graft and task arithmetic at their defaults and
scores those on the pair's domains, then

- checks the regime targets (`profiles.TARGETS`): the base between 10% and 65% on every
  domain; each expert >= +25 points over the base on its own domain and no more than 10
  points below it elsewhere; the violations are listed (the full profile fails on any);
- picks the showcase: per domain, held-out items the domain's experts answer correctly
  (preferring ones the base gets wrong), written to `showcase.json` for Chat and Arena's
  example prompts, so a demo shows each expert at its best;
- writes `self_check.md` (the tables) into the zoo.
"""

from __future__ import annotations

import json
import logging
import shutil
from pathlib import Path

from graft_ui.zoo.profiles import KINDS, TARGETS

log = logging.getLogger(__name__)

SHOWCASE = "showcase.json"
SELF_CHECK_MD = "self_check.md"
FUSION_PAIRS = (("math", "code"),)  # domains of the `a` experts fused, per kind
FUSION_METHODS = ("graft", "task_arithmetic")
SHOWCASE_PER_DOMAIN = 3


def check_targets(models: dict, experts: list, targets: dict = TARGETS) -> list[str]:
    """Sentences naming each missed regime target (empty when the zoo is in the regime)."""
    base = models["base"]["domains"]
    missed = []
    for d, row in base.items():
        if not targets["base_min"] <= row["accuracy"] <= targets["base_max"]:
            missed.append(f"base scores {row['accuracy']:.1f}% on {d}, outside "
                          f"[{targets['base_min']:.0f}, {targets['base_max']:.0f}]")
    for e in experts:
        gain, drops = expert_deltas(models, e.name, e.domain)
        if gain < targets["own_gain"]:
            missed.append(f"{e.name} gains {gain:+.1f} points over the base on {e.domain} "
                          f"(target >= +{targets['own_gain']:.0f})")
        for d, drop in drops.items():
            if drop > targets["other_drop"]:
                missed.append(f"{e.name} loses {drop:.1f} points against the base on {d} "
                              f"(target <= {targets['other_drop']:.0f})")
    return missed


def expert_deltas(models: dict, name: str, domain: str) -> tuple[float, dict[str, float]]:
    """(points `name` gains over the base on its own `domain`, {other domain: points it loses there})."""
    base, own = models["base"]["domains"], models[name]["domains"]
    return (own[domain]["accuracy"] - base[domain]["accuracy"],
            {d: base[d]["accuracy"] - row["accuracy"] for d, row in own.items() if d != domain})


def target_margins(models: dict, experts: list, targets: dict = TARGETS) -> dict[str, dict]:
    """The tightest cell of each regime target: {target: {"margin": points (negative = missed), "where"}}.

    A target met by one item is met by luck (another CPU's rounding moves cells by several points),
    so the self-check reports how far each target is from its limit, not just whether it is met.
    """
    base = models["base"]["domains"]
    cells = {"base above its floor": [(row["accuracy"] - targets["base_min"], f"base on {d}") for d, row in base.items()],
             "base below its ceiling": [(targets["base_max"] - row["accuracy"], f"base on {d}") for d, row in base.items()],
             "own-domain gain": [], "drop elsewhere": []}
    for e in experts:
        gain, drops = expert_deltas(models, e.name, e.domain)
        cells["own-domain gain"].append((gain - targets["own_gain"], f"{e.name} on {e.domain}"))
        cells["drop elsewhere"] += [(targets["other_drop"] - drop, f"{e.name} on {d}") for d, drop in drops.items()]
    return {k: {"margin": round(min(v)[0], 1), "where": min(v)[1]} for k, v in cells.items() if v}


def _question(sample: dict) -> str:
    return next(i["text"] for i in sample["messages"][0]["content"] if i.get("type") == "text")


def _image(sample: dict, data_dir: str) -> str | None:
    rel = next((i["image"] for i in sample["messages"][0]["content"] if i.get("type") == "image"), None)
    return f"{data_dir}/{rel}" if rel else None


def pick_showcase(models: dict, manifest, zoo_dir: Path, per_domain: int = SHOWCASE_PER_DOMAIN) -> list[dict]:
    """Held-out items each domain's experts answer correctly, distinct questions first.

    Ranked by: answered by every expert of the domain, base wrong, then how many experts
    of the domain got it; so the example shows what specialising bought.
    """
    from graft_ui.zoo.domains import read_jsonl

    out = []
    for d, entry in manifest.datasets.items():
        samples = {s["id"]: s for s in read_jsonl(entry.eval)}
        own = [e.name for e in manifest.experts if e.domain == d]
        right: dict[str, list[str]] = {}
        for name, row in models.items():
            for o in row["domains"].get(d, {}).get("outputs", []):
                if o["ok"]:
                    right.setdefault(o["id"], []).append(name)
        ranked = sorted((sid for sid in right if set(right[sid]) & set(own)),
                        key=lambda sid: (-len(set(right[sid]) & set(own)), "base" in right[sid], sid))
        seen_q: set[str] = set()
        picked = []
        for sid in ranked:  # one item per question wording while there are others
            q = _question(samples[sid])
            if q not in seen_q:
                seen_q.add(q)
                picked.append(sid)
            if len(picked) == per_domain:
                break
        data_dir = Path(entry.eval).parent.resolve().relative_to(zoo_dir.resolve()).as_posix()
        for sid in picked:
            s = samples[sid]
            q = _question(s)
            first = q.splitlines()[1] if d == "code" and "\n" in q else q
            out.append({"domain": d, "label": f"{d.capitalize()} · {first[:48]}", "text": q,
                        "image": _image(s, data_dir), "answer": s["answer"], "sample_id": sid,
                        "correct_by": sorted(right[sid])})
    return out


FUSION_WORK = ".self-check"  # in the zoo: the fused models while they are scored


def fusion_jobs() -> list[dict]:
    """The default fusions, FUSION_METHODS of the FUSION_PAIRS' `a` experts per kind, in report order."""
    return [dict(kind=kind, pair=[da, db], method=method)
            for kind in KINDS for da, db in FUSION_PAIRS for method in FUSION_METHODS]


def fuse_and_score(manifest, zoo_dir: Path, kind: str, pair: list[str], method: str) -> tuple[str, dict]:
    """One default fusion, scored on its pair's domains: (label, row)."""
    from graft_ui.models.merge import run_recipe
    from graft_ui.recipe import ExpertRef, Output, Recipe
    from graft_ui.zoo.evaluate import ModelSpec, evaluate_model, load_spec

    names = [f"{d}-{kind}" for d in pair]
    entries = [manifest.expert(n) for n in names]
    label = f"{method}({'+'.join(names)})"
    recipe = Recipe(method=method, base=manifest.base.path,
                    experts=tuple(ExpertRef(path=e.path, name=e.name) for e in entries),
                    output=Output(kind="adapter" if kind == "lora" else "full"), device="cpu", name=label)
    out = Path(zoo_dir) / FUSION_WORK / f"{method}-{kind}-{'-'.join(pair)}"
    try:
        run_recipe(recipe, out)
        spec = ModelSpec(label, str(out), manifest.base.path if kind == "lora" else None)
        model, processor = load_spec(spec, processor_fallback=manifest.base.path)
        row = evaluate_model(model, processor, {d: manifest.dataset(d).eval for d in pair})
    finally:
        shutil.rmtree(out, ignore_errors=True)
    row["experts"] = names
    return label, row


def fusion_task(task: dict) -> dict:
    """A worker's `job: fusion` task: {label: row} of `fuse_and_score`."""
    from graft_ui.models.manifest import load_manifest

    label, row = fuse_and_score(load_manifest(task["manifest"]), Path(task["zoo"]), task["kind"], task["pair"],
                                task["method"])
    return {label: row}


def _run_here(task: dict) -> dict:
    """One self-check task in this process (what a worker's `run_task` does with it)."""
    from graft_ui.zoo.stages import evaluate_task

    return fusion_task(task) if task["job"] == "fusion" else evaluate_task(task)


def _score(zoo_dir: Path, names: list[str], limit: int | None, fusions: bool, workers: int, pool) -> tuple[dict, dict]:
    """(model rows, fusion rows): every model on every domain and the default fusions, inline or
    as worker tasks (one per model or fusion, taken by whichever worker comes free)."""
    from graft_ui.zoo.stages import eval_task, run_tasks

    manifest_path = zoo_dir / "manifest.yaml"
    tasks = [eval_task([n], manifest_path, limit=limit, keep_outputs=True) for n in names]
    if fusions:
        tasks += [dict(job="fusion", zoo=str(zoo_dir), manifest=str(manifest_path), label=f"fusion {j['method']}",
                       **j) for j in fusion_jobs()]
    try:
        results = run_tasks(tasks, workers, pool, here=_run_here)
    finally:
        shutil.rmtree(zoo_dir / FUSION_WORK, ignore_errors=True)
    models, fused = {}, {}
    for r in results[:len(names)]:
        models.update(r)
    for r in results[len(names):]:
        fused.update(r)
    return models, fused


def kept_fraction(fused: dict, experts: list[str], models: dict, manifest) -> dict[str, float]:
    """Fused accuracy on each expert's own domain as a fraction of that expert's own accuracy."""
    kept = {}
    for n in experts:
        d = manifest.expert(n).domain
        own = models[n]["domains"][d]["accuracy"]
        kept[n] = round(fused["domains"][d]["accuracy"] / own, 3) if own else 0.0
    return kept


def self_check(zoo_dir: str | Path, limit: int | None = None, fusions: bool = True, workers: int = 1,
               pool=None) -> dict:
    """Score the zoo (see the module doc); writes self_check.md and showcase.json into it.
    `workers` > 1 spreads the models' and fusions' scoring over that many worker processes (those
    of `pool`, a graft_ui.zoo.pool.WorkerPool, when given)."""
    from graft_ui.models.manifest import load_manifest

    zoo_dir = Path(zoo_dir)
    manifest = load_manifest(zoo_dir / "manifest.yaml")
    datasets = {d: manifest.dataset(d).eval for d in manifest.datasets}
    names = ["base", *[e.name for e in manifest.experts]]
    models, fused = _score(zoo_dir, names, limit, fusions, workers, pool)
    report: dict = {"domains": list(datasets), "models": {}, "fusions": {}}
    report["missed_targets"] = check_targets(models, list(manifest.experts))
    report["margins"] = target_margins(models, list(manifest.experts))
    report["gain_over_base"] = {e.name: round(models[e.name]["domains"][e.domain]["accuracy"]
                                              - models["base"]["domains"][e.domain]["accuracy"], 1)
                                for e in manifest.experts}
    showcase = pick_showcase(models, manifest, zoo_dir)
    missing = sorted(set(datasets) - {item["domain"] for item in showcase})
    if missing:  # a showcase with a domain missing is worse than the app's curated prompts
        log.warning("self-check: no held-out item of %s is answered by its experts; no showcase", missing)
        showcase = []
    for row in models.values():  # the per-item outputs served the showcase; keep the table small
        for d in row["domains"].values():
            d.pop("outputs", None)
    report["models"] = models
    if fusions:
        for label, row in fused.items():
            row["kept"] = kept_fraction(row, row["experts"], models, manifest)
        report["fusions"] = fused
    (zoo_dir / SHOWCASE).write_text(json.dumps(showcase, indent=1))
    (zoo_dir / SELF_CHECK_MD).write_text(self_check_markdown(report))
    for name, gain in report["gain_over_base"].items():
        log.info("self-check %s: %+.1f points over base on its domain", name, gain)
    for line in report["missed_targets"]:
        log.warning("self-check: %s", line)
    return report


def self_check_markdown(report: dict) -> str:
    from graft_ui.zoo.evaluate import results_markdown

    parts = ["# Zoo self-check\n", "Held-out accuracy (%) of the base and every expert on every domain.\n",
             results_markdown({"domains": report["domains"], "models": report["models"]})]
    if report.get("fusions"):
        parts.append("\nDefault fusions, scored on the pair's domains; kept = fused accuracy on each "
                     "expert's own domain / the expert's.\n")
        parts.append("| fusion | " + " | ".join(report["domains"]) + " | kept |")
        parts.append("|" + "---|" * (len(report["domains"]) + 2))
        for label, row in report["fusions"].items():
            cells = [f"{row['domains'][d]['accuracy']:.1f}" if d in row["domains"] else "-" for d in report["domains"]]
            kept = ", ".join(f"{k} {v:.2f}" for k, v in row["kept"].items())
            parts.append(f"| {label} | " + " | ".join(cells) + f" | {kept} |")
    if report.get("margins"):
        n = min((row["n"] for m in report["models"].values() for row in m["domains"].values()), default=0)
        parts.append(f"\nMargins to the regime targets (points; {n} items per domain, one item = "
                     f"{100 / max(1, n):.2f} points): " + "; ".join(
                         f"{k} {v['margin']:+.1f} ({v['where']})" for k, v in report["margins"].items()) + ".")
    missed = report.get("missed_targets") or []
    parts.append("\nRegime targets: " + ("all met." if not missed else "MISSED:\n\n" + "\n".join(f"- {m}" for m in missed)))
    return "\n".join(parts) + "\n"
