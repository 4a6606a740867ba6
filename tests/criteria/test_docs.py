"""docs/criteria.md is tested: its examples check, its error messages are real."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from personatag.criteria import CriteriaError, check, parse, to_text
from personatag.domain import STANDARD_CONTACT_FIELDS, Catalog, FieldType

DOC = (Path(__file__).resolve().parents[2] / "docs" / "criteria.md").read_text(encoding="utf-8")
CATALOG = Catalog(
    contact_fields={
        **STANDARD_CONTACT_FIELDS,
        "desk": FieldType.STRING,
        "aum_bn": FieldType.FLOAT,
        "vip": FieldType.BOOL,
    },
    personas=frozenset({"cio", "cio-emea", "credit-analyst"}),
)


def section(title: str) -> str:
    start = DOC.index(f"## {title}\n")
    end = DOC.find("\n## ", start + 1)
    return DOC[start : end if end >= 0 else None]


def code_blocks(text: str) -> list[str]:
    return re.findall(r"^```\n(.*?)^```", text, flags=re.S | re.M)


EXAMPLES = code_blocks(section("Examples"))


@pytest.mark.parametrize("criterion", EXAMPLES)
def test_examples_check(criterion: str) -> None:
    node = parse(criterion)
    check(node, CATALOG)
    assert parse(to_text(node)) == node


def _error_pairs() -> list[tuple[str, str]]:
    block = code_blocks(section("Error messages"))[0]
    lines = block.splitlines()
    return list(zip(lines[::2], (line.strip() for line in lines[1::2]), strict=True))


ERRORS = _error_pairs()


@pytest.mark.parametrize(("criterion", "message"), ERRORS, ids=[e[0] for e in ERRORS])
def test_documented_errors_are_real(criterion: str, message: str) -> None:
    with pytest.raises(CriteriaError) as info:
        check(parse(criterion), CATALOG)
    assert str(info.value) == message


def test_inline_examples_check() -> None:
    """Inline `criteria` in the NULL and count sections parse and check."""
    found = 0
    for title in ("Missing values (NULL)", "`count(...)`"):
        prose = re.sub(r"^```.*?^```", "", section(title), flags=re.S | re.M)
        for snippet in re.findall(r"`([^`]+)`", prose):
            if re.match(r"^([a-z_]+ (=|!=|not in|is) |count\(read.*\) [<>=!])", snippet):
                check(parse(snippet), CATALOG)
                found += 1
    assert found >= 12
