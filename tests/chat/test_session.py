"""SideBySide conversations and the upload guard."""

from __future__ import annotations


import pytest
from PIL import Image

from graft_ui.chat import SideBySide, StreamUpdate, check_image_upload


def update(names, texts, status, errors=None):
    return StreamUpdate(list(names), list(texts), list(status), list(errors or []))


def test_conversation_and_display_per_column(tmp_path):
    img = tmp_path / "x.png"
    Image.new("RGB", (8, 8)).save(img)
    s = SideBySide()
    s.ask("How many?", str(img))
    s.record(update(["a", "b"], ["3", "4"], ["done", "done"]))
    s.ask("And now?")
    conv = s.conversation("a")
    assert [m["role"] for m in conv] == ["user", "assistant", "user"]
    assert conv[0]["content"][0] == {"type": "image", "image": str(img)}
    assert conv[1]["content"][0]["text"] == "3"
    # a column that joins later sees only the last question
    assert [m["role"] for m in s.conversation("c")] == ["user"]
    live = update(["a", "c"], ["par", ""], ["streaming", "loading"])
    shown = s.display("a", live)
    assert shown[-1]["content"][0]["text"] == "par"
    assert shown[0]["content"][0] == {"path": str(img)}
    assert s.display("c", live)[1]["content"][0]["text"].startswith("*(not asked")
    assert s.display("c", live)[-1]["content"][0]["text"] == "*loading model…*"


def test_errors_regenerate_and_clear():
    s = SideBySide()
    with pytest.raises(ValueError, match="type a question"):
        s.ask("   ")
    with pytest.raises(ValueError, match="nothing to regenerate"):
        s.reopen_last()
    s.ask("hi")
    s.record(update(["a", "b"], ["hello", ""], ["done", "error"], [None, "boom"]))
    assert s.display("b")[-1]["content"][0]["text"] == "⚠ boom"
    s.reopen_last()
    assert s.turns[-1].answers == {} and s.turns[-1].errors == {}
    s.clear()
    assert s.turns == []
    with pytest.raises(ValueError, match="limit"):
        s.ask("x" * 9000)


def test_upload_guard(tmp_path):
    root = tmp_path / "uploads"
    root.mkdir()
    good = root / "ok.png"
    Image.new("RGB", (10, 10), "red").save(good)
    assert check_image_upload(good, [root]) == str(good.resolve())
    text = root / "notes.png"
    text.write_text("not an image")
    with pytest.raises(ValueError, match="not an image"):
        check_image_upload(text, [root])
    outside = tmp_path / "elsewhere.png"
    Image.new("RGB", (10, 10)).save(outside)
    with pytest.raises(ValueError, match="not an uploaded file"):
        check_image_upload(outside, [root])
    with pytest.raises(ValueError, match="not an uploaded file"):
        check_image_upload(root / ".." / "elsewhere.png", [root])
    with pytest.raises(ValueError, match="URL"):
        check_image_upload("http://example.com/a.png", [root])
    with pytest.raises(FileNotFoundError):
        check_image_upload(root / "gone.png", [root])


def test_a_decompression_bomb_is_named_not_unexpected(tmp_path, monkeypatch):
    from PIL import Image

    from graft_ui.chat.session import check_image_upload

    path = tmp_path / "big.png"
    Image.new("RGB", (40, 40)).save(path)
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 100)  # 1600 pixels > 2 x 100: what a 400-megapixel PNG does
    with pytest.raises(ValueError, match="too many pixels.*scale it down"):
        check_image_upload(path, [tmp_path])



def test_stopped_before_answering_and_broken_characters_read_plainly():
    from graft_ui.chat.session import SideBySide, keep_indentation
    from graft_ui.chat.streaming import readable

    sess = SideBySide()
    sess.ask("hi")
    turn = sess.turns[-1]
    turn.answers["full"] = ""
    turn.stopped.add("full")
    assert "stopped before it answered" in sess.display("full")[-1]["content"][0]["text"]
    assert sess.context_turns("full") == 1 and sess.context_turns("other") == 1
    sess.ask("again")
    assert sess.context_turns("full") == 2 and sess.context_turns("other") == 1
    assert readable("caf\ufffd") == "caf" and readable("a\ufffdb") == "ab"
    shown = keep_indentation("Fix this:\ndef f(xs):\n    return sum(xs)")
    assert shown.startswith("Fix this:\n\n```\ndef f(xs):\n    return sum(xs)\n```")
    assert keep_indentation("two\nlines") == "two\nlines"
