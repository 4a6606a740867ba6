"""Peak RSS of one big contact-list request, per MB of request file.

    .venv/bin/python bench/request_memory.py [--contacts 20000] [--ids 2000000]

A fresh SQLite store in a temp folder (`personatag init`, `generate
--contacts N`, one persona), then for each format a request file naming
--ids contact ids ("c00000001", ...; the first N exist, the rest are unknown
and end up in failed.csv, the worst case): a JSON file with a `contacts`
list, and a CSV file of contact_id,persona,action rows. For each: `personatag submit FILE` and
`personatag dispatcher --once`, each in a new process; prints the file size,
each process's peak RSS (from wait4) and the peak per MB of file. Each
request must end `partial` (`succeeded` if every id is known).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path


def run(args: list[str], env: dict[str, str]) -> tuple[int, str]:
    """Run a personatag command in a new process; (its peak RSS in KiB, stdout)."""
    with tempfile.TemporaryFile("w+") as out, tempfile.TemporaryFile("w+") as err:
        proc = subprocess.Popen(
            [str(Path(sys.executable).with_name("personatag")), *args],
            env=env,
            stdout=out,
            stderr=err,
        )
        _, status, usage = os.wait4(proc.pid, 0)
        proc.returncode = os.waitstatus_to_exitcode(status)
        out.seek(0)
        err.seek(0)
        if proc.returncode:
            raise SystemExit(f"personatag {' '.join(args)} failed: {err.read().strip()}")
        return usage.ru_maxrss, out.read()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--contacts", type=int, default=20_000)
    ap.add_argument("--ids", type=int, default=2_000_000)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        env = {**os.environ, "PERSONATAG_DATA_DIR": str(Path(tmp) / "data")}
        run(["init"], env)
        run(["generate", "--contacts", str(args.contacts)], env)
        run(["persona", "add", "big", "--name", "Big", "--category", "interest"], env)
        ids = [f"c{i:08d}" for i in range(1, args.ids + 1)]
        files = Path(tmp) / "in"
        files.mkdir()
        body = {
            "version": 1,
            "request_id": "big-json",
            "persona": "big",
            "action": "tag",
            "contacts": ids,
        }
        (files / "big-json.json").write_text(json.dumps(body))
        (files / "big-csv.csv").write_text(
            "contact_id,persona,action\n" + "".join(f"{i},big,tag\n" for i in ids)
        )
        del ids, body
        print(f"{args.ids:,} ids, {args.contacts:,} of them known")
        print(
            f"{'file':<14}{'MB':>8}{'submit MB':>12}{'per MB':>8}{'dispatch MB':>13}{'per MB':>8}"
        )
        for path in sorted(files.iterdir()):
            mb = path.stat().st_size / 2**20
            submit, _ = run(["submit", str(path)], env)
            dispatch, _ = run(["dispatcher", "--once"], env)
            summary = Path(tmp) / "data" / "buckets" / "results" / path.stem / "summary.json"
            status = json.loads(summary.read_text())["status"]
            expected = "partial" if args.ids > args.contacts else "succeeded"
            if status != expected:
                raise SystemExit(f"{path.name}: status {status}, expected {expected}")
            print(
                f"{path.name:<14}{mb:>8.1f}{submit / 1024:>12.0f}{submit / 1024 / mb:>8.1f}"
                f"{dispatch / 1024:>13.0f}{dispatch / 1024 / mb:>8.1f}"
            )


if __name__ == "__main__":
    main()
