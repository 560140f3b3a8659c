"""Remote entries and `server:` in manifests: parsing, routing, and errors that name the bad field."""

from __future__ import annotations

import pytest
import yaml

from graft_ui.models.manifest import RemoteModel, load_manifest


def write(tmp_path, data) -> str:
    (tmp_path / "base").mkdir(exist_ok=True)
    (tmp_path / "lora").mkdir(exist_ok=True)
    path = tmp_path / "m.yaml"
    path.write_text(yaml.safe_dump(data))
    return str(path)


BASE = {"name": "base", "path": "base"}


def test_remote_entry_and_server_routing(tmp_path, monkeypatch):
    m = load_manifest(write(tmp_path, {
        "base": BASE,
        "experts": [
            {"name": "math-lora", "path": "lora", "kind": "lora", "domain": "math"},
            {"name": "big", "endpoint": "http://gpu:8000/v1/", "model": "big-math", "api_key_env": "VLLM_KEY",
             "kind": "lora", "domain": "math"},
            {"name": "full-x", "path": "base", "kind": "full"},
        ],
        "server": {"endpoint": "http://vllm:8000/v1", "api_key_env": "K", "base_model": "Qwen/Qwen2-VL-2B-Instruct"},
    }))
    big = m.expert("big")
    assert big.remote_only and big.remote == RemoteModel("http://gpu:8000/v1", "big-math", "VLLM_KEY")
    # server: every LoRA expert by its own name, the base by base_model; full experts stay local
    assert m.remote_of(m.expert("math-lora")) == RemoteModel("http://vllm:8000/v1", "math-lora", "K")
    assert m.remote_of(m.base) == RemoteModel("http://vllm:8000/v1", "Qwen/Qwen2-VL-2B-Instruct", "K")
    assert m.remote_of(m.expert("full-x")) is None
    assert m.remote_of(big) == big.remote  # its own endpoint wins
    assert [e.name for e in m.local_experts()] == ["math-lora", "full-x"]
    # saved and read back the same
    m.save(tmp_path / "again.yaml")
    again = load_manifest(tmp_path / "again.yaml")
    assert again.expert("big") == big and again.server == m.server


@pytest.mark.parametrize("entry, words", [
    ({"name": "x", "endpoint": "ftp://gpu/v1", "model": "m"}, ["endpoint='ftp://gpu/v1'", "http://"]),
    ({"name": "x", "endpoint": "http://gpu:8000/v1"}, ["'model' is required"]),
    ({"name": "x", "model": "m"}, ["'endpoint'"]),
    ({"name": "x", "endpoint": "http://gpu/v1", "model": "m", "api_key_env": "1-bad"}, ["api_key_env='1-bad'"]),
    ({"name": "x", "endpoint": "http://gpu/v1", "model": "  "}, ["model='  '"]),
    ({"name": "x", "endpoint": "http://gpu/v1", "model": "m", "key": "s3cret"}, ["unknown key(s) ['key']"]),
    ({"name": "x", "endpoint": "http://gpu/v1", "model": "m", "kind": "qlora"}, ["kind='qlora'"]),
])
def test_bad_remote_entries_are_named(tmp_path, entry, words):
    with pytest.raises(ValueError) as err:
        load_manifest(write(tmp_path, {"base": BASE, "experts": [entry]}))
    assert all(w in str(err.value) for w in words), str(err.value)
    assert "experts[0]" in str(err.value) or "'x'" in str(err.value)


@pytest.mark.parametrize("server, words", [
    ({"endpoint": "gpu:8000"}, ["manifest server", "endpoint='gpu:8000'"]),
    ({"url": "http://gpu/v1"}, ["'endpoint'"]),
    ({"endpoint": "http://gpu/v1", "max_loras": 4}, ["unknown key(s) ['max_loras']"]),
    ({"endpoint": "http://gpu/v1", "api_key_env": "no spaces"}, ["api_key_env='no spaces'"]),
])
def test_bad_server_is_named(tmp_path, server, words):
    with pytest.raises(ValueError) as err:
        load_manifest(write(tmp_path, {"base": BASE, "server": server}))
    assert all(w in str(err.value) for w in words), str(err.value)


def test_server_as_a_plain_url_and_remote_only_base_refused(tmp_path):
    m = load_manifest(write(tmp_path, {"base": BASE, "server": "http://vllm:8000/v1"}))
    assert m.server.endpoint == "http://vllm:8000/v1" and m.remote_of(m.base) is None
    with pytest.raises(ValueError, match="the base needs a local 'path'"):
        load_manifest(write(tmp_path, {"base": {"name": "b", "endpoint": "http://g/v1", "model": "b"}}))


def test_find_matches_a_recipe_expert_by_folder_then_name_and_domains_of_dedupes(tmp_path, monkeypatch):
    from graft_ui.models.manifest import DatasetEntry, Manifest, ModelEntry
    from graft_ui.recipe import ExpertRef

    (tmp_path / "m").mkdir()
    math_e = ModelEntry("math", str(tmp_path / "m"), "lora", "math")
    code_e, chart_e = ModelEntry("code", "/elsewhere/c", "lora", "code"), ModelEntry("chart", "/x/ch", "full", "chart")
    man = Manifest(ModelEntry("base", "/b"), (math_e, code_e, chart_e), {"math": DatasetEntry("m.jsonl"),
                                                                         "code": DatasetEntry("c.jsonl")})
    monkeypatch.chdir(tmp_path)
    assert man.find(ExpertRef("m")) is math_e  # a relative spelling of the same folder
    assert man.find(ExpertRef("/moved/c", name="code")) is code_e  # the folder moved: the name decides
    assert man.find(ExpertRef("/nowhere")) is None
    found = [man.find(ExpertRef(p)) for p in ("/x/ch", "/elsewhere/c", "m", "/nowhere", "/elsewhere/c")]
    assert man.domains_of(found) == ["code", "math"]  # chart has no dataset; None skipped; code once
