import hashlib
import random
from pathlib import Path

import pytest

from graft_ui.zoo import domains as D
from graft_ui.zoo.profiles import DOMAINS
from graft_ui.zoo.scoring import score_sample


def _digest(folder: Path) -> str:
    h = hashlib.sha256()
    for p in sorted(folder.rglob("*")):
        if p.is_file():
            h.update(p.relative_to(folder).as_posix().encode())
            h.update(p.read_bytes())
    return h.hexdigest()


def test_generation_is_deterministic(tmp_path):
    for d in (*DOMAINS, "general"):
        D.build_domain(d, tmp_path / "a", 12, 4, seed=7)
        D.build_domain(d, tmp_path / "b", 12, 4, seed=7)
    assert _digest(tmp_path / "a") == _digest(tmp_path / "b")
    D.build_domain("math", tmp_path / "c", 12, 4, seed=8)
    assert _digest(tmp_path / "a" / "math") != _digest(tmp_path / "c" / "math")


@pytest.mark.parametrize("domain", DOMAINS)
def test_samples_follow_the_contract(tmp_path, domain):
    paths = D.build_domain(domain, tmp_path, 20, 6, seed=1)
    for split in ("train", "eval"):
        samples = D.read_jsonl(paths[split])
        assert len(samples) == (20 if split == "train" else 6)
        for i, s in enumerate(samples):
            assert s["id"] == f"{domain}-{split}-{i:04d}"
            assert s["domain"] == domain
            assert set(s) == {"id", "domain", "messages", "answer", "scorer", "tests"}
            (msg,) = s["messages"]
            assert msg["role"] == "user"
            kinds = [c["type"] for c in msg["content"]]
            assert kinds[-1] == "text" and kinds.count("text") == 1
            for c in msg["content"]:
                if c["type"] == "image":
                    assert not Path(c["image"]).is_absolute()
                    assert (paths[split].parent / c["image"]).is_file()
            assert isinstance(s["answer"], str) and s["answer"]
            if domain == "code":
                assert s["scorer"] == "code" and s["tests"].startswith("assert ") and kinds == ["text"]
            else:
                assert s["scorer"] == "exact" and s["tests"] is None and kinds == ["image", "text"]


def test_code_reference_answers_pass_their_tests(tmp_path):
    samples = D.generate("code", "train", 24, seed=3)
    for s in samples[:12]:
        assert s["answer"].startswith("    return ")  # the body; the prompt holds signature + docstring
        assert score_sample(s, s["answer"], timeout=10), (s["answer"], s["tests"])
    # and a body that ignores the docstring fails at least one of them
    assert not any(score_sample(s, "    return None") for s in samples[:6])


def test_code_eval_prompts_are_held_out(tmp_path):
    paths = D.build_domain("code", tmp_path, 200, 40, seed=1)
    train = {D._key(s) for s in D.read_jsonl(paths["train"])}
    assert not train & {D._key(s) for s in D.read_jsonl(paths["eval"])}


def test_answers_follow_from_the_drawing():
    rng = random.Random(0)
    for _ in range(30):
        img, shapes = D.shapes_scene(rng)
        assert img.size == (84, 84) and 1 <= len(shapes) <= 6
        img, values, kind = D.chart_image(rng)
        assert len(set(values)) == 4 and kind in ("bar", "line")
        assert all(1 <= v <= 6 for v in values)
        img, n, k = D.slide_image(rng)
        assert 1 <= n <= 5 and 0 <= k <= min(2, n)
        # abnormal cells are the only very dark pixels on a slide
        dark = sum(1 for px in img.getdata() if sum(px) < 200)
        assert (dark > 0) == (k > 0)


def test_unknown_domain_is_named():
    with pytest.raises(ValueError, match="'poetry'"):
        D.generate("poetry", "train", 1, seed=0)


def test_read_jsonl_errors(tmp_path):
    with pytest.raises(FileNotFoundError):
        D.read_jsonl(tmp_path / "missing.jsonl")
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"id": 1}\nnot json\n')
    with pytest.raises(ValueError, match="line 2"):
        D.read_jsonl(bad)
