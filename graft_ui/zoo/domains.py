"""Synthetic domains of the demo zoo, generated deterministically from a seed.

Every sample follows the dataset contract (docs/CONTRACTS.md): chat `messages`, an
`answer`, a `scorer` (`exact` or `code`) and, for code, `tests` (Python asserts). Images
are drawn with PIL, saved next to the JSONL under `images/`, and referenced relative to it.

Domains (each answer follows from the drawing or the template, so it is checkable):
- math: counting shapes laid out on a grid, counting plus a number, adding two drawn digits.
- code: text-only Python function completion from templates (arithmetic, string, list),
  scored by executing hidden asserts.
- finance: quarterly block-bar and point charts; highest/lowest quarter, a quarter's value, trend.
- medical: synthetic stained "slides" with cell-like blobs; abnormal yes/no and counts.
- general: what the base model is trained on (scene/chart/slide descriptions, simple text).
  It never asks the domains' questions, so the base starts sensible but not an expert.
"""

from __future__ import annotations

import itertools
import json
import random
from pathlib import Path
from typing import Callable

from PIL import Image, ImageDraw, ImageFont

from graft_ui.jsonl import iter_jsonl

# ------------------------------------------------------------------ drawing helpers

COLORS = {
    "red": (220, 40, 40),
    "green": (30, 160, 60),
    "blue": (40, 80, 220),
    "orange": (240, 140, 20),
    "purple": (140, 50, 170),
}
SHAPES = ("circle", "square", "triangle")
NUMBER_WORDS = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine")
GRID = 3  # math and medical images are a 3x3 grid of 28 px cells (one merged vision token each)
CELL = 28


def _plural(word: str, n: int) -> str:
    return word if n == 1 else word + "s"


