"""Hostile inputs on every named gradio_client endpoint: wrong types, huge strings, traversal strings,
non-uploaded files, non-images. Each refusal must say what was wrong (no `error: null`, no
traceback), and the app keeps serving. NaN/inf cannot be sent through gradio_client (its JSON
refuses them); the library checks are in tests/test_checks.py and tests/test_recipe.py."""

from __future__ import annotations

import time

import _arena_ui_api as _api

HIDDEN = "has not enabled verbose error reporting"  # gradio's text for an exception without a message
BAD = {
    "huge": "x" * 1_000_000,
    "dict": {"a": 1},
    "list": [1, 2],
    "number": 12345,
    "traversal": "../../../../etc/passwd",
    "file": {"path": "/etc/passwd", "meta": {"_type": "gradio.FileData"}},
}
PARAMS_PER_ENDPOINT = 6  # the first six inputs of each endpoint (the Fuse form has 34)
BUDGET_S = 150


def test_every_endpoint_names_every_refusal_and_keeps_serving(launch_app):
    from gradio_client import Client, handle_file

    app = launch_app()
    c = Client(app.url, verbose=False, ssl_verify=False)
    api = c.view_api(return_format="dict", print_info=False)["named_endpoints"]
    not_named, calls, t0 = [], 0, time.perf_counter()
    for name, info in api.items():
        params = info["parameters"][:PARAMS_PER_ENDPOINT]
        if not params:
            continue
        # valid-looking defaults, with no remote example files (the app is offline)
        defaults = [p.get("parameter_default") if p.get("parameter_has_default") else None for p in info["parameters"]]
        for i, p in enumerate(params):
            for label, bad in BAD.items():
                assert time.perf_counter() - t0 < BUDGET_S, f"fuzz over budget after {calls} calls"
                args = list(defaults)
                args[i] = bad
                calls += 1
                try:
                    c.submit(*args, api_name=name).result(timeout=60)
                except Exception as exc:  # noqa: BLE001 - every refusal is checked for a message
                    msg = str(exc)
                    if not msg.strip() or HIDDEN in msg or "Traceback" in msg or msg.strip() == "None":
                        not_named.append(f"{name}({p['parameter_name']}={label}): {type(exc).__name__}: {msg[:120]!r}")
    # a text file posing as the prompt's image
    bogus = app.log.parent / "not-an-image.png"
    bogus.write_text("plain text")
    try:
        _api.call(c, {"text": "hi", "files": [handle_file(str(bogus))]}, _api.BLIND, _api.POOL, None, None, None, 2,
                  0.7, True, api_name="/arena_send")
        raise AssertionError("a text file was accepted as an image")
    except Exception as exc:  # noqa: BLE001
        assert "not an image" in str(exc), exc
    assert not not_named, f"{len(not_named)} of {calls} refusals say nothing: {not_named[:8]}"
    assert app.alive(), app.log_tail()
    fresh = _api.client(app.url)
    _api.send(fresh, "still serving?", max_new_tokens=2)
    assert _api.vote(fresh, "tie")["new"]
    print(f"api fuzz: {calls} hostile calls over {len(api)} endpoints in {time.perf_counter() - t0:.0f} s, all named")
