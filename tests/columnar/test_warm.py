"""A server builds the columnar copy at start-up in a process of its own; what
it is asked meanwhile is answered by the local engine, exactly, and says so."""

from __future__ import annotations

import logging
import threading
import time
from pathlib import Path

import pytest

from personatag.engines import get_engine
from personatag.engines.columnar import batch
from personatag.engines.columnar.copy import MANIFEST, folder_of
from personatag.store import Store
from personatag.tagging.preview import preview
from tests.columnar.test_engine import END, pop, settings_for, tag  # noqa: F401

EXPR = 'region = "EMEA" and seniority >= 2'


def test_warm_builds_the_copy_in_another_process(pop: Store, tmp_path: Path) -> None:  # noqa: F811
    s = settings_for(tmp_path)
    assert batch.needs_build(pop, s)
    get_engine("columnar", pop, s).warm()
    assert (folder_of(s, pop) / MANIFEST).exists()
    assert not batch.needs_build(pop, s)
    local = preview(pop, EXPR, engine="local", settings=s, as_of=END)
    assert preview(pop, EXPR, engine="columnar", settings=s, as_of=END) == local
    # A copy that exists is left to the first answer's catch-up: nothing to wait for.
    started = time.monotonic()
    batch.warm(pop, s)
    assert time.monotonic() - started < 5


def test_answers_during_the_build_come_from_the_local_engine(
    pop: Store,  # noqa: F811
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
) -> None:
    s = settings_for(tmp_path)
    tag(pop, s, "emea", 'region = "EMEA"', "local")
    local = preview(pop, EXPR, engine="local", settings=s, as_of=END, persona="emea")
    folder = folder_of(s, pop).resolve()
    warming = threading.Thread(target=batch.warm, args=(pop, s))
    warming.start()
    try:
        deadline = time.monotonic() + 30
        while folder not in batch._BUILDING and warming.is_alive():
            assert time.monotonic() < deadline
            time.sleep(0.005)
        # The build runs in a spawned interpreter (imports alone take longer
        # than this preview): this answer is given while it runs.
        with caplog.at_level(logging.WARNING, logger="personatag.tagging.fallback"):
            during = preview(pop, EXPR, engine="columnar", settings=s, as_of=END, persona="emea")
        assert folder in batch._BUILDING
    finally:
        warming.join()
    assert during == local
    assert "ran on the local engine" in caplog.text
    assert "being built" in caplog.text
    # Once saved, the copy answers.
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="personatag.tagging.fallback"):
        after = preview(pop, EXPR, engine="columnar", settings=s, as_of=END, persona="emea")
    assert after == local
    assert "local engine" not in caplog.text
