"""Server paths users give (manifest, base, expert, recipe paths, dataset file) must
lie under the allowed folders (`--allow-dir`); anything else gets one generic refusal, the same whether
it does not exist, is a file or is not a model folder. The page config shows no absolute server path."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest


@pytest.fixture(scope="module")
def ctx(zoo_manifest_path, tmp_path_factory):
    from graft_ui.ui.app import make_context

    return make_context(zoo_manifest_path, device="cpu", work_dir=tmp_path_factory.mktemp("roots-work"))


@pytest.fixture(scope="module")
def outside(tmp_path_factory) -> dict[str, str]:
    """Three kinds of wrong path outside every allowed folder."""
    d = tmp_path_factory.mktemp("outside")
    (d / "a-file.yaml").write_text("base: {path: x}\n")
    (d / "no-config").mkdir()
    (d / "no-config" / "manifest.yaml").write_text("base: {path: .}\n")
    return {"missing": str(d / "nope"), "file": str(d / "a-file.yaml"), "no config.json": str(d / "no-config")}


def _same(messages: dict[str, str], refs: dict[str, str]) -> set[str]:
    return {msg.replace(repr(refs[k]), "PATH") for k, msg in messages.items()}


def _refusal(fn, ref) -> str:
    from graft_ui.models.roots import NotAllowedError

    with pytest.raises(NotAllowedError) as info:
        fn(ref)
    return str(info.value)


@pytest.mark.parametrize("action", ["load_manifest", "set_base", "add_expert", "recipe", "dataset", "calibration"])
def test_outside_the_roots_every_answer_is_the_same(ctx, outside, action):
    studio = ctx.studio
    call = {
        "load_manifest": studio.load_manifest,
        "set_base": studio.set_base,
        "add_expert": studio.add_expert,
        "recipe": lambda p: studio.parse_recipe(f"method: graft\nbase: {p}\nexperts: [{{path: {p}}}, {{path: {p}}}]\n"),
        "dataset": lambda p: studio.analyze(p, ["math-lora"], k=1),
        "calibration": lambda p: studio.parse_recipe(
            "method: graft\nexperts: [math-lora, code-lora]\n" f"calibrate: {{dataset: {p}}}\n"),
    }[action]
    messages = {kind: _refusal(call, ref) for kind, ref in outside.items()}
    assert len(_same(messages, outside)) == 1, messages
    assert "allow" in messages["missing"] and "does not exist" not in messages["missing"]
    assert studio.manifest.name != "custom"  # nothing changed


def test_inside_the_roots_the_detailed_messages_stay(ctx):
    work = ctx.studio.work_dir
    (work / "plain").mkdir(exist_ok=True)
    with pytest.raises(FileNotFoundError, match="does not exist"):
        ctx.studio.load_manifest(str(work / "nope.yaml"))
    with pytest.raises(ValueError, match="no config.json"):
        ctx.studio.set_base(str(work / "plain"))
    # the zoo (a default root) and the startup manifest's folders load
    assert ctx.studio.load_manifest(ctx.zoo_manifest or ctx.studio.manifest.source).experts


def test_traversal_and_symlinks_out_of_a_root_are_refused(ctx, outside):
    from graft_ui.models.roots import NotAllowedError

    work = ctx.studio.work_dir
    escape = str(work / ".." / ".." / Path(outside["no config.json"]).relative_to("/"))
    link = work / "link-out"
    link.symlink_to(outside["no config.json"])
    for ref in (escape, str(link), "../../../../etc/passwd", "etc/passwd", "x" * 5000, "a\x00b"):
        with pytest.raises(NotAllowedError):
            ctx.studio.roots.check(ref)


def test_allow_dir_replaces_the_default_roots(zoo_manifest_path, tmp_path, outside):
    from graft_ui.ui.app import make_context

    extra = Path(outside["no config.json"]).parent
    c = make_context(zoo_manifest_path, device="cpu", work_dir=tmp_path / "w", allow_dirs=[extra])
    with pytest.raises(ValueError, match="no config.json"):  # now inside a root: the detailed message
        c.studio.set_base(outside["no config.json"])
    roots = {str(r) for r in c.studio.roots.roots}
    assert str(extra.resolve()) in roots and str((tmp_path / "w").resolve()) in roots
    import app as app_py

    assert app_py.parse_args(["--allow-dir", "/a", "--allow-dir", "/b"]).allow_dir == ["/a", "/b"]


def test_the_page_config_shows_no_absolute_server_path(ctx):
    from graft_ui.ui.app import build_app
    from graft_ui.zoo import zoo_root

    config = json.dumps(build_app(ctx).config, default=str)
    for secret in {str(zoo_root().resolve()), str(zoo_root()), str(ctx.studio.work_dir),
                   str(Path(__file__).resolve().parents[2])}:
        assert secret not in config, re.findall(re.escape(secret) + r"[^\"]*", config)[:3]
