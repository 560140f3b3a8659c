"""Mini-benchmarks: greedy answers of a model on each domain's held-out split, scored exactly.

A model spec is a manifest model name (`base`, `math-lora`, ...) or a folder: a full
checkpoint, or an adapter folder that loads on the manifest's base. Results are a dict
(rows = models, columns = domains + mean, accuracies in percent) written as results.json
and a markdown table.
"""

from __future__ import annotations

import json
import logging
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Mapping, Sequence

import torch

from graft_ui.zoo.scoring import code_program, exact_match, run_code_tests

log = logging.getLogger(__name__)

MAX_NEW_TOKENS = {"exact": 16, "code": 48}


@dataclass(frozen=True)
class ModelSpec:
    label: str  # row name in the table
    path: str
    base: str | None = None  # for adapter folders


def resolve_spec(spec: str, manifest=None) -> ModelSpec:
    """A manifest model name, else a local folder (adapters load on the manifest base)."""
    from graft_ui.models.loading import is_adapter

    if manifest is not None:
        try:
            entry = manifest.model(spec)
        except KeyError:
            entry = None
        if entry is not None:
            base = manifest.base.path if entry.kind == "lora" else None
            return ModelSpec(entry.name, entry.path, base)
    path = Path(spec).expanduser()
    if not path.is_dir():
        known = [manifest.base.name, *[e.name for e in manifest.experts]] if manifest is not None else []
        raise FileNotFoundError(f"model spec {spec!r} is neither a manifest model {known} nor a folder")
    base = manifest.base.path if (manifest is not None and is_adapter(path)) else None
    return ModelSpec(path.name, str(path), base)


def load_spec(spec: ModelSpec, device="cpu", dtype=torch.float32, processor_fallback: str | None = None,
              allow_base_mismatch: bool = False):
    """(model, processor) for a spec; a folder without processor files uses the base's. An adapter
    that records another base than the manifest's is refused unless `allow_base_mismatch`."""
    from graft_ui.models.loading import load_model, load_processor

    model = load_model(spec.path, base=spec.base, device=device, dtype=dtype, allow_base_mismatch=allow_base_mismatch)
    try:
        processor = load_processor(spec.path, base=spec.base)
    except (OSError, ValueError) as exc:
        if processor_fallback is None:
            raise
        log.info("no processor in %s (%s); using %s", spec.path, exc, processor_fallback)
        processor = load_processor(processor_fallback)
    return model, processor


def _read(path) -> list[dict]:
    from graft_ui.zoo.domains import read_jsonl

    return read_jsonl(path)


@torch.no_grad()
def generate_answers(model, processor, samples: Sequence[dict], root: str | Path, *,
                     batch_size: int = 16, max_new_tokens: int | None = None,
                     progress: Callable[[int], None] | None = None) -> list[str]:
    """Greedy completions for `samples` (batched with left padding); decoded without special tokens."""
    from graft_ui.models.inputs import build_inputs
    from graft_ui.zoo.train import collate

    tok = processor.tokenizer
    pad_id = tok.pad_token_id if tok.pad_token_id is not None else tok.eos_token_id
    eos = [tok.convert_tokens_to_ids("<|im_end|>"), tok.convert_tokens_to_ids("<|endoftext|>")]
    device = next(model.parameters()).device
    outs: list[str] = []
    for start in range(0, len(samples), batch_size):
        chunk = samples[start:start + batch_size]
        items = []
        for s in chunk:
            inp = build_inputs(processor, s["messages"], add_generation_prompt=True, root=root)
            item = {k: inp[k][0] for k in ("input_ids", "attention_mask", "mm_token_type_ids") if k in inp}
            item.setdefault("mm_token_type_ids", torch.zeros_like(item["input_ids"]))
            if "pixel_values" in inp:
                item["pixel_values"] = inp["pixel_values"]
                item["image_grid_thw"] = inp["image_grid_thw"]
            items.append(item)
        batch = {k: v.to(device) for k, v in collate(items, pad_id, left=True).items()}
        if "pixel_values" in batch:
            batch["pixel_values"] = batch["pixel_values"].to(next(model.parameters()).dtype)
        limit = max_new_tokens or max(MAX_NEW_TOKENS.get(s.get("scorer", "exact"), 16) for s in chunk)
        gen = model.generate(**batch, max_new_tokens=limit, do_sample=False, eos_token_id=eos,
                             pad_token_id=pad_id)
        new = gen[:, batch["input_ids"].shape[1]:]
        # keep leading spaces: a code body's indentation is part of the answer
        outs.extend(t.strip("\n").rstrip() for t in tok.batch_decode(new, skip_special_tokens=True))
        if progress is not None:
            progress(len(chunk))
    return outs


