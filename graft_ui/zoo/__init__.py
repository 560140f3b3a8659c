"""The offline demo zoo: a tiny real Qwen2-VL, four domain experts, exact-scored mini-benchmarks.

    from graft_ui.zoo import ensure_zoo
    zoo = ensure_zoo("ci")          # builds once (a few minutes), then returns the cached folder
    manifest = load_manifest(zoo)   # graft_ui.models.manifest

Location: `$GRAFT_ZOO_DIR/<profile>` when GRAFT_ZOO_DIR is set, else
`~/.cache/graft_ui/zoo/<profile>`. Profiles: `full` (the demo) and `ci` (tests).
A cross-process file lock makes concurrent callers wait for one build instead of racing.
"""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path

from graft_ui.zoo.profiles import DOMAINS, PROFILES, get_profile

log = logging.getLogger(__name__)

__all__ = ["DOMAINS", "PROFILES", "ensure_zoo", "zoo_dir", "zoo_root", "is_built", "build_zoo"]


def zoo_root() -> Path:
    env = os.environ.get("GRAFT_ZOO_DIR")
    return Path(env).expanduser() if env else Path.home() / ".cache" / "graft_ui" / "zoo"


def zoo_dir(profile: str = "full") -> Path:
    """Where the zoo of `profile` lives (built or not)."""
    get_profile(profile)
    return zoo_root() / profile


def is_built(path: str | Path) -> bool:
    """A complete zoo of the current layout: manifest plus build info of this format."""
    from graft_ui.zoo.build import BUILD_INFO, FORMAT_VERSION, MANIFEST

    path = Path(path)
    try:
        info = json.loads((path / BUILD_INFO).read_text())
    except (OSError, json.JSONDecodeError):
        return False
    return (path / MANIFEST).is_file() and info.get("format") == FORMAT_VERSION


def ensure_zoo(profile: str = "full", *, force: bool = False, progress: bool | None = None) -> Path:
    """The folder of the `profile` zoo (holding manifest.yaml), built first if missing."""
    import fcntl

    from graft_ui.zoo.build import build_zoo

    path = zoo_dir(profile)
    if is_built(path) and not force:
        return path
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path.parent / f".{profile}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # another process may be building it right now
        try:
            if is_built(path) and not force:
                return path
            log.info("building the %s zoo in %s", profile, path)
            return build_zoo(path, profile, force=True, progress=True if progress is None else progress)
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


def __getattr__(name):
    if name == "build_zoo":
        from graft_ui.zoo.build import build_zoo

        return build_zoo
    raise AttributeError(name)
