"""gradio_client against a launched app on the ci zoo: experts, analysis, fusion, side-by-side chat, bad inputs."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
EXAMPLES = ROOT / "examples"
N_BOTS = 6


@pytest.fixture(scope="module")
def fused(client):
    """Run one Graft fusion of the two LoRA experts (once for the module)."""
    recipe = (EXAMPLES / "recipe-graft.yaml").read_text()
    out = client.predict(recipe, "graft-api", api_name="/run_fusion")
    return out


def chat(client, text, image=None, columns=("base",), max_new=12):
    from gradio_client import handle_file

    files = [handle_file(str(image))] if image else []
    job = client.submit({"text": text, "files": files}, list(columns), max_new, 0.7, True, api_name="/chat")
    updates = [u for u in job]
    return updates, job.result()


def last_text(bot) -> str:
    assert bot and bot[-1]["role"] == "assistant", bot
    return bot[-1]["content"][0]["text"]


def test_list_experts(client):
    table = client.predict(api_name="/list_models")
    rows = {r[0]: dict(zip(table["headers"], r)) for r in table["data"]}
    assert {"base", "math-lora", "code-lora", "math-full"} <= set(rows)
    assert rows["math-lora"]["kind"] == "lora" and rows["math-lora"]["rank"] not in ("—", None)
    assert rows["math-full"]["kind"] == "full" and rows["math-lora"]["base"] == "base"
    assert all(r["status"] == "ready" for r in rows.values())


def test_analysis_and_live_threshold(client):
    out = client.predict("math", None, ["math-lora", "code-lora"], 4, 1e-3, 0.2, api_name="/run_analysis")
    bars, experts, pairs, which, heat, status = out
    assert bars["type"] == "plotly" and heat["type"] == "plotly"
    assert [r[0] for r in experts["data"]] == ["math-lora", "code-lora"]
    assert pairs["data"][0][0] == "math-lora + code-lora"
    assert "Analysed 2 expert" in status
    # the threshold re-colours from the stored result: no recomputation, instant
    t = time.perf_counter()
    _, low, _ = client.predict(0.0, api_name="/recolour")
    _, high, _ = client.predict(1.0, api_name="/recolour")
    assert time.perf_counter() - t < 10
    assert {r[4] for r in low["data"]} == {"yes"} and {r[4] for r in high["data"]} == {"no"}


def test_graft_fusion(client, fused):
    summary, gates, guide, recipe_yaml, variants, chosen, next_name, overwrite = fused
    assert "Fused" in summary and "graft-api" in summary and "CPU" in summary
    plot = gates["value"] if gates.get("__type__") == "update" else gates  # shown or hidden per method
    assert plot["type"] == "plotly" and "How to read" in guide and overwrite is False
    assert "method: graft" in recipe_yaml and "graft-api" in recipe_yaml
    assert variants["data"][0][0] == "graft-api"
    zip_update, msg = client.predict("graft-api", api_name="/export_variant")
    import zipfile

    assert "Exported **graft-api**" in msg
    names = zipfile.ZipFile(zip_update["value"]).namelist()
    assert any(n.endswith("recipe.yaml") for n in names) and any(n.endswith("adapter_config.json") for n in names)


def test_chat_side_by_side_image_and_code(client, fused):
    cols = ["base", "math-lora", "graft-api", "math-full"]
    updates, final = chat(client, "How many circles are there?", EXAMPLES / "images" / "math-shapes.png", cols)
    bots, status = final[:N_BOTS], final[N_BOTS]
    assert len(updates) >= 3, "answers should stream in several updates"
    for j, name in enumerate(cols):
        assert bots[j][0]["role"] == "user" and bots[j][0]["content"][0]["type"] == "file"
        assert last_text(bots[j]).strip(), name
    assert bots[len(cols)] == []
    assert status.startswith("4/4 answered")
    code = json.loads((EXAMPLES / "prompts.json").read_text())[-1]["text"]
    updates, final = chat(client, code, None, cols[:3])
    assert final[N_BOTS].startswith("3/3 answered")
    for j in range(3):
        assert len(final[j]) == 4 and last_text(final[j]).strip()  # second turn in the same session
    # streamed: some intermediate update showed a shorter answer than the final one
    partial = [u[0][-1]["content"][0]["text"] for u in updates if u[0] and u[0][-1]["role"] == "assistant"]
    assert len(set(partial)) >= 2
    regen = client.predict(cols[:3], 8, 0.7, True, api_name="/regenerate")
    assert regen[N_BOTS].startswith("3/3 answered")
    client.predict(api_name="/clear")


def test_stop_ends_generation(client):
    from gradio_client import handle_file

    job = client.submit({"text": "Describe the picture.", "files": [handle_file(str(EXAMPLES / "images" / "medical-slide.png"))]},
                        ["base", "math-lora"], 1024, 0.7, True, api_name="/chat")
    deadline = time.time() + 60
    while time.time() < deadline and not any(
            (u[0] and u[0][-1]["role"] == "assistant" and u[0][-1]["content"][0]["text"] not in ("*waiting…*", "*loading model…*"))
            for u in job.outputs()):
        time.sleep(0.05)
    client.predict(api_name="/stop")
    final = job.result(timeout=60)
    assert "answered" in final[N_BOTS]
    client.predict(api_name="/clear")


def test_bad_inputs_show_clear_messages_and_the_app_keeps_working(client, app_server, tmp_path):
    """Each failure leaves the outputs as they were and puts a readable message in the status box."""
    def status_of_chat(*args):
        _, final = chat(client, *args)
        return final[N_BOTS]

    # a non-image upload: the app's own sentence in the status box (not gradio's "Invalid file type")
    note = tmp_path / "notes.txt"
    note.write_text("hello")
    msg = status_of_chat("what is this?", note, ["base"])
    assert msg.startswith("⚠") and "'notes.txt' is not an image" in msg
    # ... and a file that claims to be an image but is not is refused by the app's own check
    fake_png = tmp_path / "fake.png"
    fake_png.write_text("not a png")
    msg = status_of_chat("what is this?", fake_png, ["base"])
    assert msg.startswith("⚠") and "is not an image" in msg and "Traceback" not in msg
    # a corrupt adapter folder (in the work dir: folders outside the allowed ones get one generic refusal)
    bad = app_server[1].studio.work_dir / "corrupt-lora"
    bad.mkdir()
    (bad / "adapter_config.json").write_text(json.dumps({"peft_type": "LORA", "r": 8}))
    (bad / "adapter_model.safetensors").write_bytes(b"\x00garbage" * 10)
    out = client.predict(str(bad), "corrupt", "math", "auto", api_name="/add_expert")
    assert out[1].startswith("⚠") and "unreadable" in out[1]
    (bad / "adapter_config.json").write_text("{oops")
    out = client.predict(str(bad), "corrupt", "math", "auto", api_name="/add_expert")
    assert "adapter_config.json" in out[1] and "unreadable" in out[1]
    # a hub id while offline
    out = client.predict("someone/not-in-the-cache", "", "", "auto", api_name="/add_expert")
    assert "hub id in its local cache" in out[1] and "HF_HUB_OFFLINE" in out[1]
    # a recipe with an unknown key
    recipe = (EXAMPLES / "recipe-graft.yaml").read_text() + "\ntemperature: 3\n"
    out = client.predict(recipe, "bad-recipe", api_name="/run_fusion")
    assert "unknown key(s) ['temperature']" in out[0]
    out = client.predict(recipe, api_name="/load_recipe")
    assert "unknown key(s) ['temperature']" in out[-1]
    out = client.predict("/no/such/manifest.yaml", api_name="/load_manifest")
    assert "cannot be opened" in out[1] and "does not exist" not in out[1]
    out = client.predict(str(app_server[1].studio.work_dir / "no-such-manifest.yaml"), api_name="/load_manifest")
    assert "does not exist" in out[1]
    assert "unknown model(s) ['nope']" in status_of_chat("hi", None, ["base", "nope"])
    # still working, and nothing half-added
    table = client.predict(api_name="/list_models")
    assert "corrupt" not in {r[0] for r in table["data"]}
    assert status_of_chat("hi", None, ["base"]).startswith("1/1 answered")
    client.predict(api_name="/clear")


def test_paths_outside_the_allowed_folders_get_one_answer(client, tmp_path):
    """Paths outside the allowed folders over the API: missing, a file, a folder without config.json: the same words."""
    (tmp_path / "f.yaml").write_text("x: 1\n")
    (tmp_path / "d").mkdir()
    refs = [str(tmp_path / "missing"), str(tmp_path / "f.yaml"), str(tmp_path / "d")]
    for api, extra in (("/load_manifest", ()), ("/set_base", ()), ("/add_expert", ("", "", "auto"))):
        answers = {client.predict(ref, *extra, api_name=api)[1].replace(ref, "PATH") for ref in refs}
        assert len(answers) == 1 and "cannot be opened" in answers.pop(), api


def test_add_a_real_expert_by_folder(client, app_server):
    _, ctx = app_server
    path = ctx.studio.manifest.expert("finance-lora").path
    out = client.predict(path, "finance-again", "finance", "auto", api_name="/add_expert")
    assert "Added **finance-again** (lora)" in out[1]
    assert "finance-again" in {r[0] for r in out[0]["data"]}
    out = client.predict(path, "finance-again", "finance", "auto", api_name="/add_expert")
    assert "already loaded" in out[1]
    ctx.studio.remove_expert("finance-again")


def test_stop_is_tied_to_the_browser_session(client, app_server):
    from types import SimpleNamespace

    from gradio_client import Client

    url, ctx = app_server
    # what the browser's Send does beside the queued request: arm this session's Chat stop event
    ev = ctx.arm(SimpleNamespace(session_hash=client.session_hash), "chat")
    other = Client(url, verbose=False)
    other.predict(api_name="/stop")  # another browser session: nothing of its own runs, this one goes on
    assert not ev.is_set()
    assert client.predict(api_name="/stop") == "■ stopping…"
    assert ev.is_set()
    chat(client, "hi", None, ["base"], max_new=8)  # it picks up the Stop pressed while it was queued
    assert f"{client.session_hash}:chat" not in ctx._stops  # over: a later Stop has nothing to stop
    client.predict(api_name="/clear")


def test_analysis_on_an_uploaded_jsonl(client, tmp_path):
    from gradio_client import handle_file
    from PIL import Image

    Image.new("RGB", (56, 56), "white").save(tmp_path / "a.png")
    rows = [{"id": "u1", "messages": [{"role": "user", "content": [{"type": "image", "image": "pics/a.png"},
                                                                   {"type": "text", "text": "What is it?"}]}], "answer": "x"},
            {"id": "u2", "messages": [{"role": "user", "content": [{"type": "text", "text": "2 + 2?"}]}], "answer": "4"}]
    (tmp_path / "mine.jsonl").write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    files = [handle_file(str(tmp_path / "mine.jsonl")), handle_file(str(tmp_path / "a.png"))]
    out = client.predict("uploaded JSONL", files, ["math-lora"], 2, 1e-3, 0.2, api_name="/run_analysis")
    assert "your JSONL" in out[-1] and out[1]["data"][0][0] == "math-lora"
    # an image the JSONL names but that was not uploaded: a clear message
    out = client.predict("uploaded JSONL", files[:1], ["math-lora"], 2, 1e-3, 0.2, api_name="/run_analysis")
    assert "upload it together with the JSONL" in out[-1]


def test_a_recipe_loads_back_into_the_form(client):
    recipe = (EXAMPLES / "recipe-graft.yaml").read_text().replace("gates: dual", "gates: local").replace(
        "layers: all", "layers: [1, 2]")
    out = client.predict(recipe, api_name="/load_recipe")
    method, experts, modules, lo, hi, vision = out[:6]
    assert method == "graft" and experts == ["math-lora", "code-lora"] and (lo, hi) == (1, 2) and vision is False
    assert "local" in out and "Loaded a **graft** recipe" in out[-1]
