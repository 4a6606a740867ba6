"""The anchor of bench/flink.py: a hand-written Flink SQL job over a snapshot folder.

    flink run -py bench/flink_bare_job.py SNAPSHOT_URL OUTPUT_URL

Reads the JSON-lines snapshot (pk, id), keeps every contact with an id, writes
the pks as CSV, and waits for the job to end.
"""

import sys

from pyflink.table import EnvironmentSettings, TableEnvironment


def main(snapshot: str, output: str) -> None:
    env = TableEnvironment.create(EnvironmentSettings.in_batch_mode())
    env.execute_sql(
        "CREATE TABLE snapshot (pk BIGINT, id STRING) WITH ("
        f"'connector' = 'filesystem', 'path' = '{snapshot}', 'format' = 'json')"
    )
    env.execute_sql(
        "CREATE TABLE matched (pk BIGINT) WITH ("
        f"'connector' = 'filesystem', 'path' = '{output}', 'format' = 'csv')"
    )
    env.execute_sql("INSERT INTO matched SELECT pk FROM snapshot WHERE id IS NOT NULL").wait()


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
