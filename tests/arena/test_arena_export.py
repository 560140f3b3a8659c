"""CSV / JSONL exports round-trip every field; the CLI writes them and prints the leaderboard."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from graft_ui.arena.export import EXPORT_COLUMNS, export_for_download, export_votes, read_csv, read_jsonl, to_text
from graft_ui.arena.store import VoteStore
from graft_ui.commands import main
from graft_ui.recipe import ExpertRef, Recipe

from _arena_helpers import REPO, worker_env

TRICKY = 'comma, "quotes", newline\nand CRLF\r\nand unicode: Übung 数学 ✓ =SUM(A1)'


@pytest.fixture
def filled(tmp_path):
    store = VoteStore.open(tmp_path / "votes.sqlite")
    recipe = Recipe(method="average", experts=(ExpertRef("math-lora"), ExpertRef("code-lora")), name="avg")
    store.record_vote(turn_id="b1:0", battle_id="b1", variant_a="fused", variant_b="math-lora", vote="a",
                      prompt=TRICKY, answer_a=TRICKY, answer_b="", settings={"max_new_tokens": 64, "top_p": 0.95},
                      recipe_a=recipe, note=TRICKY, expertise="math", domain="math", client_address="192.0.2.1",
                      image=b"\x89PNG\r\n\x1a\n" + b"0" * 20)
    store.record_vote(turn_id="b1:1", battle_id="b1", turn_index=1, variant_a="fused", variant_b="math-lora",
                      vote="both_bad", prompt="p2", answer_a="x", answer_b="y")
    store.record_vote(turn_id="b2:0", battle_id="b2", variant_a="base", variant_b="code-lora", vote="tie",
                      prompt="p3", answer_a="", answer_b="", blind=False)
    yield store
    store.close()


@pytest.mark.parametrize("fmt", ["csv", "jsonl"])
def test_round_trip(filled, tmp_path, fmt):
    votes = filled.votes()
    out = export_votes(votes, tmp_path / f"votes.{fmt}")
    back = read_csv(out) if fmt == "csv" else read_jsonl(out)
    assert back == votes
    assert back[0].recipe_a["experts"][0]["path"] == "math-lora" and back[0].image_sha256


def test_jsonl_is_one_battle_turn_per_line_with_answers_and_recipes(filled, tmp_path):
    out = export_votes(filled.votes(), tmp_path / "v.jsonl")
    lines = out.read_text(encoding="utf-8").splitlines()
    assert len(lines) == 3
    first = json.loads(lines[0])
    assert set(first) == set(EXPORT_COLUMNS)
    assert first["answer_a"] == TRICKY and first["recipe_a"]["method"] == "average"
    assert first["settings"] == {"max_new_tokens": 64, "top_p": 0.95}
    assert first["winner"] == "fused" and json.loads(lines[1])["winner"] == "both_bad"
    assert "192.0.2.1" not in out.read_text()


def test_csv_header_and_text_helpers(filled):
    text = to_text(filled.votes(), "csv")
    assert text.splitlines()[0] == ",".join(EXPORT_COLUMNS)
    assert to_text(filled.votes(), "jsonl").count("\n") == 3
    with pytest.raises(ValueError, match="'xlsx'"):
        to_text([], "xlsx")


def test_download_file(filled, tmp_path):
    path = export_for_download(filled, "csv", tmp_path / "dl")
    assert path.name.startswith("votes-") and path.suffix == ".csv"
    assert len(read_csv(path)) == 3


def test_read_errors_are_named(tmp_path):
    with pytest.raises(FileNotFoundError, match="nope.csv"):
        read_csv(tmp_path / "nope.csv")
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"turn_id": "x"}\nnot json\n')
    with pytest.raises(ValueError, match="line 1|line 2"):
        read_jsonl(bad)
    partial = tmp_path / "partial.csv"
    partial.write_text("turn_id,vote\nx,a\n")
    with pytest.raises(ValueError, match="lacks columns"):
        read_csv(partial)


def test_cli_export_and_leaderboard(filled, tmp_path, capsys):
    db = str(filled.target)
    out = tmp_path / "cli.jsonl"
    assert main(["votes", "export", "--db", db, "--format", "jsonl", "--out", str(out)]) == 0
    assert read_jsonl(out) == filled.votes()
    assert "wrote 3 votes" in capsys.readouterr().out
    assert main(["votes", "export", "--db", db, "--out", str(tmp_path / "blind.csv"), "--blind-only"]) == 0
    assert len(read_csv(tmp_path / "blind.csv")) == 2
    assert main(["votes", "leaderboard", "--db", db, "--bootstrap", "20"]) == 0
    printed = capsys.readouterr().out
    assert "fused" in printed and "math-lora" in printed and "base" not in printed  # named votes don't count
    assert main(["votes", "leaderboard", "--db", db, "--bootstrap", "20", "--json", "--domain", "code"]) == 0
    assert json.loads(capsys.readouterr().out)["rows"] == []
    assert main(["votes", "export", "--db", str(tmp_path / "missing.sqlite"), "--out", str(out)]) == 1
    assert not (tmp_path / "missing.sqlite").exists()


def test_cli_module_entry_point(filled, tmp_path):
    out = tmp_path / "m.csv"
    res = subprocess.run([sys.executable, "-m", "graft_ui", "votes", "export", "--db", str(filled.target),
                          "--format", "csv", "--out", str(out)], cwd=REPO, env=worker_env(),
                         capture_output=True, text=True, timeout=120)
    assert res.returncode == 0, res.stderr
    assert read_csv(out) == filled.votes()


def test_cli_style_control_prints_both_ratings_and_the_coefficients(tmp_path, capsys):
    store = VoteStore.open(tmp_path / "style.sqlite")
    for i in range(40):  # 'long' answers at length and wins; 'short' answers briefly
        a, b = ("long", "short") if i % 2 else ("short", "long")
        la, lb = (60, 5) if a == "long" else (5, 60)
        store.record_vote(turn_id=f"s{i}", battle_id=f"s{i}", variant_a=a, variant_b=b,
                          vote="a" if (a == "long") != (i % 5 == 0) else "b", prompt="p",
                          answer_a="w " * la, answer_b="w " * lb, voter_id=f"v{i % 8}")
    store.close()
    db = str(tmp_path / "style.sqlite")
    assert main(["votes", "leaderboard", "--db", db, "--bootstrap", "20", "--style-control"]) == 0
    printed = capsys.readouterr().out
    assert "style_rating" in printed and "rating" in printed and "vs_next" in printed
    assert "style coefficients" in printed
    for feature in ("length", "headers", "lists", "bold"):
        assert feature in printed
    assert main(["votes", "leaderboard", "--db", db, "--bootstrap", "20", "--style-control", "--json"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert [c["feature"] for c in data["style_coefficients"]] == ["length", "headers", "lists", "bold"]
    assert {"rating", "style_rating", "vs_next", "tuning", "fresh"} <= set(data["rows"][0])
