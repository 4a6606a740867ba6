"""`personatag submit`: validate a request file and drop it into the requests bucket."""

from __future__ import annotations

import json
import time
from typing import Any

from personatag.buckets import Buckets
from personatag.errors import PersonatagError
from personatag.pipeline.request_files import detect_format, parse_request, request_to_json


def submit_file(buckets: Buckets, data: bytes, *, name: str) -> dict[str, Any]:
    """Validate `data` (a request file called `name`) and store it for the dispatcher.

    A JSON request without a request_id gets one (written into the stored
    file); a CSV request's id is its file name. Returns {"request_id", "key"}.
    """
    req = parse_request(data, name=name)
    if detect_format(name) == "json":
        body = json.dumps(request_to_json(req), indent=2, sort_keys=True).encode() + b"\n"
        key = f"{req.request_id}.json"
    else:
        body = data
        key = f"{req.request_id}.csv"
    requests = buckets["requests"]
    if requests.exists(key):
        raise PersonatagError(
            f"a request file {key} is already in the requests bucket: request ids are "
            "idempotency keys, use a new one to run again"
        )
    requests.put(key, body)
    return {"request_id": req.request_id, "key": key}


def wait_for_result(buckets: Buckets, request_id: str, *, timeout: float) -> dict[str, Any]:
    """Wait for results/<request_id>/summary.json (written last) and return it."""
    results = buckets["results"]
    key = f"{request_id}/summary.json"
    deadline = time.monotonic() + timeout
    while not results.exists(key):
        if time.monotonic() >= deadline:
            raise PersonatagError(
                f"no result for {request_id} after {timeout:g} s: is a dispatcher running "
                "(`personatag dispatcher`)?"
            )
        time.sleep(0.2)
    summary: dict[str, Any] = json.loads(results.get(key))
    return summary
