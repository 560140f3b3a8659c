"""What a zoo build takes from elsewhere instead of redoing it: its own partial folder, or another zoo.

- A resumable profile builds in `.<name>.partial`, kept when the build fails or is killed; a
  rerun reuses its data and base when the settings they depend on are unchanged (the stamp),
  and each expert design whose design key (`design_key`) is unchanged.
- A profile with `base_from` (the study zoo) copies another built zoo's base after checking it
  is the same base (`reuse_base`), and copies every expert design that zoo trained identically
  (`reuse_experts`): training is seeded by the base, the data, the design and its index.
- `weights_hash` fingerprints the result's weights (the study's lookup compares it).
"""

from __future__ import annotations

import json
import logging
import shutil
from pathlib import Path

from graft_ui.atomic import temp_folder
from graft_ui.zoo.profiles import DOMAINS, EXPERT_SETTINGS, KINDS, Profile
from graft_ui.zoo.stages import _fix_adapter_base

log = logging.getLogger(__name__)

STAMP = ".settings.json"  # resumable builds: the settings the partial folder's data and base were made with
BASE_DONE = ".trained.json"  # in base/ of a partial build: the base finished training (parameters, losses)


def weights_hash(zoo_dir: str | Path) -> str:
    """sha256 (16 hex) of every weight file of the zoo (base and experts, in path order).

    The build is seeded, but training amplifies float rounding, so the same settings give other
    weights on another CPU: a study or self-check belongs to these bytes, not to the settings.
    """
    import hashlib

    zoo_dir = Path(zoo_dir)
    h = hashlib.sha256()
    for f in sorted([*zoo_dir.glob("base/*.safetensors"), *zoo_dir.glob("experts/*/*.safetensors")]):
        h.update(f.relative_to(zoo_dir).as_posix().encode() + b"\0")
        with f.open("rb") as fh:
            for block in iter(lambda: fh.read(1 << 20), b""):
                h.update(block)
    return h.hexdigest()[:16]


def work_folder(out_dir: Path, prof: Profile, format_version: int) -> Path:
    """Where the zoo is built before it is published: a fresh temp folder, or for a resumable
    profile `.<name>.partial`, kept when the build fails so a rerun goes on from its finished stages:
    its data and base when the settings they depend on are unchanged (else it is emptied), each
    expert design whose design and expert settings are unchanged."""
    if not prof.resumable:
        return temp_folder(out_dir, "building", hidden=True)
    tmp = out_dir.parent / f".{out_dir.name}.partial"
    stamp = json.dumps({"format": format_version, "domain_eval": prof.domain_eval, "base_from": prof.base_from,
                        **prof.base_settings()}, sort_keys=True)
    if (tmp / STAMP).is_file() and (tmp / STAMP).read_text() != stamp:
        log.info("the partial build in %s has other data or base settings; starting over", tmp)
        shutil.rmtree(tmp)
    if tmp.is_dir():
        log.info("resuming the build in %s", tmp)
    tmp.mkdir(parents=True, exist_ok=True)
    (tmp / STAMP).write_text(stamp)
    return tmp


def design_key(prof: Profile, i: int) -> dict:
    """What an expert design's training depends on besides the base and data (see work_folder)."""
    from dataclasses import asdict

    return json.loads(json.dumps({"index": i, "spec": asdict(prof.experts[i]),
                                  **{k: getattr(prof, k) for k in EXPERT_SETTINGS}}))


def reuse_base(prof: Profile, tmp: Path, source: Path, src_info: dict) -> None:
    """Copy the base of the built zoo at `source` (build info `src_info`) into `tmp/base` after
    checking it is this profile's base: equal base settings (profiles.BASE_SETTINGS) and
    byte-equal train splits (this build's data is already in `tmp/data`)."""
    theirs = {k: (src_info.get("settings") or {}).get(k) for k in prof.base_settings()}
    diff = sorted(k for k, v in prof.base_settings().items() if theirs[k] != v)
    if diff:
        raise ValueError(f"the zoo at {str(source)!r} was built with other base settings {diff}; "
                         f"the {prof.name} profile cannot reuse its base")
    for d in (*DOMAINS, "general"):
        ours, src = tmp / "data" / d / "train.jsonl", source / "data" / d / "train.jsonl"
        if ours.read_bytes() != src.read_bytes():
            raise ValueError(f"the {d} train split of {str(source)!r} differs from this build's; "
                             "its base was trained on other data")
    if not (tmp / "base" / ".copied").is_file():
        shutil.rmtree(tmp / "base", ignore_errors=True)
        shutil.copytree(source / "base", tmp / "base")
        (tmp / "base" / ".copied").write_text(str(source))
    return source, src_info


def reuse_experts(prof: Profile, tmp: Path, source: Path, src_info: dict) -> dict[int, dict]:
    """Copy from the base_from zoo every expert design this profile trains identically (same index,
    same design, same expert settings, same base and data: training is seeded by these), returning
    their {"loss", "seconds"} as a trained design would."""
    from dataclasses import asdict

    theirs = src_info.get("settings") or {}
    if any(theirs.get(k) != getattr(prof, k) for k in EXPERT_SETTINGS):
        return {}
    reused = {}
    for i, spec in enumerate(prof.experts):
        src = (theirs.get("experts") or [])[i:i + 1]
        names = [spec.name(kind) for kind in KINDS]
        if not src or src[0] != json.loads(json.dumps(asdict(spec))) or \
                not all((source / "experts" / n).is_dir() for n in names):
            continue
        for kind, n in zip(KINDS, names):
            shutil.rmtree(tmp / "experts" / n, ignore_errors=True)
            shutil.copytree(source / "experts" / n, tmp / "experts" / n)
            if kind == "lora":  # it names the source's base; the copy is this build's (see build_zoo's end)
                _fix_adapter_base(tmp / "experts" / n, str(tmp / "base"))
        reused[i] = {"loss": {n: src_info["loss"][n] for n in names},
                     "seconds": {n: src_info["expert_seconds"][n] for n in names}, "reused_from": str(source)}
    return reused
