"""A fused adapter offered to a real server: `transformers serve` has no /v1/load_lora_adapter, so
the adapter stays local and the message says what to run (vLLM would take it at run time)."""

from __future__ import annotations

from graft_ui.chat.serving import publish_adapter
from graft_ui.models.manifest import ServerConfig


def test_server_without_runtime_adapters(tserve, zoo_dir, tmp_path):
    shared = tmp_path / "shared"
    shared.mkdir()
    server = ServerConfig(tserve, shared_dir=str(shared), server_dir="/srv/shared")
    out = publish_adapter(server, "graft-1", zoo_dir / "experts/math-lora")
    assert out.remote is None
    assert "HTTP 404" in out.message and "VLLM_ALLOW_RUNTIME_LORA_UPDATING=True" in out.message
    assert "--lora-modules graft-1=/srv/shared/graft-1" in out.message
    assert (shared / "graft-1" / "adapter_config.json").is_file()  # copied where the server can read it


def test_server_down(dead_endpoint, zoo_dir, tmp_path):
    out = publish_adapter(ServerConfig(dead_endpoint, shared_dir=str(tmp_path)), "g", zoo_dir / "experts/math-lora")
    assert out.remote is None and "could not reach" in out.message
