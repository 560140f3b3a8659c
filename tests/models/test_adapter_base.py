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
