"""Target samples for the analysis: a zoo/manifest domain, a user's JSONL, or a union.

JSONL format: docs/CONTRACTS.md (one sample per line with `messages`, optional `answer`;
image paths relative to the JSONL file). Selection is seeded: the same (dataset, K, seed)
always gives the same samples in the same order.
"""

from __future__ import annotations

import json
import logging
import shutil
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator, Sequence

import torch
from PIL import Image, UnidentifiedImageError

from graft_ui.jsonl import conversation, iter_jsonl
from graft_ui.models.inputs import build_inputs
from graft_ui.models.manifest import Manifest

log = logging.getLogger(__name__)

MAX_UPLOAD_JSONL_BYTES = 20 * 2**20
MAX_UPLOAD_SAMPLES = 5000


@dataclass(frozen=True)
class Sample:
    id: str
    messages: list[dict]
    answer: str | None
    root: str  # folder that image paths are relative to
    domain: str | None = None


def read_jsonl(path: str | Path) -> list[Sample]:
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"dataset file {str(path)!r} does not exist")
    out = []
    with path.open() as fh:
        for lineno, d in iter_jsonl(fh, repr(str(path))):
            conversation(d, repr(str(path)), lineno)
            answer = d.get("answer")
            out.append(Sample(
                id=str(d.get("id", f"{path.stem}-{lineno}")), messages=d["messages"],
                answer=None if answer is None else str(answer), root=str(path.parent), domain=d.get("domain"),
            ))
    if not out:
        raise ValueError(f"dataset file {str(path)!r} holds no samples")
    return out


def select(samples: Sequence[Sample], k: int, seed: int = 0) -> list[Sample]:
    """K samples chosen with a seeded permutation (all of them, in file order, if K >= len)."""
    if isinstance(k, bool) or not isinstance(k, int) or k < 1:
        raise ValueError(f"k={k!r} must be a positive integer")
    if k >= len(samples):
        if k > len(samples):
            log.warning("asked for K=%d samples, the dataset has %d; using all", k, len(samples))
        return list(samples)
    g = torch.Generator().manual_seed(int(seed))
    idx = torch.randperm(len(samples), generator=g)[:k].tolist()
    return [samples[i] for i in idx]


def dataset_path(spec: str, manifest: Manifest | None, split: str = "eval") -> str:
    """A JSONL path for `spec`: an existing file, or a manifest domain's `split` ("eval" or "train").

    Analysis reads the eval split (the target the scores are about); calibration, which
    learns parameters, reads the train split so the eval benchmark stays held out. A
    domain without a train split falls back to its eval split, with a warning.
    """
    if split not in ("eval", "train"):
        raise ValueError(f"split={split!r} must be 'eval' or 'train'")
    if Path(spec).is_file():
        return spec
    if manifest is not None and spec in manifest.datasets:
        ds = manifest.dataset(spec)
        if split == "train" and ds.train is None:
            log.warning("domain %r has no train split; using its eval split %s", spec, ds.eval)
        return ds.train if split == "train" and ds.train is not None else ds.eval
    known = sorted(manifest.datasets) if manifest is not None else []
    raise FileNotFoundError(f"dataset {spec!r} is neither a JSONL file nor a manifest domain (known domains: {known})")


def load_target(
    spec: str, k: int, *, manifest: Manifest | None = None, seed: int = 0, split: str = "eval"
) -> list[Sample]:
    """K target samples. `spec` is a JSONL path, a manifest domain, or a union `dom1+dom2[+...]`;
    domains read their `split` (see `dataset_path`).

    A union takes K // n samples from each part (the first K % n parts take one more),
    each part selected with the same seed, so the target is balanced across domains.
    """
    parts = [p for p in spec.split("+") if p] if "+" in spec and not Path(spec).is_file() else [spec]
    if len(parts) == 1:
        return select(read_jsonl(dataset_path(spec, manifest, split)), k, seed)
    if k < len(parts):
        raise ValueError(f"k={k} is smaller than the number of datasets in the union {spec!r}")
    out: list[Sample] = []
    for i, part in enumerate(parts):
        kk = k // len(parts) + (1 if i < k % len(parts) else 0)
        out.extend(select(read_jsonl(dataset_path(part, manifest, split)), kk, seed))
    return out


def iter_inputs(processor, samples: Sequence[Sample], *, with_answer: bool = False) -> Iterator[Any]:
    """Model inputs per sample (prompt with generation prompt; plus the answer if asked and present)."""
    for s in samples:
        answer = s.answer if with_answer else None
        yield build_inputs(processor, s.messages, answer=answer, root=s.root)


def import_dataset(files: Sequence[str | Path], uploads: str | Path) -> Path:
    """Copy an uploaded JSONL (plus the image files it names) into `<uploads>/<id>/`.

    Image references are matched to the uploaded files by file name only and
    rewritten to the copies, so a sample can never point at a path or URL of its
    choosing. Every image is checked to open as an image.
    """
    files = [Path(f) for f in files or []]
    jsonls = [f for f in files if f.suffix.lower() == ".jsonl"]
    if not jsonls:
        names = ", ".join(repr(f.name) for f in files[:3]) or "nothing"
        raise ValueError(f"{names} is not a JSONL dataset: upload one .jsonl file (one conversation per line) "
                         "together with the images it uses")
    if len(jsonls) > 1:
        raise ValueError(f"upload exactly one .jsonl file (with the images it uses); got {len(jsonls)} JSONL files")
    src = jsonls[0]
    if src.stat().st_size > MAX_UPLOAD_JSONL_BYTES:
        raise ValueError(f"{src.name!r} is larger than {MAX_UPLOAD_JSONL_BYTES // 2**20} MB")
    images = {f.name: f for f in files if f != src}
    dest = Path(uploads) / uuid.uuid4().hex[:12]
    (dest / "images").mkdir(parents=True, exist_ok=True)
    lines, copied = [], set()
    for lineno, sample in iter_jsonl(src.read_text(errors="replace").splitlines(), repr(src.name)):
        msgs = conversation(sample, repr(src.name), lineno)
        for msg in msgs:
            content = msg.get("content") if isinstance(msg, dict) else None
            for item in content if isinstance(content, list) else []:
                if not isinstance(item, dict) or item.get("type") != "image":
                    continue
                ref = str(item.get("image", ""))
                if "://" in ref or ref.startswith("data:"):
                    raise ValueError(f"{src.name!r} line {lineno}: image {ref[:60]!r} is a URL; upload the image file instead")
                fname = Path(ref).name
                if fname not in images:
                    raise ValueError(f"{src.name!r} line {lineno} uses image {fname!r}: upload it together with the JSONL")
                if fname not in copied:
                    try:
                        with Image.open(images[fname]) as im:
                            im.verify()
                    except (UnidentifiedImageError, OSError, SyntaxError):
                        raise ValueError(f"uploaded file {fname!r} is not a readable image") from None
                    shutil.copyfile(images[fname], dest / "images" / fname)
                    copied.add(fname)
                item["image"] = f"images/{fname}"
        lines.append(json.dumps(sample))
        if len(lines) > MAX_UPLOAD_SAMPLES:
            raise ValueError(f"{src.name!r} has more than {MAX_UPLOAD_SAMPLES} samples; analysis needs only K of them")
    if not lines:
        raise ValueError(f"{src.name!r} holds no samples")
    out = dest / src.name
    out.write_text("\n".join(lines) + "\n")
    return out
