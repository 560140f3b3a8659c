"""Which server paths a remote user may make the app read: folders under configured roots.

The app's endpoints take server paths (a manifest, a base or expert folder, a recipe's paths, a
dataset file). A path outside the roots is refused with one generic message, the same whether it
does not exist, is a file or is not a model folder, so that the answers reveal nothing about the
server's files. Inside the roots the usual detailed messages apply. A hub id (`owner/name`) is
accepted when the local Hugging Face cache holds it (or when hub downloads are on).

    roots = AllowedRoots([work_dir, zoo_root, hf_cache])
    roots.check(user_path)   # the path, or NotAllowedError
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Iterable

from graft_ui.models.manifest import Manifest, looks_like_hub_id

log = logging.getLogger(__name__)


class NotAllowedError(ValueError):
    """A path outside the allowed folders (or a hub id not in the local cache)."""


def _shown(ref: str, limit: int = 80) -> str:
    return ref if len(ref) <= limit else ref[:limit] + "…"


def _offline() -> bool:
    return os.environ.get("HF_HUB_OFFLINE", "0") not in ("0", "", "false", "False")


def hub_id_cached(ref: str) -> bool:
    from huggingface_hub import try_to_load_from_cache

    return any(isinstance(try_to_load_from_cache(ref, f), str) for f in ("config.json", "adapter_config.json"))


class AllowedRoots:
    """Folders under which server paths may be read (see the module docstring)."""

    def __init__(self, roots: Iterable[str | os.PathLike]):
        self.roots: tuple[Path, ...] = tuple(dict.fromkeys(Path(r).expanduser().resolve() for r in roots))
        if not self.roots:
            raise ValueError("give at least one allowed folder")

    def __repr__(self) -> str:
        return f"AllowedRoots({[str(r) for r in self.roots]})"

    def contains(self, path: str | os.PathLike) -> bool:
        try:
            real = Path(path).expanduser().resolve()
        except (OSError, RuntimeError, ValueError):  # too long, a symlink loop, a NUL byte
            return False
        return any(real == r or real.is_relative_to(r) for r in self.roots)

    def refusal(self, ref: str) -> NotAllowedError:
        return NotAllowedError(
            f"{_shown(ref)!r} cannot be opened: give a folder or file under the folders this server allows "
            "(its --allow-dir), or a hub id in its local cache"
            + (" (hub downloads are off: HF_HUB_OFFLINE=1)" if _offline() else ""))

    def check(self, ref: str | os.PathLike) -> str:
        """`ref` if it is a path under a root or a usable hub id, else the generic `NotAllowedError`."""
        ref = str(ref)
        if "\x00" in ref or len(ref) > 4096:
            raise self.refusal(ref)
        if self.contains(ref):
            return ref
        # outside the roots the answer must not depend on what exists there: a hub-id-like string is
        # only ever a hub id, and anything else is refused the same way
        if looks_like_hub_id(ref) and not Path(ref).is_absolute() and not Path(ref).exists():
            if not _offline() or hub_id_cached(ref):
                return ref
        log.info("refused a path outside the allowed folders: %s", ref)
        raise self.refusal(ref)

    def check_manifest(self, manifest: Manifest) -> Manifest:
        """Every model and dataset path a manifest names, checked as `check` does (a server-only entry has none)."""
        for e in (manifest.base, *manifest.experts):
            if not e.remote_only:
                self.check(e.path)
        for d in manifest.datasets.values():
            for p in (d.eval, d.train):
                if p:
                    self.check(p)
        return manifest
