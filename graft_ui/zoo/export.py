"""Ship a built zoo's base as its profile's prebuilt base: `python -m graft_ui zoo export-base --zoo DIR`.

The inverse of `prebuilt.take_base`: the base folder of a zoo that trained its own base goes to
`graft_ui/zoo/prebuilt/<profile>/base`, with `prebuilt.json` recording the settings, the hash of
the training data and weights, the losses and where it was trained. Re-export after changing a
base setting or the data generator (tests/zoo/test_prebuilt.py checks the shipped one still fits).
"""

from __future__ import annotations

import json
import logging
import shutil
from pathlib import Path

from graft_ui.atomic import publish_folder, temp_folder
from graft_ui.zoo.build import BUILD_INFO
from graft_ui.zoo.prebuilt import META, PREBUILT_ROOT, cpu_name, file_sha256, train_data_hash
from graft_ui.zoo.profiles import Profile

log = logging.getLogger(__name__)


def export_base(zoo: str | Path, dest: str | Path | None = None) -> Path:
    """Write the base of the built zoo `zoo` as its profile's prebuilt base (default
    PREBUILT_ROOT/<profile>); returns the folder. The zoo's build info gives the settings and
    losses; the training data is hashed from the zoo's own data folder."""
    zoo = Path(zoo).expanduser().resolve()
    info = json.loads((zoo / BUILD_INFO).read_text())
    if info.get("base_from"):
        raise ValueError(f"the zoo at {str(zoo)!r} took its base from {info['base_from'].get('path')!r}; "
                         "export that zoo's base instead")
    prof = Profile.from_dict(info["settings"])
    dest = Path(dest).expanduser().resolve() if dest else PREBUILT_ROOT / prof.name
    tmp = temp_folder(dest, "exporting", hidden=True)
    try:
        (tmp / "base").mkdir()
        for f in sorted((zoo / "base").iterdir()):
            if f.is_file() and not f.name.startswith("."):  # not a partial build's bookkeeping
                shutil.copyfile(f, tmp / "base" / f.name)
        earlier = info.get("base_prebuilt") or {}  # a base taken from a prebuilt one keeps its provenance
        meta = {
            "profile": prof.name,
            "base_settings": prof.base_settings(),
            "train_data_sha256": train_data_hash(zoo / "data"),
            "weights_sha256": file_sha256(zoo / "base" / "model.safetensors"),
            "parameters": info.get("parameters"),
            "loss": {k: v for k, v in (info.get("loss") or {}).items() if k.startswith("base")},
            "trained_on": earlier.get("trained_on") or (info.get("host") or {}).get("cpu") or cpu_name(),
            "built_at": earlier.get("built_at") or info.get("built_at"),
            "versions": earlier.get("versions") or info.get("versions"),
        }
        (tmp / META).write_text(json.dumps(meta, indent=1) + "\n")
        publish_folder(tmp, dest)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    log.info("exported the base of %s to %s", zoo, dest)
    return dest
