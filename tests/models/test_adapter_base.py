"""An adapter put on another base than the one its adapter_config.json records is refused by every
loader (models.loading: eval, chat pool, analysis all go through it), as the merge engine does,
unless the user overrides it explicitly."""

import logging

import pytest

from graft_ui.commands import main
from graft_ui.models.loading import attach_adapter, load_model


def test_load_model_refuses_an_adapter_on_another_base(zoo):
    with pytest.raises(ValueError, match="was trained on base .*other-base.*--allow-base-mismatch"):
        load_model(zoo["lora_other"], base=zoo["base"])


def test_attach_adapter_refuses_it_too(zoo):
    model = load_model(zoo["base"])
    with pytest.raises(ValueError, match="lora-other.*was trained on base"):
        attach_adapter(model, zoo["lora_other"], "x")
    assert attach_adapter(model, zoo["lora_a"], "a") is not None  # its own base: fine


def test_the_explicit_override_loads_it_with_a_warning(zoo, caplog):
    with caplog.at_level(logging.WARNING):
        assert load_model(zoo["lora_other"], base=zoo["base"], allow_base_mismatch=True) is not None
    assert "base mismatch allowed" in caplog.text


def test_eval_cli_refuses_and_names_the_override(zoo, tmp_path, caplog):
    manifest = tmp_path / "manifest.yaml"
    manifest.write_text(f"name: t\nbase: {{name: base, path: {zoo['base']}}}\nexperts: []\ndatasets: {{}}\n")
    code = main(["eval", "--manifest", str(manifest), "--model", str(zoo["lora_other"]), "--out", str(tmp_path / "o"),
                 "--quiet"])
    assert code == 1 and "--allow-base-mismatch" in caplog.text


def test_the_app_refuses_it_too_unless_allow_a_different_base_is_ticked(zoo, tmp_path):
    """App side: Experts' "add" checks the recorded base against the manifest's base
    (it used to accept it and fail later in chat, naming a CLI flag); the checkbox's override loads it
    in the chat pool, with a warning."""
    from graft_ui.models.manifest import Manifest, ModelEntry
    from graft_ui.studio import Studio

    studio = Studio(Manifest(base=ModelEntry(name="base", path=str(zoo["base"]))), device="cpu", work_dir=tmp_path)
    try:
        with pytest.raises(ValueError, match="was trained on base .*other-base.*allow a different base"):
            studio.add_expert(str(zoo["lora_other"]), name="other")
        assert "other" not in studio.pool.names() and not studio.manifest.experts
        studio.add_expert(str(zoo["lora_a"]), name="mine")  # its own base: no checkbox needed
        studio.add_expert(str(zoo["lora_other"]), name="other", allow_base_mismatch=True)
        rows = {r["name"]: r["status"] for r in studio.model_rows()}
        assert rows == {"base": "ready", "mine": "ready", "other": "ready"}
        studio.pool.load("other")  # the chat pool honours the override
        assert studio.pool.is_loaded("other")
        studio.remove_expert("other")
        # added again without the checkbox, the refusal is back
        with pytest.raises(ValueError, match="allow a different base"):
            studio.add_expert(str(zoo["lora_other"]), name="other")
    finally:
        studio.close()
