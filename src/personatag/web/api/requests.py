"""/requests: submit request files (editor), read their state and result files (viewer).

Submitting uses the same code as `personatag submit`: the file is validated,
then stored in the requests bucket, where a dispatcher (the one `personatag
serve` runs, or any other) claims and runs it.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Annotated, Any, Literal

from fastapi import APIRouter, File, Form, Path, Query, Request, Response, UploadFile
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import StreamingResponse
from pydantic import BaseModel, Field
from sqlalchemy import select

from personatag import accounts
from personatag.audit_log import record_now
from personatag.buckets import Buckets
from personatag.config import Settings
from personatag.domain import JobStatus
from personatag.errors import NotFoundError, PersonatagError
from personatag.jobs.repository import RequestFilter, get_job, get_request, list_requests
from personatag.jobs.submissions import API, CLI, VIA, WORKBENCH, Submitter
from personatag.jobs.views import JobPublic
from personatag.requests.files import check_size, detect_format, parse_request
from personatag.requests.reporting import RESULTS_FAILED
from personatag.requests.submit import ResultsMissing, submit_file, wait_for_result
from personatag.schemas import request_id_problem, request_json_schema
from personatag.store import Store
from personatag.web.api.deps import BucketsDep, SettingsDep, StoreDep
from personatag.web.auth import CurrentUser, Principal, role
from personatag.web.errors import ApiError
from personatag.web.schemas import JOB_STATUS_DOC, REQUEST_ID_DOC, RequestView, Submitted

router = APIRouter(tags=["requests"])

RESULT_FILES = {
    "summary.json": "application/json",
    "failed.csv": "text/csv; charset=utf-8",
    "changes.csv.gz": "application/gzip",
}
_CHUNK = 1 << 16

Wait = Annotated[bool, Query(description="wait until a dispatcher has run the request")]
Timeout = Annotated[float, Query(gt=0, le=600, description="seconds to wait with wait=true")]


class RequestList(BaseModel):
    requests: list[RequestView]
    total: int = Field(description="how many requests match the filters")
    limit: int
    offset: int


def _request_body_doc() -> dict[str, Any]:
    schema = request_json_schema()
    schema.pop("$schema", None)
    return {"required": True, "content": {"application/json": {"schema": schema}}}


def _as_caller(data: bytes, name: str, who: Principal) -> bytes:
    """A JSON request with `submitted_by` set to the caller (whatever the file said)."""
    if detect_format(name) != "json":
        return data
    obj = json.loads(data)
    obj["submitted_by"] = who.user.username
    return json.dumps(obj).encode()


#: The header the CLI sends, so its requests show as submitted from the CLI.
CLIENT_HEADER = "X-Personatag-Client"


def submitter_of(request: Request, store: Store, who: Principal) -> Submitter:
    """How `who` submits: from the workbench (a browser session), the CLI (a
    token, with the CLI's header) or the API (any other token)."""
    if who.via != "token":
        return Submitter(who.user.username, WORKBENCH)
    _, _, token = request.headers.get("authorization", "").strip().partition(" ")
    via = CLI if request.headers.get(CLIENT_HEADER, "").lower() == "cli" else API
    return Submitter(who.user.username, via, accounts.token_name(store, token.strip()))


async def _submit(
    data: bytes,
    name: str,
    *,
    request: Request,
    store: Store,
    buckets: Buckets,
    settings: Settings,
    who: Principal,
    wait: bool,
    timeout: float,
    response: Response,
) -> dict[str, Any]:
    check_size(len(data), name=name, max_bytes=settings.max_request_bytes)
    # Validate exactly as `personatag submit` does, before touching the bucket.
    req = await run_in_threadpool(
        parse_request, data, name=name, max_bytes=settings.max_request_bytes
    )
    if req.row_errors:
        rows = [
            {"row": e.line, "contact_id": e.contact_id, "persona": e.persona, "reason": e.reason}
            for e in req.row_errors
        ]
        raise ApiError(
            422,
            "invalid_rows",
            f"{name}: {len(rows)} row(s) cannot be used; fix them and upload again",
            rows=rows,
        )
    submitter = await run_in_threadpool(submitter_of, request, store, who)
    submitted = await run_in_threadpool(
        submit_file,
        buckets,
        _as_caller(data, name, who),
        name=name,
        store=store,
        submitter=submitter,
    )
    await run_in_threadpool(
        record_now,
        store,
        actor=who.user.username,
        action="request.submit",
        target=submitted["request_id"],
        detail={"key": submitted["key"]},
        source="api",
    )
    response.status_code = 202
    if wait:
        try:
            submitted["summary"] = await run_in_threadpool(
                wait_for_result, buckets, store, submitted, timeout=timeout
            )
            response.status_code = 200
        except ResultsMissing as exc:  # finished: say so, and why its report is missing
            submitted["error"] = str(exc)
            response.status_code = 200
        except PersonatagError:  # not finished in time: still accepted
            pass
    return submitted


# With wait=true a request that ran within the timeout answers 200 with its summary.
_RAN: dict[int | str, dict[str, Any]] = {
    200: {"model": Submitted, "description": "wait=true: it ran; `summary` is its outcome"}
}


@router.post(
    "/requests",
    status_code=202,
    response_model=Submitted,
    **role("editor", responses=_RAN, requestBody=_request_body_doc()),
)
async def request_submit(
    request: Request,
    response: Response,
    store: StoreDep,
    buckets: BucketsDep,
    settings: SettingsDep,
    who: CurrentUser,
    wait: Wait = False,
    timeout: Timeout = 60.0,
) -> Any:
    """Submit a JSON request (the request file format, version 1). 202 when stored;
    with `wait=true`, 200 and the summary once it has run (202 if not within `timeout`).
    `submitted_by` is always the caller."""
    data = await request.body()
    return await _submit(
        data,
        "request.json",
        request=request,
        store=store,
        buckets=buckets,
        settings=settings,
        who=who,
        wait=wait,
        timeout=timeout,
        response=response,
    )


@router.post(
    "/requests/upload", status_code=202, response_model=Submitted, **role("editor", responses=_RAN)
)
async def request_upload(
    request: Request,
    response: Response,
    store: StoreDep,
    buckets: BucketsDep,
    settings: SettingsDep,
    who: CurrentUser,
    file: Annotated[UploadFile, File(description="a request file: .csv or .json")],
    request_id: Annotated[
        str | None, Form(max_length=128, description="default: the CSV file's name")
    ] = None,
    wait: Wait = False,
    timeout: Timeout = 60.0,
) -> Any:
    """Upload a request file. A CSV file with rows that cannot be used is refused
    (422, `rows`: row, contact_id, persona, reason for each) and nothing is stored."""
    name = (file.filename or "upload.csv").replace("\\", "/").rsplit("/", 1)[-1] or "upload.csv"
    if request_id is not None:
        if problem := request_id_problem(request_id):
            raise ApiError(422, "invalid_input", f"request id {problem}", field="request_id")
        ext = name.rsplit(".", 1)[-1].lower() if "." in name else "csv"
        name = f"{request_id}.{ext}"
    if file.size is not None:
        check_size(file.size, name=name, max_bytes=settings.max_request_bytes)
    data = await file.read(settings.max_request_bytes + 1)
    return await _submit(
        data,
        name,
        request=request,
        store=store,
        buckets=buckets,
        settings=settings,
        who=who,
        wait=wait,
        timeout=timeout,
        response=response,
    )


RequestId = Annotated[str, Path(json_schema_extra=REQUEST_ID_DOC)]


def _checked_id(request_id: str) -> str:
    if problem := request_id_problem(request_id):
        raise ApiError(422, "invalid_input", f"request id {problem}", field="request_id")
    return request_id


def _job_of(store: Store, request_id: str) -> JobPublic | None:
    try:
        job = get_job(store, request_id)
    except NotFoundError:
        return None
    # get_job reads an all-digit reference as a job number.
    return job if job.request_id == request_id else None


SOURCE_DOC: dict[str, Any] = {"enum": list(VIA)}


@router.get("/requests", response_model=RequestList, **role("viewer"))
def requests_list(
    store: StoreDep,
    persona: Annotated[
        str | None, Query(max_length=64, description="requests that name this persona")
    ] = None,
    action: Annotated[Literal["tag", "untag"] | None, Query()] = None,
    engine: Annotated[str | None, Query(max_length=64, description="a batch engine's name")] = None,
    dry_run: Annotated[bool | None, Query()] = None,
    who: Annotated[str | None, Query(max_length=128, description="submitted by this user")] = None,
    source: Annotated[
        str | None,
        Query(
            max_length=20,
            json_schema_extra=SOURCE_DOC,
            description="submitted from the workbench, the api (a token), the cli or a file",
        ),
    ] = None,
    status: Annotated[str | None, Query(max_length=20, json_schema_extra=JOB_STATUS_DOC)] = None,
    limit: Annotated[int, Query(ge=1, le=1000)] = 50,
    offset: Annotated[int, Query(ge=0, le=10_000_000)] = 0,
) -> dict[str, Any]:
    """Requests with their newest job, newest first, filtered (each filter given
    must match) and paged (`total` counts every match). Requests refused before
    they became a job are only in the results bucket."""
    wanted = RequestFilter(persona, action, engine, dry_run, who, source, status)
    found, total = list_requests(store, wanted, limit=limit, offset=offset)
    return {
        "requests": [
            {
                "request_id": info.request_id,
                "status": job.status,
                "job": job,
                "summary": None,
                "request": info,
            }
            for info, job in found
        ],
        "total": total,
        "limit": limit,
        "offset": offset,
    }


@router.get("/requests/{request_id}", response_model=RequestView, **role("viewer"))
def request_show(request_id: RequestId, store: StoreDep, buckets: BucketsDep) -> dict[str, Any]:
    """One request: its newest job and its summary.json (once written)."""
    _checked_id(request_id)
    job = _job_of(store, request_id)
    results = buckets["results"]
    summary = None
    if results.exists(f"{request_id}/summary.json"):
        summary = json.loads(results.get(f"{request_id}/summary.json"))
    missing = _results_missing(store, request_id)
    if job is not None:
        status = job.status
    elif summary is not None:
        status = str(summary.get("status", JobStatus.FAILED))
    elif missing is not None:
        status = JobStatus.FAILED  # a file that never became a job was refused
    elif any(buckets["requests"].list(f"{request_id}.")):
        status = "submitted"
    else:
        raise NotFoundError(f"unknown request {request_id!r}")
    return {
        "request_id": request_id,
        "status": status,
        "job": job,
        "summary": summary,
        "error": missing,
        "request": get_request(store, request_id),
    }


def _results_missing(store: Store, request_id: str) -> str | None:
    """Why a file of the request finished without its result files (outcome
    `results_failed`, until a dispatcher writes them), or None."""
    rf = store.tables.request_files
    with store.read() as conn:
        error = conn.scalar(
            select(rf.c.error)
            .where(rf.c.request_id == request_id, rf.c.outcome == RESULTS_FAILED)
            .order_by(rf.c.claimed_at.desc())
            .limit(1)
        )
    return None if error is None else str(error)


@router.get(
    "/requests/{request_id}/results/{file_name}",
    response_class=StreamingResponse,
    **role("viewer", responses={200: {"content": {t: {} for t in RESULT_FILES.values()}}}),
)
def request_result(
    request_id: RequestId,
    file_name: Literal["summary.json", "failed.csv", "changes.csv.gz"],
    buckets: BucketsDep,
) -> StreamingResponse:
    """A result file of the request, streamed from the results bucket."""
    key = f"{_checked_id(request_id)}/{file_name}"
    results = buckets["results"]
    if not results.exists(key):
        raise NotFoundError(f"no {file_name} for request {request_id!r} (not finished yet?)")
    handle = results.open(key)

    def chunks() -> Iterator[bytes]:
        with handle:
            while chunk := handle.read(_CHUNK):
                yield chunk

    return StreamingResponse(
        chunks(),
        media_type=RESULT_FILES[file_name],
        headers={"Content-Disposition": f'attachment; filename="{file_name}"'},
    )
