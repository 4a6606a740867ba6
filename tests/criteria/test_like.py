"""`like` / `ilike` match in time linear in the text on every evaluator."""

from __future__ import annotations

import random
import re
import subprocess
import sys
import textwrap

import pytest

from personatag.criteria.to_flink import like_to_regex
from personatag.criteria.to_python import like_matcher

# Before the fix each of these took longer than anyone waits (the old regexes
# backtrack through every way of spreading 12 `%`s over 60 characters).
PATHOLOGICAL = "%a" * 12 + "%b"
TEXT = "a" * 60


def _reference(pattern: str, text: str) -> bool:
    body = "".join(".*" if ch == "%" else "." if ch == "_" else re.escape(ch) for ch in pattern)
    return re.fullmatch(body, text, re.DOTALL) is not None


def _java_as_python(java: str) -> str:
    # Java's \A \z (?s) (?>...) and \x{..} read the same in Python's re (3.11+).
    py = re.sub(r"\\x\{([0-9A-F]+)\}", lambda m: re.escape(chr(int(m.group(1), 16))), java)
    return py.replace("\\z", "\\Z")


def _run(code: str) -> str:
    """Run `code` in a fresh interpreter; a pathological match would never return."""
    done = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code)],
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    )
    return done.stdout.strip()


def test_python_like_is_not_exponential() -> None:
    """Issue 17 item 9: the Python evaluator turned `%` into `.*` under fullmatch, so
    `"%a" * 10 + "%b"` against 40 `a`s took ~30 s (and an editor could stall `serve`
    with one ongoing criterion); matching must not backtrack."""
    out = _run(
        f"""
        from personatag.criteria.to_python import like_matcher
        m = like_matcher({PATHOLOGICAL!r})
        print(m({TEXT!r}), m({TEXT!r} + "b"), like_matcher("%A%" * 12)("a" * 100_000))
        """
    )
    assert out == "False True False"


def test_flink_like_regex_is_not_exponential() -> None:
    """Issue 17 item 9: the Flink job's REGEXP for `like` was `.*a.*a...b`, which Java
    (and Python) backtrack through exponentially; each middle piece is now atomic."""
    out = _run(
        f"""
        import re
        from personatag.criteria.to_flink import like_to_regex
        java = like_to_regex({PATHOLOGICAL!r})
        py = re.sub(r"\\\\x\\{{([0-9A-F]+)\\}}", lambda m: chr(int(m.group(1), 16)), java)
        py = py.replace("\\\\z", "\\\\Z")
        print(re.search(py, {TEXT!r}) is not None, re.search(py, {TEXT!r} + "b") is not None)
        """
    )
    assert out == "False True"


@pytest.mark.parametrize("seed", range(4))
def test_like_means_what_sql_like_means(seed: int) -> None:
    """The linear matchers agree with LIKE's meaning (% any run, _ one character,
    no escape character) on random patterns and texts, newlines included."""
    rng = random.Random(seed)
    for _ in range(5_000):
        pattern = "".join(rng.choice("ab%_\n\\.") for _ in range(rng.randint(0, 8)))
        text = "".join(rng.choice("ab\n\\.") for _ in range(rng.randint(0, 9)))
        expected = _reference(pattern, text)
        assert like_matcher(pattern)(text) == expected, (pattern, text)
        java = _java_as_python(like_to_regex(pattern))
        assert (re.search(java, text) is not None) == expected, (pattern, text)
