"""A criterion reads only what it needs from the copy's files: `is null` and
the type check read no values and no dictionary (for `id` or `email` that is
millions of strings)."""

from __future__ import annotations

import datetime as dt
from pathlib import Path

from personatag.criteria import parse
from personatag.engines.columnar import copy
from personatag.engines.columnar.batch import current_frame, matched_rows
from personatag.engines.columnar.segment import LazyColumns
from personatag.store import Store
from personatag.tagging.preview import preview
from tests.columnar.test_engine import END, pop, settings_for  # noqa: F401


def test_is_null_reads_neither_values_nor_dictionary(pop: Store, tmp_path: Path) -> None:  # noqa: F811
    s = settings_for(tmp_path)
    preview(pop, "id is not null", engine="columnar", settings=s, as_of=END)  # builds the copy
    copy._CACHE.clear()  # as a new process finds it
    frame = current_frame(pop, s)
    columns = frame.contacts.columns
    assert isinstance(columns, LazyColumns)
    catalog = pop.catalog()
    as_of = dt.datetime(2026, 1, 1, tzinfo=dt.UTC)
    for expr in ("id is not null", "email is null", "not (email is not null)"):
        mask = matched_rows(frame, parse(expr), catalog, as_of)
        local = preview(pop, expr, engine="local", settings=s, as_of=END)
        assert int(mask.sum()) == local["count"], expr
    assert "id" in columns and "email" in columns
    assert "id" not in columns._made and "email" not in columns._made
    # A comparison needs the values: then the column is made (and kept).
    matched_rows(frame, parse('email = "x"'), catalog, as_of)
    assert "email" in columns._made
