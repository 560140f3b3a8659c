"""serve-plan: the vLLM command line for a manifest (ranks and adapters read from the folders)."""

from __future__ import annotations

import json

import pytest
import yaml

from graft_ui.chat.serving import publish_adapter, vllm_plan, vllm_rank
from graft_ui.commands import main
from graft_ui.models.loading import adapter_config
from graft_ui.models.manifest import ServerConfig, load_manifest
from graft_ui.zoo import ensure_zoo


@pytest.fixture(scope="module")
def zoo():
    return ensure_zoo("ci")


def test_serve_plan_lists_every_lora_expert(zoo, capsys):
    assert main(["serve-plan", "--zoo", str(zoo), "--json", "--port", "8123"]) == 0
    argv = json.loads(capsys.readouterr().out)
    m = load_manifest(zoo)
    loras = [e for e in m.experts if e.kind == "lora"]
    assert argv[:3] == ["vllm", "serve", m.base.path] and "--enable-lora" in argv
    assert argv[argv.index("--port") + 1] == "8123"
    modules = argv[argv.index("--lora-modules") + 1:argv.index("--max-loras")]
    assert modules == [f"{e.name}={e.path}" for e in loras]
    assert int(argv[argv.index("--max-loras") + 1]) >= len(loras)
    ranks = sorted(adapter_config(e.path)["r"] for e in loras)
    # room for a Graft-fused adapter of the two largest (rank r_b + r_g), rounded to a rank vLLM accepts
    assert int(argv[argv.index("--max-lora-rank") + 1]) == vllm_rank(ranks[-1] + ranks[-2])
    assert main(["serve-plan", "--zoo", str(zoo)]) == 0
    text = capsys.readouterr().out
    assert text.startswith("VLLM_ALLOW_RUNTIME_LORA_UPDATING=True vllm serve") and "server: {endpoint:" in text


def test_vllm_rank_and_a_manifest_without_adapters(tmp_path, zoo):
    assert [vllm_rank(r) for r in (1, 8, 9, 40, 512)] == [8, 8, 16, 64, 512]
    with pytest.raises(ValueError, match="above vLLM's largest"):
        vllm_rank(513)
    path = tmp_path / "m.yaml"
    path.write_text(yaml.safe_dump({"base": {"path": str(zoo / "base")},
                                    "experts": [{"name": "f", "path": str(zoo / "experts/math-full")}]}))
    with pytest.raises(ValueError, match="no local LoRA experts"):
        vllm_plan(load_manifest(path))
    assert main(["serve-plan", "--manifest", str(path)]) == 1


def test_publish_without_a_shared_folder_says_what_to_run(zoo):
    out = publish_adapter(ServerConfig("http://127.0.0.1:1/v1"), "fused-1", zoo / "experts/math-lora")
    assert out.remote is None and "server.shared_dir" in out.message and "--lora-modules fused-1=" in out.message
    with pytest.raises(ValueError, match="not a LoRA adapter folder"):
        publish_adapter(ServerConfig("http://127.0.0.1:1/v1"), "x", zoo / "base")
