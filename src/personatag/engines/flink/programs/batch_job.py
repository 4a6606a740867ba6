"""The Flink job program: match contacts in a snapshot, write the matched pks.

Runs inside Flink's Python client from a job bundle:

    flink run -d -m HOST:PORT -pyfs personatag-job-<version>.zip \\
        -pym personatag.engines.flink.programs.batch_job RUN_SPEC.json

It imports only the standard library and PyFlink (the bundle is on the path,
its other modules need the app's dependencies). The run spec, written by the
flink engine, names the job and lists queries:

    {"format": 1, "name": "personatag job 12 ...", "parallelism": 2,
     "queries": [{"snapshot": "file:///.../snapshots/<key>/",
                  "schema": [["pk", "BIGINT"], ["job_title", "STRING"], ...],
                  "where": "(REGEXP(`_f_job_title`, '...'))",
                  "output": "file:///.../runs/<id>/q0/"}]}

All queries run as one batch job (a statement set); each writes one CSV
column of matched pks to its output folder.
"""

from __future__ import annotations

import json
import sys
from typing import Any

SPEC_FORMAT = 1


def _ident(name: str) -> str:
    return "`" + name.replace("`", "``") + "`"


def _string(value: str) -> str:
    return "'" + value.replace("'", "''") + "'"


def statements(spec: dict[str, Any]) -> tuple[list[str], list[str]]:
    """(DDL, INSERTs) for a run spec: pure text, testable without Flink."""
    if spec.get("format") != SPEC_FORMAT:
        raise ValueError(f"run spec format {spec.get('format')!r} is not {SPEC_FORMAT}")
    ddl, inserts = [], []
    sources: dict[tuple[str, str], str] = {}  # queries over one snapshot share its table
    for i, q in enumerate(spec["queries"]):
        columns = ", ".join(f"{_ident(n)} {t}" for n, t in q["schema"])
        source = sources.get((q["snapshot"], columns))
        if source is None:
            source = sources[(q["snapshot"], columns)] = f"snapshot_{len(sources)}"
            ddl.append(
                f"CREATE TEMPORARY TABLE {source} ({columns}) WITH ("
                f"'connector' = 'filesystem', 'path' = {_string(q['snapshot'])}, "
                "'format' = 'json', 'json.fail-on-missing-field' = 'false', "
                "'json.ignore-parse-errors' = 'false')"
            )
        ddl.append(
            f"CREATE TEMPORARY TABLE matched_{i} (pk BIGINT) WITH ("
            f"'connector' = 'filesystem', 'path' = {_string(q['output'])}, 'format' = 'csv')"
        )
        # The condition comes from criteria.to_flink: literals quoted, names from the schema.
        inserts.append(f"INSERT INTO matched_{i} SELECT pk FROM {source} WHERE {q['where']}")  # noqa: S608
    return ddl, inserts


def run(spec: dict[str, Any], env: Any) -> str | None:
    """Submit the run spec's queries as one batch job on `env` (a batch
    TableEnvironment); returns the Flink JobID (None if Flink gives none).

    Used by `main` (`flink run`) and by the warm submitter, which passes an
    environment created in its long-running client for every run.
    """
    ddl, inserts = statements(spec)
    config = env.get_config()
    config.set("pipeline.name", str(spec["name"]))
    if spec.get("parallelism"):
        config.set("parallelism.default", str(int(spec["parallelism"])))
    for statement in ddl:
        env.execute_sql(statement)
    batch = env.create_statement_set()
    for statement in inserts:
        batch.add_insert_sql(statement)
    client = batch.execute().get_job_client()
    return None if client is None else str(client.get_job_id())


def main(argv: list[str]) -> int:
    from pyflink.table import EnvironmentSettings, TableEnvironment

    if len(argv) != 2:
        print(
            "usage: python -m personatag.engines.flink.programs.batch_job RUN_SPEC.json",
            file=sys.stderr,
        )
        return 2
    with open(argv[1], encoding="utf-8") as f:
        spec = json.load(f)
    jid = run(spec, TableEnvironment.create(EnvironmentSettings.in_batch_mode()))
    if jid is not None:
        print(f"PERSONATAG_FLINK_JOB_ID={jid}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
