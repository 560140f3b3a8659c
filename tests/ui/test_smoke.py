"""The Blocks build without launching; tabs plug in through graft_ui.ui.app.TABS."""

from __future__ import annotations

import sys
import types

import pytest


@pytest.fixture(scope="module")
def ctx(zoo_manifest_path, tmp_path_factory):
    from graft_ui.ui.app import make_context

    return make_context(zoo_manifest_path, device="cpu", work_dir=tmp_path_factory.mktemp("smoke"))


def _api_names(app) -> set[str]:
    return {fn.api_name for fn in app.fns.values() if fn.api_name}


def test_blocks_build_without_launching(ctx):
    import gradio as gr

    from graft_ui.ui.app import build_app

    app = build_app(ctx)
    assert isinstance(app, gr.Blocks)
    tabs = [b for b in app.blocks.values() if isinstance(b, gr.Tab)]
    ids = {t.id for t in tabs}
    assert {"experts", "analyze", "fuse", "chat"} <= ids
    assert {"list_models", "run_analysis", "recolour", "compose_recipe", "run_fusion", "load_recipe",
            "export_variant", "chat", "regenerate", "stop", "clear", "add_expert", "fuse"} <= _api_names(app)
    # every model-running event shares one concurrency group with limit 1
    gpu = [fn for fn in app.fns.values() if fn.api_name in ("run_analysis", "fuse", "run_fusion", "chat", "regenerate")]
    assert len(gpu) == 5 and {fn.concurrency_id for fn in gpu} == {"gpu"}
    assert all(fn.concurrency_limit == 1 for fn in gpu)
    # gradio's one cap is off (it refused votes); only model runs are capped, by ui/admission.py
    from graft_ui.ui.app import QUEUE_MAX_SIZE

    assert app._queue.max_size is None and app._queue.push.__name__ == "admit" and 0 < QUEUE_MAX_SIZE <= 64
    # nothing was loaded to build the UI
    assert ctx.pool.memory()["total_bytes"] == 0


def test_launch_defaults_are_safe():
    from graft_ui.ui.app import launch_kwargs

    kw = launch_kwargs()
    assert kw["server_name"] == "127.0.0.1" and kw["auth"] is None and kw["max_file_size"]
    kw = launch_kwargs(host="0.0.0.0", auth=("u", "p"))
    assert kw["auth"] == ("u", "p") and kw["server_name"] == "0.0.0.0"


def test_a_new_tab_module_plugs_in(ctx, monkeypatch):
    import gradio as gr

    from graft_ui.ui import app as app_mod
    from graft_ui.ui import experts

    seen = {}

    def render(c):
        seen["ctx"] = c
        gr.Markdown("arena goes here", elem_id="fake-arena")

    fake = types.ModuleType("graft_ui.ui.fake_arena")
    fake.render, fake.TITLE = render, "⑤ Fake arena"
    app = app_mod.build_app(ctx, tabs=[("experts", experts), ("fake_arena", fake)])
    titles = [b.label for b in app.blocks.values() if isinstance(b, gr.Tab)]
    assert titles == ["① Experts", "⑤ Fake arena"]
    assert seen["ctx"] is ctx and ctx.votes is None or isinstance(ctx.votes, str)
    assert callable(ctx.on_models_changed) and ctx.gpu == {"concurrency_id": "gpu", "concurrency_limit": 1}
    with pytest.raises(AttributeError):  # a tab without render fails loudly, it is not skipped
        app_mod.build_app(ctx, tabs=[("broken", types.ModuleType("graft_ui.ui.broken"))])


def test_app_py_parses_its_flags():
    import importlib.util
    from pathlib import Path

    spec = importlib.util.spec_from_file_location("graft_app", Path(__file__).resolve().parents[2] / "app.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    a = mod.parse_args([])
    assert (a.host, a.port, a.device, a.auth, a.manifest) == ("127.0.0.1", 7860, "auto", None, None)
    a = mod.parse_args(["--manifest", "m.yaml", "--zoo-profile", "ci", "--host", "0.0.0.0", "--port", "9000",
                        "--auth", "u:p", "--device", "cpu"])
    assert (a.manifest, a.zoo_profile, a.host, a.port, a.auth, a.device) == ("m.yaml", "ci", "0.0.0.0", 9000, "u:p", "cpu")


def test_app_py_starts_on_the_zoo(zoo_manifest_path, tmp_path):
    """The README's first command, on the ci zoo: it serves the app on 127.0.0.1."""
    import os
    import subprocess
    import time
    import urllib.request
    from pathlib import Path

    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    root = Path(__file__).resolve().parents[2]
    env = {**os.environ, "GRAFT_STUDIO_DIR": str(tmp_path), "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen([sys.executable, "app.py", "--zoo-profile", "ci", "--port", str(port), "--device", "cpu"],
                            cwd=root, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        deadline, html = time.time() + 120, ""
        while time.time() < deadline and proc.poll() is None:
            try:
                html = urllib.request.urlopen(f"http://127.0.0.1:{port}/", timeout=2).read().decode()
                break
            except OSError:
                time.sleep(0.5)
        assert "Graft Studio" in html, proc.stdout.read() if proc.poll() is not None else "no answer"
    finally:
        proc.terminate()
        proc.wait(timeout=30)
