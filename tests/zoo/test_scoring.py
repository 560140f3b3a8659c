import time

import pytest

from graft_ui.zoo.scoring import (
    code_program,
    exact_match,
    extract_code,
    normalise_answer,
    run_code_tests,
    score_sample,
)

CODE_SAMPLE = {
    "id": "code-eval-0000",
    "domain": "code",
    "messages": [{"role": "user", "content": [{"type": "text", "text":
                  'Complete the Python function.\ndef get_total(x, y):\n    """Return the sum of x and y."""'}]}],
    "answer": "    return x + y",
    "scorer": "code",
    "tests": "assert get_total(2, 3) == 5\nassert get_total(-1, 1) == 0",
}


@pytest.mark.parametrize(
    "raw, expected",
    [
        ("3", "3"),
        (" 3. ", "3"),
        ("3.0", "3"),
        ("+3", "3"),
        ("-2", "-2"),
        ("1,000", "1000"),
        ("2.50", "2.5"),
        ('"Yes"', "yes"),
        ("`4`.", "4"),
        ("Q3.", "q3"),
        ("  Up!  ", "up"),
        ("two  words", "two words"),
        ("ＱＳ", "qs"),  # NFKC folds full-width letters
        ("", ""),
        (None, ""),
    ],
)
def test_normalise_answer(raw, expected):
    assert normalise_answer(raw) == expected


def test_exact_match():
    assert exact_match("Yes.", "yes")
    assert exact_match("7", "7.0")
    assert not exact_match("17", "7")
    assert not exact_match("Q2", "Q3")
    assert not exact_match("yes, there are", "yes")


def test_extract_code_strips_fences():
    assert extract_code("```python\ndef f():\n    return 1\n```\nmore text") == "def f():\n    return 1\n"
    assert extract_code("def f():\n    return 1") == "def f():\n    return 1"


def test_code_executor_passes_correct_solution():
    r = run_code_tests("def add(a, b):\n    return a + b", "assert add(2, 3) == 5\nassert add(-1, 1) == 0")
    assert r.passed and r.status == "passed"


def test_code_executor_fails_wrong_solution():
    r = run_code_tests("def add(a, b):\n    return a - b", "assert add(2, 3) == 5")
    assert not r.passed and r.status == "failed"
    r = run_code_tests("def add(a, b)\n    return a + b", "assert add(2, 3) == 5")
    assert not r.passed and r.status == "error" and "SyntaxError" in r.detail


def test_code_executor_times_out_infinite_loop():
    t = time.monotonic()
    r = run_code_tests("def add(a, b):\n    while True:\n        pass", "assert add(2, 3) == 5", timeout=1.0)
    assert not r.passed and r.status == "timeout"
    assert time.monotonic() - t < 10


def test_code_executor_kills_spawned_children():
    # a child that outlives the candidate must not keep the suite waiting on its pipes
    code = "import subprocess, sys\nsubprocess.Popen([sys.executable, '-c', 'import time; time.sleep(60)'])\nwhile True:\n    pass"
    t = time.monotonic()
    r = run_code_tests(code, "", timeout=1.0)
    assert r.status == "timeout"
    assert time.monotonic() - t < 10


def test_code_executor_is_isolated_from_cwd(tmp_path, monkeypatch):
    (tmp_path / "helper_mod_xyz.py").write_text("X = 1\n")
    monkeypatch.chdir(tmp_path)
    r = run_code_tests("import helper_mod_xyz", "")
    assert not r.passed


def test_score_sample_dispatch():
    assert score_sample({"scorer": "exact", "answer": "4"}, "4")
    ok = {"scorer": "code", "answer": "", "tests": "assert f() == 1"}
    assert score_sample(ok, "def f():\n    return 1")
    assert not score_sample(ok, "def f():\n    return 2")
    with pytest.raises(ValueError, match="unknown scorer"):
        score_sample({"id": "x", "scorer": "fuzzy", "answer": "a"}, "a")
    with pytest.raises(ValueError, match="no tests"):
        score_sample({"id": "x", "scorer": "code", "answer": "", "tests": None}, "a")
    with pytest.raises(ValueError, match="timeout"):
        run_code_tests("", "", timeout=0)


@pytest.mark.parametrize(
    "completion, ok",
    [
        ("    return x + y", True),  # the body, as the dataset's answer
        ("return x + y", True),  # decoded without its indentation
        ("def get_total(x, y):\n    return x + y", True),  # the whole function restated
        ("```python\ndef get_total(x, y):\n    return x + y\n```", True),
        ("    return x - y", False),
        ("def other(x, y):\n    return x + y", False),  # defines the wrong function inside the body
        ("    while True:\n        pass", False),
    ],
)
def test_code_samples_are_scored_humaneval_style(completion, ok):
    assert score_sample(CODE_SAMPLE, completion, timeout=1.0) is ok


def test_code_program_layout():
    prog = code_program(CODE_SAMPLE, "return x + y")
    assert prog == 'def get_total(x, y):\n    """Return the sum of x and y."""\n    return x + y\n'