def score_domain(samples: Sequence[dict], completions: Sequence[str], timeout: float = 5.0) -> list[bool]:
    def one(pair):
        s, c = pair
        if s.get("scorer", "exact") == "code":
            return run_code_tests(code_program(s, c), s.get("tests") or "", timeout=timeout).passed
        return exact_match(c, s["answer"])

    with ThreadPoolExecutor(max_workers=2) as pool:  # code tests are subprocesses: overlap them
        return list(pool.map(one, zip(samples, completions)))


def evaluate_model(model, processor, datasets: Mapping[str, str | Path], *, limit: int | None = None,
                   batch_size: int = 16, progress: Callable[[int], None] | None = None,
                   keep_outputs: bool = False) -> dict:
    """{"domains": {d: {"accuracy", "correct", "n"}}, "mean": ...} for one loaded model."""
    result: dict = {"domains": {}}
    for domain, path in datasets.items():
        samples = _read(path)[:limit] if limit else _read(path)
        t0 = time.time()
        completions = generate_answers(model, processor, samples, Path(path).parent, batch_size=batch_size,
                                       progress=progress)
        ok = score_domain(samples, completions)
        entry = {"accuracy": 100.0 * sum(ok) / max(1, len(ok)), "correct": int(sum(ok)), "n": len(ok),
                 "seconds": round(time.time() - t0, 2)}
        if keep_outputs:
            entry["outputs"] = [{"id": s["id"], "answer": s["answer"], "output": c, "ok": bool(k)}
                                for s, c, k in zip(samples, completions, ok)]
        result["domains"][domain] = entry
        log.info("%s: %.1f%% (%d/%d)", domain, entry["accuracy"], entry["correct"], entry["n"])
    accs = [d["accuracy"] for d in result["domains"].values()]
    result["mean"] = sum(accs) / len(accs) if accs else 0.0
    return result


def evaluate_specs(specs: Sequence[str], manifest, *, domains: Sequence[str] | None = None,
                   limit: int | None = None, device="cpu", batch_size: int = 16, progress: bool = False,
                   keep_outputs: bool = False, labels: Sequence[str] | None = None,
                   allow_base_mismatch: bool = False) -> dict:
    """Score each model spec on every (or the chosen) domain's eval split of `manifest`."""
    from tqdm.auto import tqdm

    domains = list(domains or manifest.datasets)
    datasets = {d: manifest.dataset(d).eval for d in domains}
    resolved = [resolve_spec(s, manifest) for s in specs]
    if labels:  # None keeps the spec's own label (its manifest name or folder name)
        resolved = [ModelSpec(lab or r.label, r.path, r.base) for lab, r in zip(labels, resolved)]
    dup = sorted({r.label for r in resolved if [x.label for x in resolved].count(r.label) > 1})
    if dup:
        raise ValueError(f"two models would share the row name(s) {dup}; give distinct folders")
    sizes = {d: len(_read(p)[:limit] if limit else _read(p)) for d, p in datasets.items()}
    bar = tqdm(total=sum(sizes.values()) * len(resolved), desc="eval", unit="sample", disable=not progress)
    rows = {}
    try:
        for spec in resolved:
            bar.set_postfix_str(spec.label)
            model, processor = load_spec(spec, device=device, processor_fallback=manifest.base.path,
                                         allow_base_mismatch=allow_base_mismatch)
            row = evaluate_model(model, processor, datasets, limit=limit, batch_size=batch_size,
                                 progress=bar.update, keep_outputs=keep_outputs)
            rows[spec.label] = {"path": spec.path, **row}
            del model
    finally:
        bar.close()
    return {"domains": domains, "limit": limit, "models": rows}


def results_markdown(results: Mapping) -> str:
    domains = list(results["domains"])
    head = "| model | " + " | ".join(domains) + " | mean |"
    lines = [head, "|" + "---|" * (len(domains) + 2)]
    for name, row in results["models"].items():
        if row.get("error"):
            lines.append(f"| {name} | " + " | ".join("error" for _ in domains) + f" | {row['error'][:60]} |")
            continue
        cells = [f"{row['domains'][d]['accuracy']:.1f}" if d in row["domains"] else "-" for d in domains]
        lines.append(f"| {name} | " + " | ".join(cells) + f" | {row['mean']:.1f} |")
    return "\n".join(lines) + "\n"


def write_results(results: Mapping, out_dir: str | Path) -> tuple[Path, Path]:
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    js, md = out / "results.json", out / "results.md"
    js.write_text(json.dumps(results, indent=2))
    md.write_text(results_markdown(results))
    return js, md