def _draw_shape(draw: ImageDraw.ImageDraw, kind: str, x: int, y: int, size: int, color) -> None:
    box = (x, y, x + size, y + size)
    if kind == "circle":
        draw.ellipse(box, fill=color)
    elif kind == "square":
        draw.rectangle(box, fill=color)
    else:
        draw.polygon([(x + size // 2, y), (x, y + size), (x + size, y + size)], fill=color)


def _font(size: int):
    return ImageFont.load_default(size=size)


def shapes_scene(rng: random.Random, max_shapes: int = 6):
    """A 84x84 image with 1..max_shapes shapes in distinct grid cells; returns (image, shapes)."""
    n = rng.randint(1, max_shapes)
    cells = rng.sample(range(GRID * GRID), n)
    img = Image.new("RGB", (GRID * CELL, GRID * CELL), (255, 255, 255))
    draw = ImageDraw.Draw(img)
    shapes = []
    for cell in cells:
        kind, color = rng.choice(SHAPES), rng.choice(list(COLORS))
        size = rng.randint(16, 20)
        x = (cell % GRID) * CELL + rng.randint(2, CELL - size - 2)
        y = (cell // GRID) * CELL + rng.randint(2, CELL - size - 2)
        _draw_shape(draw, kind, x, y, size, COLORS[color])
        shapes.append((kind, color))
    return img, shapes


def digits_image(rng: random.Random):
    """Two digits with a plus sign between them (84x56), at fixed places in black.

    Fixed glyphs at fixed places: the tiny vision tower learns them in a few hundred steps,
    where jittered coloured digits would need far more training than the zoo can afford.
    """
    a, b = rng.randint(1, 9), rng.randint(1, 9)
    img = Image.new("RGB", (84, 56), (255, 255, 255))
    draw = ImageDraw.Draw(img)
    font = _font(40)
    for digit, cx in ((a, 14), (b, 70)):
        draw.text((cx, 28), str(digit), fill=(0, 0, 0), font=font, anchor="mm")
    draw.text((42, 28), "+", fill=(0, 0, 0), font=_font(28), anchor="mm")
    return img, a, b


# one colour per quarter (Q1..Q4), as a categorical chart with a legend would draw them
QUARTER_COLORS = ((30, 60, 170), (0, 150, 70), (230, 130, 0), (150, 40, 160))
# the value sets of a chart: 4 distinct values in 1..6 (15 sets, 360 orderings)
CHART_VALUE_SETS = list(itertools.combinations(range(1, 7), 4))
CHART_UNIT_PX = 12  # one stacked block per unit: 10 px and a 2 px gap


def chart_image(rng: random.Random):
    """A quarterly chart (112x84): 4 distinct values in 1..6, bar or point; returns (image, values, kind).

    One quarter per 28-px column (one merged vision token wide), each in its own colour. A bar
    is a stack of unit blocks (a pictogram chart) and a point sits at the top block's height.
    Why blocks: the zoo's 2-block vision tower does not resolve a continuous bar height.
    Trained on plain bars, the base captioned ~35% of the quarters' values right, and
    "highest quarter" stayed at chance for every expert. With blocks a value is a count,
    which the tower learns as it does shapes and cells: 85% of the quarters right after the
    general stage alone.
    """
    values = list(rng.choice(CHART_VALUE_SETS))
    rng.shuffle(values)
    kind = rng.choice(["bar", "line"])
    img = Image.new("RGB", (112, 84), (255, 255, 255))
    draw = ImageDraw.Draw(img)
    base_y = 80
    draw.line([(0, base_y + 1), (111, base_y + 1)], fill=(0, 0, 0), width=2)
    for i, (v, color) in enumerate(zip(values, QUARTER_COLORS)):
        cx = 14 + 28 * i
        if kind == "bar":
            for k in range(v):
                draw.rectangle([cx - 10, base_y - CHART_UNIT_PX * (k + 1) + 2, cx + 10, base_y - CHART_UNIT_PX * k - 1],
                               fill=color)
        else:
            y = base_y - CHART_UNIT_PX * v + 6
            draw.ellipse([cx - 6, y - 6, cx + 6, y + 6], fill=color)
    return img, values, kind


def slide_image(rng: random.Random):
    """A stained 'slide' (84x84): speckled pink tissue and 1..5 cells, 0..2 of them abnormal."""
    n = rng.randint(1, 5)
    k = 0 if rng.random() < 0.5 else rng.randint(1, min(2, n))
    img = Image.new("RGB", (GRID * CELL, GRID * CELL), (236, 196, 212))
    draw = ImageDraw.Draw(img)
    for _ in range(120):  # texture: small darker speckles
        x, y = rng.randrange(84), rng.randrange(84)
        shade = rng.randint(170, 215)
        draw.point((x, y), fill=(shade + 20, shade - 20, shade))
    cells = rng.sample(range(GRID * GRID), n)
    abnormal = set(rng.sample(cells, k))
    for cell in cells:
        cx = (cell % GRID) * CELL + 14 + rng.randint(-2, 2)
        cy = (cell // GRID) * CELL + 14 + rng.randint(-2, 2)
        if cell in abnormal:
            rx, ry = rng.randint(10, 12), rng.randint(9, 12)
            draw.ellipse([cx - rx, cy - ry, cx + rx, cy + ry], fill=(70, 30, 100))
            draw.ellipse([cx - 5, cy - 4, cx + 6, cy + 5], fill=(30, 10, 50))
        else:
            rx, ry = rng.randint(7, 9), rng.randint(6, 9)
            draw.ellipse([cx - rx, cy - ry, cx + rx, cy + ry], fill=(196, 150, 210))
            draw.ellipse([cx - 2, cy - 2, cx + 3, cy + 3], fill=(120, 70, 150))
    return img, n, k


# ------------------------------------------------------------------ sample helpers


def _image_sample(sid, domain, rel_image, question, answer):
    return {
        "id": sid,
        "domain": domain,
        "messages": [
            {"role": "user", "content": [{"type": "image", "image": rel_image}, {"type": "text", "text": question}]}
        ],
        "answer": str(answer),
        "scorer": "exact",
        "tests": None,
    }


def _text_sample(sid, domain, question, answer, scorer="exact", tests=None):
    return {
        "id": sid,
        "domain": domain,
        "messages": [{"role": "user", "content": [{"type": "text", "text": question}]}],
        "answer": str(answer),
        "scorer": scorer,
        "tests": tests,
    }


class _Writer:
    """Saves images under <dir>/images and hands back the path relative to the JSONL."""

    def __init__(self, out_dir: Path | None):
        self.out_dir = out_dir
        if out_dir is not None:
            (out_dir / "images").mkdir(parents=True, exist_ok=True)

    def save(self, img: Image.Image, sid: str) -> str:
        rel = f"images/{sid}.png"
        if self.out_dir is not None:
            img.save(self.out_dir / rel, optimize=False)
        return rel


# ------------------------------------------------------------------ domains


def gen_math(rng: random.Random, sid: str, w: _Writer) -> dict:
    r = rng.random()
    if r < 0.25:
        img, a, b = digits_image(rng)
        return _image_sample(sid, "math", w.save(img, sid), "What is the sum of the two numbers?", a + b)
    img, shapes = shapes_scene(rng)
    rel = w.save(img, sid)
    if r < 0.45:
        return _image_sample(sid, "math", rel, "How many shapes are there?", len(shapes))
    kind = rng.choice(SHAPES)
    count = sum(1 for s, _ in shapes if s == kind)
    if r < 0.75:
        return _image_sample(sid, "math", rel, f"How many {kind}s are there?", count)
    k = rng.randint(1, 5)
    return _image_sample(sid, "math", rel, f"Count the {kind}s and add {k}. What is the result?", count + k)


def gen_finance(rng: random.Random, sid: str, w: _Writer) -> dict:
    img, values, _ = chart_image(rng)
    rel = w.save(img, sid)
    metric = rng.choice(["revenue", "profit", "income", "turnover"])
    r = rng.random()
    if r < 0.3:
        q, a = f"Which quarter had the highest {metric}?", f"Q{values.index(max(values)) + 1}"
    elif r < 0.6:
        q, a = f"Which quarter had the lowest {metric}?", f"Q{values.index(min(values)) + 1}"
    elif r < 0.8:
        i = rng.randrange(4)
        q, a = f"What was the {metric} in Q{i + 1}, in millions?", values[i]
    else:
        q, a = f"Did {metric} go up or down from Q1 to Q4?", "up" if values[3] > values[0] else "down"
    return _image_sample(sid, "finance", rel, q, a)


def gen_medical(rng: random.Random, sid: str, w: _Writer) -> dict:
    img, n, k = slide_image(rng)
    rel = w.save(img, sid)
    r = rng.random()
    if r < 0.4:
        q, a = "Are there any abnormal cells on this slide?", "yes" if k else "no"
    elif r < 0.7:
        q, a = "How many cells are on this slide?", n
    else:
        q, a = "How many abnormal cells are on this slide?", k
    return _image_sample(sid, "medical", rel, q, a)


# code: (docstring, body, kind of arguments, n args, reference function)
_NUM_ARGS = ["a", "b", "x", "y", "m", "n", "p", "q"]
_STR_ARGS = ["s", "text", "word", "name"]
_LIST_ARGS = ["xs", "nums", "values", "items"]
_VERBS = ["get", "compute", "calc", "find", "make", "do", "solve", "eval"]
_NOUNS = ["value", "result", "answer", "total", "output", "thing", "number", "data", "item", "score"]
CODE_TASKS = [
    ("Return the sum of {0} and {1}.", "{0} + {1}", "num", 2, lambda a, b: a + b),
    ("Return {0} minus {1}.", "{0} - {1}", "num", 2, lambda a, b: a - b),
    ("Return the product of {0} and {1}.", "{0} * {1}", "num", 2, lambda a, b: a * b),
    ("Return the larger of {0} and {1}.", "max({0}, {1})", "num", 2, max),
    ("Return the smaller of {0} and {1}.", "min({0}, {1})", "num", 2, min),
    ("Return {0} squared.", "{0} * {0}", "num", 1, lambda a: a * a),
    ("Return twice {0}.", "2 * {0}", "num", 1, lambda a: 2 * a),
    ("Return True if {0} is even.", "{0} % 2 == 0", "num", 1, lambda a: a % 2 == 0),
    ("Return {0} in upper case.", "{0}.upper()", "str", 1, str.upper),
    ("Return {0} reversed.", "{0}[::-1]", "str", 1, lambda s: s[::-1]),
    ("Return the length of {0}.", "len({0})", "str", 1, len),
    ("Return the first character of {0}.", "{0}[0]", "str", 1, lambda s: s[0]),
    ("Return the sum of the numbers in {0}.", "sum({0})", "list", 1, sum),
    ("Return the largest number in {0}.", "max({0})", "list", 1, max),
    ("Return {0} sorted in ascending order.", "sorted({0})", "list", 1, sorted),
    ("Return the last element of {0}.", "{0}[-1]", "list", 1, lambda xs: xs[-1]),
]
_WORDS = ["apple", "river", "stone", "cloud", "tiger", "lemon", "piano", "glass", "robot", "maple"]


def _code_inputs(rng: random.Random, kind: str, n_args: int):
    if kind == "num":
        return tuple(rng.randint(-9, 20) for _ in range(n_args))
    if kind == "str":
        return (rng.choice(_WORDS),)
    return ([rng.randint(-5, 15) for _ in range(rng.randint(2, 5))],)


def code_prompt(name: str, args: list[str], doc: str) -> str:
    return f'Complete the Python function.\ndef {name}({", ".join(args)}):\n    """{doc}"""'


def gen_code(rng: random.Random, sid: str, w: _Writer) -> dict:
    doc_t, body_t, kind, n_args, ref = rng.choice(CODE_TASKS)
    pool = {"num": _NUM_ARGS, "str": _STR_ARGS, "list": _LIST_ARGS}[kind]
    args = rng.sample(pool, n_args)
    name = f"{rng.choice(_VERBS)}_{rng.choice(_NOUNS)}"
    doc, body = doc_t.format(*args), body_t.format(*args)
    answer = f"    return {body}"  # the body: the prompt's signature and docstring come first
    tests = []
    for _ in range(3):
        inputs = _code_inputs(rng, kind, n_args)
        expected = ref(*[list(v) if isinstance(v, list) else v for v in inputs])
        tests.append(f"assert {name}({', '.join(repr(v) for v in inputs)}) == {expected!r}")
    return _text_sample(sid, "code", code_prompt(name, args, doc), answer, scorer="code", tests="\n".join(tests))


# ------------------------------------------------------------------ general mix (base training)

_THINGS = {
    "the sky": "blue", "grass": "green", "snow": "white", "a banana": "yellow", "coal": "black",
    "a tomato": "red", "an orange": "orange", "a plum": "purple", "milk": "white", "a leaf": "green",
}
_OPPOSITES = {"up": "down", "hot": "cold", "big": "small", "fast": "slow", "open": "closed",
              "light": "dark", "early": "late", "happy": "sad", "left": "right", "old": "new"}
_GREETINGS = [("Hello!", "Hello! How can I help you?"), ("Thank you.", "You are welcome."),
              ("Who are you?", "I am a small helpful assistant."), ("Good morning!", "Good morning to you too!")]


def describe_shapes(shapes) -> str:
    groups: dict[tuple[str, str], int] = {}
    for kind, color in shapes:
        groups[(color, kind)] = groups.get((color, kind), 0) + 1
    parts = [f"{NUMBER_WORDS[c]} {color} {_plural(kind, c)}" for (color, kind), c in sorted(groups.items())]
    return ", ".join(parts[:-1]) + (" and " if len(parts) > 1 else "") + parts[-1] + "."


def gen_general(rng: random.Random, sid: str, w: _Writer) -> dict:
    r = rng.random()
    ask = rng.choice(["Describe the image.", "What do you see?", "Describe this picture briefly."])
    if r < 0.25:
        img, shapes = shapes_scene(rng)
        return _image_sample(sid, "general", w.save(img, sid), ask, "I see " + describe_shapes(shapes))
    if r < 0.4:
        img, a, b = digits_image(rng)
        return _image_sample(sid, "general", w.save(img, sid), ask, f"The digits {a} and {b} with a plus sign between them.")
    if r < 0.65:
        img, values, kind = chart_image(rng)
        heights = ", ".join(f"Q{i + 1} {v}" for i, v in enumerate(values[:3])) + f" and Q4 {values[3]}"
        return _image_sample(sid, "general", w.save(img, sid), ask, f"A quarterly {kind} chart: {heights}.")
    if r < 0.8:
        img, n, k = slide_image(rng)
        dark = "" if not k else f", {NUMBER_WORDS[k]} of them dark"
        return _image_sample(sid, "general", w.save(img, sid), ask,
                             f"A pink stained tissue slide with {NUMBER_WORDS[n]} {_plural('cell', n)}{dark}.")
    r = rng.random()
    if r < 0.3:
        words = " ".join(rng.choice(_WORDS + list(_OPPOSITES)) for _ in range(rng.randint(1, 4)))
        return _text_sample(sid, "general", f"Repeat after me: {words}", words)
    if r < 0.5:
        # copying code-like and answer-like tokens: a base model has "seen" these strings, so
        # an expert (a LoRA especially, which cannot retrain embeddings) learns when to use them
        phrase = " ".join(_token_phrase(rng) for _ in range(rng.randint(1, 3)))
        return _text_sample(sid, "general", f"Repeat after me: {phrase}", phrase)
    if r < 0.62:
        word = rng.choice(_WORDS)
        return _text_sample(sid, "general", f"Write the word {word} in capital letters.", word.upper())
    if r < 0.77:
        thing = rng.choice(list(_THINGS))
        return _text_sample(sid, "general", f"What color is {thing}?", f"{thing.capitalize()} is {_THINGS[thing]}.")
    if r < 0.9:
        word = rng.choice(list(_OPPOSITES))
        return _text_sample(sid, "general", f"What is the opposite of {word}?", f"The opposite of {word} is {_OPPOSITES[word]}.")
    q, a = rng.choice(_GREETINGS)
    return _text_sample(sid, "general", q, a)


def _token_phrase(rng: random.Random) -> str:
    """A short string of the domains' surface tokens (identifiers, calls, labels), no task in it."""
    r = rng.random()
    if r < 0.5:
        _, body, kind, n_args, _ = rng.choice(CODE_TASKS)
        pool = {"num": _NUM_ARGS, "str": _STR_ARGS, "list": _LIST_ARGS}[kind]
        return body.format(*rng.sample(pool, n_args))
    if r < 0.7:
        return f"{rng.choice(_VERBS)}_{rng.choice(_NOUNS)}({rng.choice(_NUM_ARGS + _STR_ARGS + _LIST_ARGS)})"
    return rng.choice(["Q1", "Q2", "Q3", "Q4", "up", "down", "yes", "no", "return", "def", str(rng.randint(0, 19))])


GENERATORS: dict[str, Callable[[random.Random, str, _Writer], dict]] = {
    "math": gen_math,
    "code": gen_code,
    "finance": gen_finance,
    "medical": gen_medical,
    "general": gen_general,
}


def _key(sample: dict) -> str:
    """What makes two samples the same task (the eval split must not repeat a training prompt)."""
    return json.dumps(sample["messages"], sort_keys=True) if sample["domain"] == "code" else sample["id"]


def generate(domain: str, split: str, n: int, seed: int, out_dir: str | Path | None = None,
             exclude: set[str] | None = None) -> list[dict]:
    """`n` samples of `domain` (deterministic in `seed`, `domain`, `split`); images go to out_dir/images.

    `exclude` holds keys (see `_key`) that must not appear, so text-only eval prompts are
    never training prompts; the generator draws on until it has `n` new ones.
    """
    if domain not in GENERATORS:
        raise ValueError(f"unknown zoo domain {domain!r}; known: {sorted(GENERATORS)}")
    # a string seed goes through sha512 in random.Random: stable across runs and machines
    rng = random.Random(f"graft-zoo/{seed}/{domain}/{split}")
    writer = _Writer(Path(out_dir) if out_dir is not None else None)
    samples, seen = [], set(exclude or ())
    attempts = 0
    while len(samples) < n:
        attempts += 1
        if attempts > 50 * n + 100:
            raise ValueError(f"could not draw {n} distinct {domain!r} samples for split {split!r}")
        sid = f"{domain}-{split}-{len(samples):04d}"
        sample = GENERATORS[domain](rng, sid, writer)
        key = _key(sample)
        if domain == "code":
            if key in seen:
                continue
            seen.add(key)
        samples.append(sample)
    return samples


def write_jsonl(samples: list[dict], path: str | Path) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w") as f:
        for s in samples:
            f.write(json.dumps(s) + "\n")


def read_jsonl(path: str | Path) -> list[dict]:
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"dataset {str(path)!r} does not exist")
    with path.open() as f:
        return [d for _, d in iter_jsonl(f, repr(str(path)))]


def build_domain(domain: str, root: str | Path, n_train: int, n_eval: int, seed: int) -> dict[str, Path]:
    """Write <root>/<domain>/{train,eval}.jsonl (+ images); returns the two paths."""
    d = Path(root) / domain
    train = generate(domain, "train", n_train, seed, d)
    paths = {"train": d / "train.jsonl"}
    write_jsonl(train, paths["train"])
    if n_eval:
        exclude = {_key(s) for s in train} if domain == "code" else None
        paths["eval"] = d / "eval.jsonl"
        write_jsonl(generate(domain, "eval", n_eval, seed, d, exclude=exclude), paths["eval"])
    return paths
