"""The vLLM side of remote chat: the command line that serves a manifest, and fused adapters
registered on a running server.

`vllm_plan(manifest)` is the `vllm serve` command for the manifest's base with every local LoRA
expert as a `--lora-modules NAME=PATH` entry (served under the expert's name, which is what
`server:` routing asks for), `--max-loras` = their number (plus room for fused adapters) and
`--max-lora-rank` = the largest adapter rank rounded up to a value vLLM accepts.

`publish_adapter(server, name, folder)` makes a fused LoRA adapter servable without a restart:
the folder is copied into the manifest's `server.shared_dir` (a folder the server can read),
then `POST {endpoint}/load_lora_adapter {lora_name, lora_path}` registers it (vLLM with
`VLLM_ALLOW_RUNTIME_LORA_UPDATING=True`). When the server refuses or there is no shared folder,
the outcome says exactly what to run instead.
"""

from __future__ import annotations

import logging
import os
import shlex
import shutil
from dataclasses import dataclass
from pathlib import Path

import httpx

from graft_ui.models.loading import adapter_config, is_adapter
from graft_ui.models.manifest import Manifest, RemoteModel, ServerConfig

log = logging.getLogger(__name__)

# --max-lora-rank values every recent vLLM accepts (its LoRAConfig / MaxLoRARanks)
VLLM_LORA_RANKS = (8, 16, 32, 64, 128, 256, 320, 512)
FUSED_SLOTS = 2  # extra --max-loras room for fused adapters registered at run time
REGISTER_TIMEOUT_S = 30.0


def lora_rank(folder: str | Path) -> int:
    cfg = adapter_config(folder)
    r = cfg.get("r")
    if not isinstance(r, int) or r < 1:
        raise ValueError(f"adapter {str(folder)!r}: r={r!r} in adapter_config.json is not a positive integer")
    return r


def vllm_rank(r: int) -> int:
    """The smallest rank vLLM accepts that holds `r` (a Graft-fused adapter has rank r_b + r_g)."""
    for ok in VLLM_LORA_RANKS:
        if ok >= r:
            return ok
    raise ValueError(f"adapter rank {r} is above vLLM's largest --max-lora-rank ({VLLM_LORA_RANKS[-1]})")


def vllm_plan(manifest: Manifest, *, port: int = 8000, host: str = "0.0.0.0") -> list[str]:
    """argv of `vllm serve` for `manifest` (see the module docstring)."""
    loras = [e for e in manifest.local_experts("lora")]
    if not loras:
        raise ValueError(f"manifest {manifest.name!r} has no local LoRA experts to serve")
    for e in loras:
        if not is_adapter(e.path):
            raise ValueError(f"expert {e.name!r}: {e.path!r} is not a local adapter folder (adapter_config.json)")
    ranks = [lora_rank(e.path) for e in loras]
    served_base = manifest.server.base_model if manifest.server and manifest.server.base_model else None
    argv = ["vllm", "serve", manifest.base.path]
    if served_base and served_base != manifest.base.path:
        argv += ["--served-model-name", served_base]
    argv += ["--host", host, "--port", str(port), "--enable-lora", "--lora-modules"]
    argv += [f"{e.name}={e.path}" for e in loras]
    # a fused adapter of two experts has the sum of their ranks: leave room for it
    top2 = sum(sorted(ranks)[-2:])
    argv += ["--max-loras", str(len(loras) + FUSED_SLOTS), "--max-lora-rank", str(vllm_rank(top2))]
    if manifest.server and manifest.server.api_key_env:
        argv += ["--api-key", f"${manifest.server.api_key_env}"]
    return argv


def plan_text(manifest: Manifest, **kw) -> str:
    argv = vllm_plan(manifest, **kw)
    words = [w if w.startswith("$") else shlex.quote(w) for w in argv]
    env = "VLLM_ALLOW_RUNTIME_LORA_UPDATING=True "
    return env + " \\\n    ".join(_group(words))


def _group(words: list[str]) -> list[str]:
    """One flag with its value per line; each `--lora-modules` entry on its own line."""
    lines: list[str] = []
    in_loras = False
    for w in words:
        if w.startswith("--") or not lines:
            lines.append(w)
            in_loras = w == "--lora-modules"
        elif in_loras:
            lines.append("  " + w)
        else:
            lines[-1] += " " + w
    return lines


@dataclass(frozen=True)
class Published:
    remote: RemoteModel | None  # set when the server now serves the adapter
    message: str


def publish_adapter(server: ServerConfig, name: str, folder: str | Path) -> Published:
    """Copy a fused LoRA adapter where the server can read it and register it (module docstring)."""
    folder = Path(folder)
    if not is_adapter(folder):
        raise ValueError(f"{str(folder)!r} is not a LoRA adapter folder; only fused adapters can be served by name")
    if not server.shared_dir:
        return Published(None, f"{name!r} stays local: set server.shared_dir in the manifest (a folder the server "
                               f"at {server.endpoint} can read) to serve fused adapters there, or restart the server "
                               f"with --lora-modules {name}={folder}")
    local = Path(server.shared_dir) / name
    if local.resolve() != folder.resolve():
        if local.exists():
            shutil.rmtree(local)
        shutil.copytree(folder, local)
    remote_path = str(Path(server.server_dir or server.shared_dir) / name)
    key = os.environ.get(server.api_key_env, "") if server.api_key_env else ""
    headers = {"Authorization": f"Bearer {key}"} if key else {}
    url = f"{server.endpoint}/load_lora_adapter"
    try:
        r = httpx.post(url, json={"lora_name": name, "lora_path": remote_path}, headers=headers,
                       timeout=REGISTER_TIMEOUT_S)
    except httpx.HTTPError as exc:
        return Published(None, f"{name!r} stays local: could not reach {url} ({type(exc).__name__}); once the "
                               f"server runs, restart it with --lora-modules {name}={remote_path}")
    if r.status_code == 200 or "already been loaded" in r.text:
        log.info("registered fused adapter %s on %s as %s", name, server.endpoint, remote_path)
        return Published(server.remote(name), f"{name!r} is now served by {server.endpoint} (from {remote_path})")
    why = " ".join(r.text.split())[:160]
    hint = ("start the server with VLLM_ALLOW_RUNTIME_LORA_UPDATING=True to allow run-time adapters"
            if r.status_code in (404, 405) else "check the server log")
    return Published(None, f"{name!r} stays local: {url} answered HTTP {r.status_code} ({why}); {hint}, or restart "
                           f"it with --lora-modules {name}={remote_path}")
