"""A zoo's base trained once and shipped with the code, so a first build trains only the experts.

The full zoo's base (general training, then the instruct stage) is ~30% of a first build's
wall time on two cores (146 of 477 s on an AMD Zen 4), and it is the same base on every
machine but for float rounding. `export.export_base` copies the base of a from-scratch build into
`graft_ui/zoo/prebuilt/<profile>/base` with `prebuilt.json` (graft_ui/zoo/export.py): the settings and the training
data it was trained with, its sha256, where it was trained. A build of a profile whose
`prebuilt_base` names such a folder takes it instead of training (`take_base`) when it would
train the same base: equal base settings (profiles.BASE_SETTINGS) and byte-equal training
data (the train splits and the images they show, `train_data_hash`). Anything else, or
`zoo build --train-base`, trains the base as before. The experts always train on this machine.
"""

from __future__ import annotations

import hashlib
import json
import logging
import platform
import shutil
from pathlib import Path

from graft_ui.zoo.profiles import DOMAINS, Profile

log = logging.getLogger(__name__)

PREBUILT_ROOT = Path(__file__).resolve().parent / "prebuilt"
META = "prebuilt.json"


def prebuilt_folder(prof: Profile) -> Path | None:
    """The folder `prof.prebuilt_base` names (relative names are under PREBUILT_ROOT), or None."""
    if not prof.prebuilt_base:
        return None
    folder = Path(prof.prebuilt_base).expanduser()
    return folder if folder.is_absolute() else PREBUILT_ROOT / folder


def file_sha256(path: Path) -> str:
    with path.open("rb") as fh:
        return hashlib.file_digest(fh, "sha256").hexdigest()


def train_data_hash(data_root: str | Path) -> str:
    """sha256 of what a base learns from: every train split (domains and general) and the images it shows."""
    data_root = Path(data_root)
    h = hashlib.sha256()
    for split in (*DOMAINS, "general"):
        lines = (data_root / split / "train.jsonl").read_bytes()
        h.update(split.encode() + b"\0" + lines)
        for line in lines.splitlines():
            for message in json.loads(line)["messages"]:
                for item in message["content"]:
                    if item.get("type") == "image":
                        h.update((data_root / split / item["image"]).read_bytes())
    return h.hexdigest()


def cpu_name() -> str:
    """This machine's CPU and the instruction set torch uses, e.g. "AMD EPYC (family 25 model 17, AVX512)"."""
    import torch

    fields = {}
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            key, _, value = line.partition(":")
            fields.setdefault(key.strip(), value.strip())
    except OSError:
        pass
    name = fields.get("model name") or platform.processor() or platform.machine()
    family = f"family {fields['cpu family']} model {fields['model']}, " if "cpu family" in fields else ""
    return f"{name} ({family}{torch.backends.cpu.get_cpu_capability()})"


def take_base(prof: Profile, data_root: Path, dest: Path) -> dict | None:
    """Copy the prebuilt base of `prof` into `dest` when it is the base this build would train;
    returns its prebuilt.json, or None (nothing copied) when there is none or it does not fit."""
    folder = prebuilt_folder(prof)
    if folder is None:
        return None
    try:
        meta = json.loads((folder / META).read_text())
    except (OSError, json.JSONDecodeError) as exc:
        log.warning("no usable prebuilt base at %s (%s); training the base", folder, exc)
        return None
    ours = json.loads(json.dumps(prof.base_settings()))  # as JSON has them (tuples become lists)
    theirs = meta.get("base_settings") or {}
    diff = sorted(k for k, v in ours.items() if theirs.get(k) != v)
    if diff:
        log.warning("the prebuilt base at %s was trained with other base settings %s; training the base", folder, diff)
        return None
    if meta.get("train_data_sha256") != train_data_hash(data_root):
        log.warning("the prebuilt base at %s was trained on other data than this build made; training the base",
                    folder)
        return None
    if file_sha256(folder / "base" / "model.safetensors") != meta.get("weights_sha256"):
        log.warning("the prebuilt base's weights at %s are not the ones its prebuilt.json names; training the base",
                    folder)
        return None
    shutil.rmtree(dest, ignore_errors=True)
    shutil.copytree(folder / "base", dest)
    log.info("took the prebuilt base from %s (trained on %s)", folder, meta.get("trained_on"))
    return meta
