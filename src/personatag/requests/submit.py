"""`personatag submit`: validate a request file and drop it into the requests bucket."""

from __future__ import annotations

import json
import time
from typing import Any

from sqlalchemy import select

from personatag.buckets import Buckets
from personatag.errors import PersonatagError
from personatag.jobs.submissions import Submitter, record_submission
from personatag.requests.files import detect_format, parse_request, request_to_json
from personatag.requests.reporting import RESULTS_FAILED
from personatag.store import Store


def submit_file(
    buckets: Buckets,
    data: bytes,
    *,
    name: str,
    store: Store | None = None,
    submitter: Submitter | None = None,
) -> dict[str, Any]:
    """Validate `data` (a request file called `name`) and store it for the dispatcher.
    With `store` and `submitter`, who submitted it is recorded first (without,
    the request shows as a file dropped into the bucket).

    A JSON request without a request_id gets one (written into the stored
    file); a CSV request's id is its file name. Submitting a request id again
    stores another file (`<id>.2.json`, `<id>.2/<id>.csv`, ...): a request that
    failed runs again, one that succeeded reports its recorded result. Returns
    {"request_id", "key"}.
    """
    req = parse_request(data, name=name)
    if detect_format(name) == "json":
        body = json.dumps(request_to_json(req), indent=2, sort_keys=True).encode() + b"\n"
        ext = "json"
    else:
        body, ext = data, "csv"
    requests = buckets["requests"]
    key = f"{req.request_id}.{ext}"
    n = 1
    while requests.exists(key):
        n += 1
        # A CSV file's name is its request id: another file of it goes in a folder.
        rid = req.request_id
        key = f"{rid}.{n}.json" if ext == "json" else f"{rid}.{n}/{rid}.csv"
    if store is not None and submitter is not None:
        record_submission(store, key, req.request_id, submitter)
    requests.put(key, body)
    return {"request_id": req.request_id, "key": key}


class ResultsMissing(PersonatagError):
    """The submitted file finished, but its result files could not be written
    (outcome `results_failed`); a dispatcher writes them later."""


def wait_for_result(
    buckets: Buckets, store: Store, submitted: dict[str, Any], *, timeout: float
) -> dict[str, Any]:
    """Wait until the dispatcher has finished the submitted file, then return the
    summary that reports it (the request's, or its `+refused` folder's).
    ResultsMissing when it finished without its result files."""
    from personatag.requests.dispatcher import refused_folders

    key, request_id = submitted["key"], submitted["request_id"]
    rf = store.tables.request_files
    deadline = time.monotonic() + timeout
    while True:
        with store.read() as conn:
            row = conn.execute(select(rf.c.outcome, rf.c.error).where(rf.c.key == key)).first()
        outcome = row.outcome if row is not None else None
        if row is not None and outcome == RESULTS_FAILED:
            # It ran (or was refused), but its report is not there: say so now
            # rather than wait for a dispatcher's later attempt.
            raise ResultsMissing(
                f"{request_id} finished, but {row.error} (a dispatcher tries again; "
                f"`personatag jobs show {request_id}` has its status)"
            )
        if outcome is not None:
            break
        if time.monotonic() >= deadline:
            raise PersonatagError(
                f"no result for {request_id} after {timeout:g} s: is a dispatcher running "
                "(`personatag dispatcher`)?"
            )
        time.sleep(0.1)
    results = buckets["results"]
    for folder in (*refused_folders(key), request_id):
        if results.exists(f"{folder}/summary.json"):
            summary: dict[str, Any] = json.loads(results.get(f"{folder}/summary.json"))
            if folder == request_id or summary.get("source") == key:
                return summary
    raise PersonatagError(f"{key} finished ({outcome}) but left no summary in {results.url('')}")
