"""A prebuilt base is taken when it is the base the build would train, and only then."""

import json
import logging

import pytest

from tiny_profile import tiny_profile


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    """A tiny zoo that trained its own base, and that base exported as a prebuilt one."""
    from graft_ui.zoo.build import build_zoo
    from graft_ui.zoo.export import export_base

    root = tmp_path_factory.mktemp("prebuilt")
    zoo = build_zoo(root / "zoo", tiny_profile(base_steps=3), progress=False)
    return zoo, export_base(zoo, root / "pre")


def _no_base_training(monkeypatch):
    import graft_ui.zoo.build as build_mod

    calls = []
    real = build_mod._train_base_parallel
    monkeypatch.setattr(build_mod, "_train_base_parallel", lambda *a, **k: (calls.append(1), real(*a, **k))[1])
    return calls


def test_export_writes_the_base_with_its_settings_data_hash_and_weights_hash(exported):
    import hashlib

    from graft_ui.zoo.prebuilt import train_data_hash

    zoo, pre = exported
    meta = json.loads((pre / "prebuilt.json").read_text())
    assert meta["base_settings"] == tiny_profile(base_steps=3).base_settings()
    assert meta["train_data_sha256"] == train_data_hash(zoo / "data")
    weights = (pre / "base" / "model.safetensors").read_bytes()
    assert weights == (zoo / "base" / "model.safetensors").read_bytes()
    assert meta["weights_sha256"] == hashlib.sha256(weights).hexdigest()
    assert {"tokenizer.json", "config.json", "processor_config.json"} <= {f.name for f in (pre / "base").iterdir()}
    assert meta["parameters"]["total"] > 0 and set(meta["loss"]) == {"base (general)", "base (instruct)"}


def test_a_build_takes_the_prebuilt_base_and_trains_the_same_experts(exported, tmp_path, monkeypatch):
    zoo, pre = exported
    calls = _no_base_training(monkeypatch)
    from graft_ui.zoo.build import build_zoo

    snaps = []
    prof = tiny_profile(base_steps=3, prebuilt_base=str(pre))
    out = build_zoo(tmp_path / "zoo", prof, progress=False, report=snaps.append)
    assert calls == []  # the base was not trained
    expert_steps = 2 * sum(e.steps for e in prof.experts)  # the progress counts the steps this build runs
    assert snaps[-1]["total_steps"] == snaps[-1]["steps"] == expert_steps
    assert "base (prebuilt)" in {s["stage"] for s in snaps}
    info = json.loads((out / "build_info.json").read_text())
    assert info["base_prebuilt"]["weights_sha256"] == json.loads((pre / "prebuilt.json").read_text())["weights_sha256"]
    assert "tokenizer" not in info["stages_seconds"] and info["loss"]["base (general)"]
    # the same base, tokenizer and seeds: the experts are the ones the from-scratch build trained
    assert info["weights_hash"] == json.loads((zoo / "build_info.json").read_text())["weights_hash"]
    assert (out / "base" / "tokenizer.json").read_bytes() == (zoo / "base" / "tokenizer.json").read_bytes()


@pytest.mark.parametrize("spoil, says", [
    ("settings", "other base settings ['base_steps']"),
    ("data", "trained on other data"),
    ("weights", "are not the ones its prebuilt.json names"),
])
def test_a_prebuilt_base_that_does_not_fit_is_not_taken(exported, tmp_path, monkeypatch, caplog, spoil, says):
    import shutil

    from graft_ui.zoo.build import build_zoo

    _, pre = exported
    mine = tmp_path / "pre"
    shutil.copytree(pre, mine)
    meta = json.loads((mine / "prebuilt.json").read_text())
    if spoil == "data":
        meta["train_data_sha256"] = "0" * 64
    elif spoil == "weights":
        blob = bytearray((mine / "base" / "model.safetensors").read_bytes())
        blob[-1] ^= 1
        (mine / "base" / "model.safetensors").write_bytes(bytes(blob))
    (mine / "prebuilt.json").write_text(json.dumps(meta))
    calls = _no_base_training(monkeypatch)
    steps = 4 if spoil == "settings" else 3
    with caplog.at_level(logging.WARNING, logger="graft_ui.zoo.prebuilt"):
        out = build_zoo(tmp_path / "zoo", tiny_profile(base_steps=steps, prebuilt_base=str(mine)), progress=False)
    assert calls == [1] and says in caplog.text and str(mine) in caplog.text
    assert "base_prebuilt" not in json.loads((out / "build_info.json").read_text())


def test_export_refuses_a_zoo_that_took_another_zoos_base(tmp_path):
    from graft_ui.zoo.export import export_base

    (tmp_path / "build_info.json").write_text(json.dumps({"base_from": {"path": "/elsewhere/full"}, "settings": {}}))
    with pytest.raises(ValueError, match="took its base from '/elsewhere/full'"):
        export_base(tmp_path, tmp_path / "pre")
    assert not (tmp_path / "pre").exists()


def test_the_shipped_full_base_is_the_one_a_full_build_trains(tmp_path):
    """The full profile's settings and data are the shipped base's, so a first build skips the base
    (re-export it with `python -m graft_ui zoo export-base` after changing either)."""
    import hashlib

    from graft_ui.zoo import domains as D
    from graft_ui.zoo.prebuilt import META, prebuilt_folder, train_data_hash
    from graft_ui.zoo.profiles import DOMAINS, get_profile

    full = get_profile("full")
    folder = prebuilt_folder(full)
    meta = json.loads((folder / META).read_text())
    assert meta["base_settings"] == json.loads(json.dumps(full.base_settings()))
    assert meta["weights_sha256"] == hashlib.sha256((folder / "base" / "model.safetensors").read_bytes()).hexdigest()
    for d in DOMAINS:
        D.build_domain(d, tmp_path, full.domain_train, full.domain_eval, full.seed)
    D.build_domain("general", tmp_path, full.general_train, 0, full.seed)
    assert train_data_hash(tmp_path) == meta["train_data_sha256"]
