"""The app's entry points to the kept-fraction forecast (② Analyze calls these; no gradio here).

    kept_plan(manifest, kind, dataset, k=...)       the Plan of every (pair, method), as a dict
    preview_pair(manifest, a, b, method, target)    the merge preview of one pair on the user's own target
                                                    prompts, with the forecast it implies
The previewer (experts' answers on a prompt set) is kept per manifest, K and device between calls.
"""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Callable

from graft_ui.advisor.kept import KeptForecast, load_artifact
from graft_ui.advisor.preview import Previewer
from graft_ui.models.manifest import Manifest
from graft_ui.study.lookup import find_study

_LOCK = threading.Lock()
_PREVIEWERS: dict[tuple, Previewer] = {}


def _study(manifest: Manifest):
    return find_study(Path(manifest.source).parent) if manifest.source else None


def kept_plan(manifest: Manifest, kind: str, dataset: str, *, k: int = 16, device: str = "cpu",
              cache: str | Path | None = None, forecast: str | Path | None = None) -> dict:
    """The Plan (advisor.plan) of `kind` on `dataset` as a dict, plus its validation line."""
    from graft_ui.advisor.plan import plan

    art = load_artifact(forecast)
    p = plan(manifest, kind, dataset, KeptForecast.from_artifact(art, kind, art["_path"]), art=art,
             study=_study(manifest), k=k, device=device, cache=cache, limit=32)
    return {**p.to_dict(), "validation_line": p.validation_line, "validation": p.validation}


def previewer(manifest: Manifest, k: int, device: str) -> Previewer:
    key = (str(manifest.source), manifest.name, int(k), str(device))
    with _LOCK:
        if key not in _PREVIEWERS:
            _PREVIEWERS.clear()  # one manifest at a time: drop another's cached answers
            _PREVIEWERS[key] = Previewer(manifest, k=k, device=device)
        return _PREVIEWERS[key]


def preview_pair(manifest: Manifest, a: str, b: str, method: str, target: str, *, k: int = 16, device: str = "cpu",
                 progress: Callable[[float, str], None] | None = None, stop: Callable[[], bool] | None = None,
                 forecast: str | Path | None = None) -> dict:
    """The preview of a + b with `method` on K prompts of `target` (both experts), and the kept fractions
    the fitted forecast reads from it (None when no forecast is fitted for this kind or method)."""
    res = previewer(manifest, k, device).preview(a, b, method, target=target, progress=progress, stop=stop)
    try:
        art = load_artifact(forecast)
        fc = KeptForecast.from_artifact(art, manifest.expert(a).kind, art["_path"])
        res["forecast"] = {**fc.predict({**res, "method": method}), "error": fc.error(method), "weak": fc.weak}
    except (FileNotFoundError, KeyError, ValueError) as exc:
        res["forecast"] = None
        res["forecast_note"] = str(exc)
    return res


def preview_markdown(res: dict) -> str:
    a, b = list(res["prompts"])
    k = res["k"]
    text = (f"**{a} + {b}** fused with **{res['method']}**, on {k} of your prompts ({res['prompts'][a]}): the fused "
            f"model answers exactly as {a} on {round(res['agree_a'] * k)}/{k} (KL {res['kl_a']:.3f} nats/token) and as "
            f"{b} on {round(res['agree_b'] * k)}/{k} (KL {res['kl_b']:.3f}); {res['seconds']:.1f} s.")
    fc = res.get("forecast")
    if fc:
        text += (f" Forecast from these numbers: kept_min {fc['kept_min']:.2f} ± {fc['error']:.2f}"
                 f"{' (weak forecast)' if fc['weak'] else ''}. The forecast model was fitted on previews of each "
                 "expert's own domain; on your prompts it is a reading, not a measurement.")
    return text
