"""Golden files: criterion text -> canonical text -> AST JSON -> SQL per dialect.

Regenerate after an intended change, then review the diff line by line:

    PERSONATAG_REGEN_GOLDEN=1 .venv/bin/pytest tests/criteria/test_golden.py
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import select
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.engine import Dialect

from personatag.criteria import check, compile_sql, from_json, parse, to_json, to_text
from personatag.store.schema import build_tables

from .support import AS_OF, CATALOG, CUSTOM, PERSONAS

GOLDEN = Path(__file__).parent / "golden"
REGEN = os.environ.get("PERSONATAG_REGEN_GOLDEN") == "1"
TABLES = build_tables(sorted(CUSTOM.items()))
DIALECTS: dict[str, Dialect] = {
    "sqlite": sqlite.dialect(),
    "postgresql": postgresql.psycopg.dialect(),  # type: ignore[no-untyped-call]
}


def render_sql(criterion: str, dialect: str) -> tuple[str, str]:
    """The SELECT a criterion compiles to, and its bound parameters as the driver gets them."""
    expr = compile_sql(
        parse(criterion),
        tables=TABLES,
        catalog=CATALOG,
        persona_pks=PERSONAS,
        as_of=AS_OF,
        dialect=dialect,
    )
    d = DIALECTS[dialect]
    compiled = select(TABLES.contacts.c.pk).where(expr).compile(dialect=d)
    lines = []
    for name, value in compiled.params.items():
        processor = compiled.binds[name].type.dialect_impl(d).bind_processor(d)
        shown: Any = processor(value) if processor else value
        lines.append(f"{name} = {shown!r}")
    return str(compiled).replace(" \n", "\n").strip(), "\n".join(lines)


def render_case(title: str, criterion: str) -> str:
    node = parse(criterion)
    check(node, CATALOG)
    parts = [f"=== {title}", criterion, "--- text", to_text(node)]
    parts += ["--- json", json.dumps(to_json(node), indent=2, ensure_ascii=False)]
    for dialect in DIALECTS:
        sql, params = render_sql(criterion, dialect)
        parts += [f"--- {dialect}", sql, f"--- {dialect} params", params or "(none)"]
    return "\n".join(parts) + "\n"


def read_cases(path: Path) -> tuple[str, list[tuple[str, str, str]]]:
    """(header comment, [(title, criterion, full expected section)])."""
    header, cases = [], []
    title: str | None = None
    block: list[str] = []

    def flush() -> None:
        if title is not None:
            body = "\n".join(block)
            criterion = body.split("\n--- ", 1)[0].strip("\n")
            cases.append((title, criterion, f"=== {title}\n{body.strip()}\n"))

    for line in path.read_text(encoding="utf-8").splitlines():
        if line.startswith("=== "):
            flush()
            title, block = line[4:], []
        elif title is None:
            header.append(line)
        else:
            block.append(line)
    flush()
    return "\n".join(header).strip() + "\n", cases


COMPILE_FILE = GOLDEN / "compile.txt"
HEADER, CASES = read_cases(COMPILE_FILE)


def render_file() -> str:
    return HEADER + "\n" + "\n".join(render_case(t, c) for t, c, _ in CASES)


def test_golden_file() -> None:
    """The whole file, as generated; with PERSONATAG_REGEN_GOLDEN=1, rewrite it."""
    rendered = render_file()
    if REGEN:
        COMPILE_FILE.write_text(rendered, encoding="utf-8")
    assert COMPILE_FILE.read_text(encoding="utf-8") == rendered


@pytest.mark.skipif(REGEN, reason="regenerating: test_golden_file rewrites the file")
@pytest.mark.parametrize(("title", "criterion", "expected"), CASES, ids=[c[0] for c in CASES])
def test_compile_golden(title: str, criterion: str, expected: str) -> None:
    assert render_case(title, criterion) == expected


def test_golden_json_reads_back() -> None:
    for _, criterion, _ in CASES:
        node = parse(criterion)
        assert from_json(json.loads(json.dumps(to_json(node)))) == node


IDENTITY = [
    line
    for line in (GOLDEN / "identity.txt").read_text(encoding="utf-8").splitlines()
    if line and not line.startswith("#")
]


@pytest.mark.parametrize("criterion", IDENTITY)
def test_identity(criterion: str) -> None:
    """Each line is canonical: text -> AST -> text gives it back unchanged."""
    node = parse(criterion)
    assert to_text(node) == criterion
    assert from_json(to_json(node)) == node
