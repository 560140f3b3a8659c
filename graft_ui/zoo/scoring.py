"""Exact scoring for the mini-benchmarks: normalised exact match and executed unit tests.

Code samples are scored HumanEval style (`code_program`): the prompt's signature and
docstring, then the model's body, then the hidden asserts. `run_code_tests` runs a program plus the hidden asserts in a fresh, isolated Python
(`sys.executable -I`) in its own process group and temporary folder, with a wall-clock
timeout after which the whole group is killed, and with CPU/memory rlimits as a backstop.
It is a guard against accidents of a tiny model, not a sandbox for hostile code.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import tempfile
import textwrap
import unicodedata
from dataclasses import dataclass
from pathlib import Path

_NUMBER = re.compile(r"[-+]?(\d{1,3}(,\d{3})+|\d+)?(\.\d+)?")
_FENCE = re.compile(r"```(?:python|py)?\s*\n(.*?)(?:```|$)", re.S)


def normalise_answer(text) -> str:
    """Lower-case, NFKC, collapsed spaces, no surrounding quotes or final punctuation;
    numbers canonical ("1,000" -> "1000", "3.0" -> "3", "+3" -> "3")."""
    s = unicodedata.normalize("NFKC", "" if text is None else str(text)).strip().lower()
    s = re.sub(r"\s+", " ", s)
    for _ in range(3):  # peel nested wrappers such as "`3`." or '"yes"!'
        s = s.strip().strip("`'\"").strip().rstrip(".!?;:,").strip()
    if s and _NUMBER.fullmatch(s) and any(c.isdigit() for c in s):
        value = float(s.replace(",", ""))
        s = str(int(value)) if value.is_integer() else repr(value)
    return s


def exact_match(prediction, answer) -> bool:
    return normalise_answer(prediction) == normalise_answer(answer)


def extract_code(completion: str) -> str:
    """The code of a completion: the first fenced block if there is one, else the text."""
    completion = completion or ""
    m = _FENCE.search(completion)
    return m.group(1) if m else completion


def prompt_code(sample: dict) -> str:
    """The code in a code sample's prompt: its last user text from the first `def` line on."""
    texts = [c.get("text", "") for m in sample.get("messages", []) if m.get("role") == "user"
             for c in (m["content"] if isinstance(m["content"], list) else [{"text": m["content"]}])
             if isinstance(c, dict) and c.get("text")]
    text = texts[-1] if texts else ""
    m = re.search(r"^def \w+\(", text, re.M)
    return text[m.start():] if m else ""


def code_program(sample: dict, completion: str) -> str:
    """The program a code completion is tested as, HumanEval style: the prompt's signature and
    docstring followed by the completed body; a completion that restates the function
    (`def name(`) stands on its own."""
    code = extract_code(completion)
    header = prompt_code(sample)
    m = re.match(r"def (\w+)\(", header)
    if not m or re.search(rf"^\s*def {re.escape(m.group(1))}\(", code, re.M):
        return code
    body = textwrap.indent(textwrap.dedent(code.strip("\n")), "    ")
    return header.rstrip() + "\n" + body + "\n"


@dataclass(frozen=True)
class CodeResult:
    passed: bool
    status: str  # passed | failed | error | timeout
    detail: str = ""


_PRELUDE = """\
try:
    import resource
    resource.setrlimit(resource.RLIMIT_AS, ({mem}, {mem}))
    resource.setrlimit(resource.RLIMIT_CPU, ({cpu}, {cpu}))
    del resource
except Exception:
    pass
"""


def run_code_tests(completion: str, tests: str, timeout: float = 5.0, memory_mb: int = 1024) -> CodeResult:
    """Run `completion` then `tests` (asserts) in a subprocess; passed iff it exits with 0."""
    if timeout <= 0:
        raise ValueError(f"timeout={timeout!r} must be positive")
    code = extract_code(completion)
    program = _PRELUDE.format(mem=memory_mb << 20, cpu=int(timeout) + 2) + code + "\n\n" + (tests or "") + "\n"
    with tempfile.TemporaryDirectory(prefix="graft-code-") as tmp:
        path = Path(tmp, "candidate.py")
        path.write_text(program)
        env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "PYTHONHASHSEED": "0", "HOME": tmp}
        proc = subprocess.Popen(
            [sys.executable, "-I", "-B", str(path)],
            cwd=tmp,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            start_new_session=True,  # own process group: a timeout kills anything it spawned
        )
        try:
            _, err = proc.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            try:
                os.killpg(proc.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            proc.communicate()
            return CodeResult(False, "timeout", f"no result within {timeout:g} s")
    if proc.returncode == 0:
        return CodeResult(True, "passed")
    last = (err.decode(errors="replace").strip().splitlines() or [""])[-1][:300]
    status = "failed" if last.startswith("AssertionError") else "error"
    return CodeResult(False, status, last)


def score_sample(sample: dict, completion: str, timeout: float = 5.0) -> bool:
    """Score one completion against a dataset sample (contract fields `scorer`, `answer`, `tests`)."""
    scorer = sample.get("scorer", "exact")
    if scorer == "exact":
        return exact_match(completion, sample["answer"])
    if scorer == "code":
        if not sample.get("tests"):
            raise ValueError(f"sample {sample.get('id')!r} has scorer 'code' but no tests")
        return run_code_tests(code_program(sample, completion), sample["tests"], timeout=timeout).passed
    raise ValueError(f"sample {sample.get('id')!r} has unknown scorer {scorer!r}; expected 'exact' or 'code'")
