"""The Flink SQL compiler and the job program's statements, as text (no cluster)."""

from __future__ import annotations

import re
from datetime import UTC, datetime

import pytest

from personatag.criteria import CriteriaError, parse
from personatag.criteria.to_flink import compile_flink, like_to_regex, quote_string
from personatag.criteria.to_python import like_matcher
from personatag.domain import Catalog
from personatag.engines.flink.batch import parse_pks
from personatag.engines.flink.jobs import FlinkJobFailed, root_cause
from personatag.engines.flink.programs.batch_job import statements
from personatag.engines.flink.watchdog import task_progress
from personatag.engines.pks import runs as _runs

AS_OF = datetime(2026, 6, 30, 12, 0, tzinfo=UTC)
CATALOG = Catalog.standard(frozenset({"cio"}))


def flink(text: str) -> tuple[str, list[tuple[str, str]]]:
    q = compile_flink(parse(text), catalog=CATALOG, persona_pks={"cio": 1}, as_of=AS_OF)
    return q.where, q.schema


def test_values_are_literals_and_names_are_quoted() -> None:
    where, schema = flink('region = "it\'s" and seniority >= 3 and interests contains "a\'b"')
    assert where == (
        "((`region` = 'it''s') AND (`seniority` >= 3) AND (ARRAY_CONTAINS(`interests`, 'a''b')))"
    )
    assert schema == [
        ("pk", "BIGINT"),
        ("region", "STRING"),
        ("seniority", "BIGINT"),
        ("interests", "ARRAY<STRING>"),
    ]


def test_an_integer_field_meets_fractions_as_double() -> None:
    where, _ = flink("seniority in (7.25, -2)")
    assert where == "(CAST(`seniority` AS DOUBLE) IN (7.25E0, -2.0E0))"
    assert flink("seniority in (7, -2)")[0] == "(`seniority` IN (7, -2))"


def test_ilike_reads_a_column_folded_by_the_store() -> None:
    where, schema = flink('job_title ilike "%CHİEF%"')
    assert ("_f_job_title", "STRING") in schema
    assert where.startswith("REGEXP(`_f_job_title`, '(?s)\\A(?>.*?chi")


def test_windows_counts_and_personas_become_columns() -> None:
    where, schema = flink(
        'last_login_at within 30d and count(read where sector = "Energy", 90d) >= 5 '
        'and count(login, 7d) = 0 and persona("cio")'
    )
    names = [n for n, _ in schema]
    assert names == ["pk", "last_login_at", "_n0", "_n1", "_p0"]
    assert "(`_n0` >= 5)" in where and "(`_n1` = 0)" in where and "(`_p0` = TRUE)" in where
    hi = int(AS_OF.timestamp() * 1_000_000)
    assert f"`last_login_at` <= {hi}" in where


@pytest.mark.parametrize(
    "pattern, text, matches",
    [
        ("a%", "abc", True),
        ("a%", "ba", False),
        ("a_c", "abc", True),
        ("a_c", "a\nc", True),
        ("%.%", "a.b", True),
        ("%.%", "ab", False),
        ("(a)", "(a)", True),
        ("\\%", "\\x", True),
        ("😀_", "😀x", True),
        ("$^", "$^", True),
    ],
)
def test_like_regex_means_what_like_means(pattern: str, text: str, matches: bool) -> None:
    java = like_to_regex(pattern)
    # Java's \\A \\z (?s) and \\x{..} read the same in Python's re (written \\U there).
    py = re.sub(r"\\x\{([0-9A-F]+)\}", lambda m: re.escape(chr(int(m.group(1), 16))), java)
    py = py.replace("\\z", "\\Z")
    assert (re.search(py, text) is not None) == matches
    assert like_matcher(pattern)(text) == matches


def test_quote_string_doubles_quotes_only() -> None:
    assert quote_string("a'b\\c") == "'a''b\\c'"


def test_unknown_fields_fail_like_everywhere() -> None:
    with pytest.raises(CriteriaError, match="did you mean 'region'"):
        flink('regoin = "EMEA"')


def test_job_statements_share_a_snapshot_table() -> None:
    spec = {
        "format": 1,
        "name": "x",
        "queries": [
            {
                "snapshot": "file:///s/",
                "schema": [["pk", "BIGINT"]],
                "where": "TRUE",
                "output": "file:///o/q0",
            },
            {
                "snapshot": "file:///s/",
                "schema": [["pk", "BIGINT"]],
                "where": "FALSE",
                "output": "file:///o/q1",
            },
        ],
    }
    ddl, inserts = statements(spec)
    assert sum("snapshot_0" in d for d in ddl) == 1 and len(ddl) == 3
    assert inserts == [
        "INSERT INTO matched_0 SELECT pk FROM snapshot_0 WHERE TRUE",
        "INSERT INTO matched_1 SELECT pk FROM snapshot_0 WHERE FALSE",
    ]
    with pytest.raises(ValueError, match="format"):
        statements({**spec, "format": 2})


def test_result_files_are_parsed_strictly() -> None:
    assert parse_pks(b"3\n1\n2\n").tolist() == [3, 1, 2]
    assert parse_pks(b"").tolist() == []
    for bad in (b"1\nx\n", b"1\n\n2\n", b"1.5\n"):
        with pytest.raises(FlinkJobFailed):
            parse_pks(bad)


