"""A side-by-side conversation: the same user turns sent to several models, one answer each.

`SideBySide` is plain data (deep-copyable, so a UI can keep one per browser session):
user turns (text plus an optional image file) and, per turn, each model's answer. It
builds the model-format messages of any column (images as local paths, opened later by
`graft_ui.models.inputs`) and a display form (role/content dicts) for a chat widget.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator, Sequence

from PIL import Image, UnidentifiedImageError

from graft_ui.chat.generation import StreamUpdate
from graft_ui.chat.pool import ModelPool
from graft_ui.chat.settings import GenerationSettings
from graft_ui.models.inputs import MAX_PROMPT_CHARS

MAX_UPLOAD_BYTES = 20 * 1024 * 1024
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp", ".bmp", ".gif")


def check_image_upload(path: str | Path, allowed_roots: Sequence[str | Path]) -> str:
    """`path` if it is an image file inside one of `allowed_roots` (e.g. the UI's upload folder).

    Guards the rule that only uploaded files are opened: a user-supplied path or URL
    elsewhere is refused by name, and so is a file that is not an image.
    """
    text = str(path)
    if "://" in text or text.startswith("data:"):
        raise ValueError(f"image {text[:60]!r} is a URL; only uploaded image files are accepted")
    p = Path(text).resolve()
    roots = [Path(r).resolve() for r in allowed_roots]
    if not any(p == r or r in p.parents for r in roots):
        raise ValueError(f"image {p.name!r} is not an uploaded file; only images uploaded to the app are accepted")
    if not p.is_file():
        raise FileNotFoundError(f"uploaded file {p.name!r} no longer exists; upload it again")
    if p.stat().st_size > MAX_UPLOAD_BYTES:
        raise ValueError(f"image {p.name!r} is {p.stat().st_size // 2**20} MB; the limit is {MAX_UPLOAD_BYTES // 2**20} MB")
    try:
        with Image.open(p) as im:
            im.verify()
    except Image.DecompressionBombError:
        raise ValueError(f"image {p.name!r} has too many pixels (over {2 * (Image.MAX_IMAGE_PIXELS or 0) // 10**6} "
                         "megapixels): scale it down and upload it again") from None
    except (UnidentifiedImageError, OSError, SyntaxError):
        raise ValueError(f"file {p.name!r} is not an image: attach a PNG, JPEG, GIF or WebP picture") from None
    return str(p)


def keep_indentation(text: str) -> str:
    """A prompt as markdown for the chat bubble: from the first indented line on (pasted code), the
    text goes into a code block, so its indentation is shown instead of being folded away."""
    if "```" in text:
        return text
    lines = text.split("\n")
    first = next((i for i, line in enumerate(lines) if line[:1] in (" ", "\t") and line.strip()), None)
    if first is None:
        return text
    start = first - 1 if first > 0 and lines[first - 1].rstrip().endswith(":") else first  # e.g. "def f(x):"
    prose, code = "\n".join(lines[:start]).rstrip(), "\n".join(lines[start:]).rstrip()
    return (prose + "\n\n" if prose else "") + "```\n" + code + "\n```"


@dataclass
class Turn:
    text: str
    image: str | None = None
    answers: dict[str, str] = field(default_factory=dict)
    errors: dict[str, str] = field(default_factory=dict)
    stopped: set[str] = field(default_factory=set)  # columns stopped (by the user) before they finished


@dataclass
class SideBySide:
    turns: list[Turn] = field(default_factory=list)

    # ---- editing ---------------------------------------------------------------------

    def ask(self, text: str, image: str | None = None) -> Turn:
        text = (text or "").strip()
        if not text and not image:
            raise ValueError("type a question (and optionally attach an image) before sending")
        if len(text) > MAX_PROMPT_CHARS:
            raise ValueError(f"the prompt has {len(text)} characters; the limit is {MAX_PROMPT_CHARS}")
        turn = Turn(text=text, image=image)
        self.turns.append(turn)
        return turn

    def clear(self) -> None:
        self.turns.clear()

    def reopen_last(self) -> Turn:
        """Forget the last turn's answers so it can be asked again (regenerate)."""
        if not self.turns:
            raise ValueError("nothing to regenerate yet: send a prompt first")
        last = self.turns[-1]
        last.answers.clear()
        last.errors.clear()
        last.stopped.clear()
        return last

    def record(self, update: StreamUpdate) -> None:
        """Store the answers of the last turn from a (final or partial) stream update."""
        turn = self.turns[-1]
        for name, text, status, err in zip(update.names, update.texts, update.status, update.errors):
            if status == "error":
                turn.errors[name] = err or "failed"
                turn.answers.pop(name, None)
            elif text or status in ("done", "stopped"):
                turn.answers[name] = text
            if status == "stopped":
                turn.stopped.add(name)

    # ---- views -----------------------------------------------------------------------

    def conversation(self, name: str) -> list[dict]:
        """Model-format messages for column `name`: earlier turns it answered, then the last user turn."""
        msgs: list[dict] = []
        for i, turn in enumerate(self.turns):
            last = i == len(self.turns) - 1
            if not last and name not in turn.answers:
                continue
            content = []
            if turn.image:
                content.append({"type": "image", "image": turn.image})
            if turn.text:
                content.append({"type": "text", "text": turn.text})
            msgs.append({"role": "user", "content": content})
            if not last:
                msgs.append({"role": "assistant", "content": [{"type": "text", "text": turn.answers[name]}]})
        return msgs

    def display(self, name: str, live: StreamUpdate | None = None) -> list[dict]:
        """Role/content dicts for a chat widget (text items as {"type": "text"}, images as {"path"})."""
        out: list[dict] = []
        for i, turn in enumerate(self.turns):
            content: list = []
            if turn.image:
                content.append({"path": turn.image})
            if turn.text:
                content.append({"type": "text", "text": keep_indentation(turn.text)})
            out.append({"role": "user", "content": content})
            text, status = turn.answers.get(name), None
            if name in turn.errors:
                text = f"⚠ {turn.errors[name]}"
            if live is not None and i == len(self.turns) - 1 and name in live.names:
                j = live.names.index(name)
                status = live.status[j]
                text = f"⚠ {live.errors[j]}" if status == "error" else live.texts[j]
            if status in ("waiting", "loading") and not text:
                text = "*loading model…*" if status == "loading" else "*waiting…*"
            elif not text and (status == "stopped" or (status is None and name in turn.stopped)):
                text = "*■ stopped before it answered*"
            elif text == "" and (status == "done" or (status is None and name in turn.answers)):
                text = "*(empty answer: the model ended its turn at once)*"
            if text is None:
                if i < len(self.turns) - 1:
                    text = "*(not asked: this model joined later)*"
                else:
                    continue
            out.append({"role": "assistant", "content": [{"type": "text", "text": text}]})
        return out

    def context_turns(self, name: str) -> int:
        """How many user turns column `name` has in its context (the turns it answered, and the
        last one): what the model sees besides the next prompt."""
        return sum(1 for i, t in enumerate(self.turns) if name in t.answers or i == len(self.turns) - 1)

    # ---- running ---------------------------------------------------------------------

    def run(
        self,
        pool: ModelPool,
        names: Sequence[str],
        settings: GenerationSettings | None = None,
        stop=None,
    ) -> Iterator[StreamUpdate]:
        """Answer the last turn with every model in `names`; yields live updates, records the result."""
        if not self.turns:
            raise ValueError("send a prompt first")
        if not names:
            raise ValueError("choose at least one model to chat with")
        # recorded at every step, so an interrupted request leaves a consistent conversation
        for update in pool.stream(list(names), [self.conversation(n) for n in names], settings, stop):
            self.record(update)
            yield update
