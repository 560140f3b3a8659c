"""What a stakeholder report shows, computed from a fused variant's folder (no HTML here).

`gather(manifest, folder)` reads the variant's recipe.yaml and gates.json, analyses its
experts on their target domains (graft_ui.analysis), scores base, experts and the fused
model on those domains' held-out splits (graft_ui.zoo.evaluate, keeping every answer),
picks a handful of samples for side-by-side answers, and fits the current leaderboard
from the arena's votes (graft_ui.arena.ratings). `graft_ui.report.html` renders it.
"""

from __future__ import annotations

import base64
import io
import json
import logging
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable, Mapping, Sequence

from graft_ui.models.manifest import Manifest, ModelEntry
from graft_ui.recipe import Recipe

log = logging.getLogger(__name__)

THUMB_PX = 160
Progress = Callable[[float, str], None]  # (fraction done, what is running)


@dataclass
class Answer:
    """One held-out sample with every model's answer."""

    id: str
    domain: str
    prompt: str
    reference: str | None
    image: str | None  # a data: URI of a PNG thumbnail, or None for a text-only prompt
    outputs: dict[str, dict]  # model -> {"output": str, "ok": bool | None}


@dataclass
class ReportData:
    name: str
    folder: Path
    recipe: Recipe
    base: ModelEntry
    experts: list[ModelEntry]  # in fusion order
    domains: list[str]
    created: str = field(default_factory=lambda: time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()))
    manifest_source: str | None = None
    analysis: Any = None  # AnalysisResult on "+".join(domains), or None
    gates: dict | None = None  # gates.json as written by the merge
    results: dict | None = None  # evaluate_specs output (rows: base, experts, the variant)
    answers: list[Answer] = field(default_factory=list)
    leaderboard: Any = None  # arena.ratings.Leaderboard
    notes: list[str] = field(default_factory=list)  # what could not be computed, in sentences
    forecast: dict = field(default_factory=dict)  # expert -> {"accuracy", "forecast"} (advisor.explain)
    score_statement: str = ""  # what the compatibility score has been measured to predict

    @property
    def model_labels(self) -> list[str]:
        return [self.base.name, *[e.name for e in self.experts], self.name]


def recipe_experts(recipe: Recipe, manifest: Manifest) -> list[ModelEntry]:
    """The manifest entries of the recipe's experts, in fusion order (matched by folder, then name)."""
    found = [manifest.find(ref) for ref in recipe.experts]
    missing = [ref.name or ref.path for ref, hit in zip(recipe.experts, found) if hit is None]
    if missing:
        raise ValueError(f"the recipe's expert(s) {missing} are not in manifest {manifest.name!r} "
                         f"(experts: {[e.name for e in manifest.experts]}); give the manifest the variant was fused from")
    return found


def read_variant(folder: str | Path) -> tuple[Recipe, dict | None]:
    """(recipe, gates.json content or None) of a fused variant's folder."""
    folder = Path(folder)
    if not folder.is_dir():
        raise FileNotFoundError(f"variant folder {str(folder)!r} does not exist")
    recipe = Recipe.load(folder / "recipe.yaml")
    gates_path = folder / "gates.json"
    gates = None
    if gates_path.is_file():
        try:
            gates = json.loads(gates_path.read_text())
        except json.JSONDecodeError as exc:
            raise ValueError(f"{str(gates_path)!r} is not valid JSON: {exc}") from None
    return recipe, gates


def thumbnail_uri(source: Any, root: str | Path | None, px: int = THUMB_PX) -> str:
    """A local image (path relative to `root`) as a small PNG data: URI."""
    from graft_ui.models.inputs import open_image

    image = open_image(source, root).copy()
    image.thumbnail((px, px))
    buf = io.BytesIO()
    image.save(buf, format="PNG", optimize=True)
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode("ascii")


def _prompt_parts(messages: Sequence[Mapping]) -> tuple[str, Any]:
    """(the user turns' text, the first image item's source) of a conversation."""
    texts, image = [], None
    for msg in messages:
        if msg.get("role") != "user":
            continue
        content = msg.get("content")
        if isinstance(content, str):
            texts.append(content)
            continue
        for item in content or []:
            if item.get("type") == "text":
                texts.append(item.get("text") or "")
            elif item.get("type") == "image" and image is None:
                image = item.get("image")
    return "\n".join(texts), image