def test_pks_become_runs_only_when_there_are_few() -> None:
    import numpy as np

    assert _runs(np.arange(5, 10)) == [(5, 9)]
    assert _runs(np.array([1, 2, 3, 7, 9, 10])) == [(1, 3), (7, 7), (9, 10)]
    assert _runs(np.array([4])) == [(4, 4)]
    assert _runs(np.array([], dtype=np.int64)) is None
    assert _runs(np.arange(0, 200, 2)) is None  # 100 runs: the temp table instead


def test_root_cause_is_the_deepest_cause() -> None:
    trace = (
        "org.apache.flink.runtime.JobException: Recovery is suppressed\n\tat x.y(Z.java:1)\n"
        "Caused by: java.io.IOException: Failed to deserialize JSON '{\"pk\": 1'.\n\tat a.b\n"
        "Caused by: com.fasterxml.JsonParseException: Unexpected end-of-input\n"
    )
    assert root_cause({"root-exception": trace}) == (
        "com.fasterxml.JsonParseException: Unexpected end-of-input"
    )
    assert root_cause({}) == "no exception reported"


def test_an_unanswered_task_manager_rpc_is_named_as_such() -> None:
    trace = (
        "org.apache.pekko.pattern.AskTimeoutException: Ask timed out on "
        "[Actor[pekko.tcp://flink@127.0.0.1:42877/user/rpc/taskmanager_0#-93]] after [10000 ms].\n"
    )
    cause = root_cause({"root-exception": trace})
    assert cause.startswith("a TaskManager stopped answering (RPC timed out): ")
    assert "taskmanager_0" in cause


class _Overview:
    """Stands in for the cluster's REST API: answers /overview with `state`."""

    base_url = "http://flink.test"

    def __init__(self) -> None:
        self.state: dict[str, object] = {"taskmanagers": 1, "slots-available": 1}

    def overview(self) -> dict[str, object]:
        return dict(self.state)


def test_watchdog_troubles_accumulate_until_the_bound() -> None:
    from personatag.engines.flink.watchdog import Watchdog

    now = [0.0]
    rest = _Overview()
    dog = Watchdog(rest, 20.0, clock=lambda: now[0])  # type: ignore[arg-type]
    waiting = {"jid": "j1", "state": "RUNNING", "vertices": [{"status": "SCHEDULED"}]}
    rest.state = {"taskmanagers": 0}
    # a lost task manager and a job that cannot start, checked in turn, must not
    # reset each other's clock
    for t in (0.0, 5.0, 10.0, 15.0):
        now[0] = t
        dog.cluster(need_slot=False)
        dog.job(waiting)
    now[0] = 20.0
    with pytest.raises(FlinkJobFailed, match="no task managers for 20 s"):
        dog.cluster(need_slot=False)


def test_watchdog_progress_resets_the_clock() -> None:
    from personatag.engines.flink.watchdog import Watchdog

    now = [0.0]
    dog = Watchdog(_Overview(), 20.0, clock=lambda: now[0])  # type: ignore[arg-type]

    def info(records: int) -> dict[str, object]:
        return {
            "jid": "j1",
            "state": "RUNNING",
            "vertices": [{"status": "RUNNING", "metrics": {"read-records": records}}],
        }

    for t, records in ((0, 1), (15, 2), (30, 3), (45, 3)):  # moving until 30, then stuck
        now[0] = float(t)
        dog.job(info(records))
    now[0] = 64.0  # unchanged since the check at 45: not yet
    dog.job(info(3))
    now[0] = 65.0
    with pytest.raises(FlinkJobFailed, match="shows no progress for 20 s"):
        dog.job(info(3))


def test_task_progress_counts_finished_subtasks_of_every_vertex() -> None:
    def vertex(parallelism: int, **tasks: int) -> dict[str, object]:
        # The shape of /jobs/:jid "vertices" entries; record counts stay 0 in
        # a job chained into one task, so they must not matter.
        return {
            "id": "cbc357ccb763df2852fee8c4fc7d55f2",
            "name": "Source: snapshot_0[1] -> Calc[2] -> Sink: matched_0[3]",
            "parallelism": parallelism,
            "status": "RUNNING",
            "tasks": {"CREATED": 0, "SCHEDULED": 0, "RUNNING": 0, "FINISHED": 0, **tasks},
            "metrics": {"read-records": 0, "write-records": 0},
        }

    running = {"jid": "j1", "state": "RUNNING", "vertices": [vertex(2, RUNNING=2)]}
    assert task_progress(running) == (0, 2)
    half = {
        "state": "RUNNING",
        "vertices": [vertex(2, RUNNING=1, FINISHED=1), vertex(1, FINISHED=1)],
    }
    assert task_progress(half) == (2, 3)
    no_parallelism = {"vertices": [{"tasks": {"RUNNING": 3, "FINISHED": 1}}]}
    assert task_progress(no_parallelism) == (1, 4)
    assert task_progress({"jid": "j1", "state": "INITIALIZING", "vertices": []}) is None
    assert task_progress({"jid": "j1", "state": "CREATED"}) is None