def pick_answers(results: Mapping, manifest: Manifest, labels: Sequence[str], per_domain: int) -> list[Answer]:
    """Up to `per_domain` samples per domain: first those where the models' scores differ, then
    the rest, each in file order; every model's answer and whether it was correct."""
    from graft_ui.analysis.data import read_jsonl

    rows = results["models"]
    out: list[Answer] = []
    for domain in results["domains"]:
        samples = {s.id: s for s in read_jsonl(manifest.dataset(domain).eval)}
        per_model = {m: {o["id"]: o for o in rows[m]["domains"][domain].get("outputs", [])}
                     for m in labels if m in rows and domain in rows[m].get("domains", {})}
        ids = [i for i in next(iter(per_model.values()), {}) if i in samples]
        differ = [i for i in ids if len({per_model[m][i]["ok"] for m in per_model if i in per_model[m]}) > 1]
        for sid in (differ + [i for i in ids if i not in differ])[:per_domain]:
            s = samples[sid]
            prompt, image = _prompt_parts(s.messages)
            uri = None
            if image is not None:
                try:
                    uri = thumbnail_uri(image, s.root)
                except (OSError, ValueError) as exc:
                    log.warning("no thumbnail for %s: %s", sid, exc)
            outputs = {m: {"output": per_model[m][sid]["output"], "ok": per_model[m][sid].get("ok")}
                       for m in per_model if sid in per_model[m]}
            out.append(Answer(id=sid, domain=domain, prompt=prompt, reference=s.answer, image=uri, outputs=outputs))
    return out


def gather(
    manifest: Manifest,
    folder: str | Path,
    *,
    name: str | None = None,
    votes: Iterable[Any] = (),
    k: int = 16,
    limit: int | None = None,
    answers_per_domain: int = 3,
    device: str = "cpu",
    n_bootstrap: int = 200,
    progress: Progress | None = None,
) -> ReportData:
    """Everything the report shows for the variant in `folder` (see the module docstring).

    `limit` caps each domain's held-out split (None = all of it); `k` is the number of
    target samples for the sensitivity analysis; `votes` are the arena's votes.
    """
    from graft_ui.analysis.analyze import analyze_experts
    from graft_ui.arena.ratings import leaderboard
    from graft_ui.zoo.evaluate import evaluate_specs

    step = progress or (lambda _f, _what: None)
    folder = Path(folder)
    recipe, gates = read_variant(folder)
    experts = recipe_experts(recipe, manifest)
    name = name or recipe.name or folder.name
    # the experts' domains with data (fusion order), else every domain of the manifest
    domains = manifest.domains_of(experts) or sorted(manifest.datasets)
    data = ReportData(name=name, folder=folder, recipe=recipe, base=manifest.base, experts=experts,
                      domains=domains, manifest_source=manifest.source, gates=gates)
    target = "+".join(data.domains)
    step(0.05, f"analysing {len(experts)} experts on {target}")
    try:
        data.analysis = analyze_experts(manifest, [e.name for e in experts], target, k=k, device=device)
    except (ValueError, KeyError, FileNotFoundError) as exc:
        log.warning("report: analysis skipped: %s", exc)
        data.notes.append(f"The sensitivity analysis could not run: {exc}")
    step(0.3, f"scoring {len(data.model_labels)} models on the held-out splits")
    specs = [manifest.base.name, *[e.name for e in experts], str(folder)]
    data.results = evaluate_specs(specs, manifest, domains=data.domains, limit=limit, device=device,
                                  keep_outputs=True, labels=data.model_labels)
    _forecast(data, manifest)
    step(0.85, "picking side-by-side answers")
    data.answers = pick_answers(data.results, manifest, data.model_labels, answers_per_domain)
    step(0.9, "fitting the leaderboard")
    data.leaderboard = leaderboard(list(votes), n_bootstrap=n_bootstrap)
    step(1.0, "done")
    return data


def _forecast(data: ReportData, manifest: Manifest) -> None:
    """Beside each compatibility score: the kept-fraction forecast of this method (from the fitted
    forecast's rows of this zoo, when it has them) and the line on what the score predicts."""
    from graft_ui.advisor.explain import expert_context, score_statement
    from graft_ui.advisor.kept import load_artifact

    try:
        art = load_artifact()
    except (FileNotFoundError, ValueError) as exc:
        log.info("report: no fitted forecast (%s)", exc)
        art = None
    data.score_statement = score_statement(art)
    data.forecast = expert_context(manifest, [e.name for e in data.experts], data.domains, art=art,
                                   method=data.recipe.method)
