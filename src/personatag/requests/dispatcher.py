"""The dispatcher: turns request files in the `requests` bucket into jobs.

- Every file is claimed exactly once in the store (`request_files`, keyed by
  the object key), so a file seen twice, or by two dispatchers, runs once.
- On start, and then on every poll, the whole bucket is listed: a file dropped
  while no dispatcher ran is picked up; nothing relies on events arriving.
- Claims and jobs carry an owner (host, pid, start token). A dispatcher that
  died (kill -9) leaves claims and jobs whose owner is gone; the next one
  takes them over and runs them again. That is safe because a job's
  memberships and its outcome commit in one transaction: a job that never
  finished applied nothing.
- Up to `workers` jobs run at once; the rest wait in the queue. Every job has
  a deadline (its SQL is interrupted when it passes) and can be cancelled.
- Every request ends with result files, including a malformed one.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import os
import re
import secrets
import socket
import threading
import time
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import psutil
from sqlalchemy import Connection, select, update
from sqlalchemy.exc import IntegrityError

from personatag.buckets import Buckets
from personatag.config import Settings
from personatag.domain import JobStatus, utcnow
from personatag.engines.control import JobControl
from personatag.engines.flink.deploy import active_bundle, scan_artifacts
from personatag.errors import PersonatagError
from personatag.jobs import repository as jobs
from personatag.jobs.progress import DONE, Progress
from personatag.jobs.submissions import submission_of
from personatag.logs import request_context
from personatag.metrics import Metrics, default_metrics
from personatag.requests.files import RequestFile, check_size, parse_request
from personatag.requests.reporting import RESULTS_FAILED, ResultWriter, one_line
from personatag.service import Backoff, Service
from personatag.store import Store
from personatag.store.transient import retrying, transient
from personatag.tagging.contact_lists import FailedRow, LoadedList
from personatag.tagging.outcome import AdhocResult, RequestFailed, reason_of
from personatag.tagging.plan import Item, resolve
from personatag.tagging.runner import JobRequest, JobRun, JobRunner, OpenedJob

log = logging.getLogger(__name__)

# Times a file is prepared while the store fails transiently, before its claim
# is let go for a later scan.
PREPARE_ATTEMPTS = 3

REQUEST_SUFFIXES = (".json", ".csv")
_UNSAFE_ID = re.compile(r"[^A-Za-z0-9_-]+")


def _process_start(pid: int) -> str:
    """When process `pid` started (clock ticks since boot), or "" if unknown.

    With the pid it names one process for good: a pid reused by a new process
    has another start time. Ticks since boot rather than psutil's epoch seconds:
    those move when the wall clock is set, and ticks match the tokens already
    written.
    """
    try:
        started = psutil.Process(pid).create_time()
        booted = psutil.boot_time()
    except (psutil.Error, OSError):
        return ""
    return str(round((started - booted) * os.sysconf("SC_CLK_TCK")))


def _owner_token() -> str:
    pid = os.getpid()
    return f"{socket.gethostname()}:{pid}:{_process_start(pid)}:{secrets.token_hex(3)}"


def _owner_alive(owner: str | None) -> bool:
    """Is the process named by an owner token still running (same host only)?"""
    if not owner:
        return False
    host, pid_text, started, *_ = [*owner.split(":"), "", "", ""]
    if host != socket.gethostname() or not pid_text.isdigit():
        return True  # another host: trust its heartbeat instead
    try:
        os.kill(int(pid_text), 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return not started or _process_start(int(pid_text)) == started


def watch_folder(root: Path | None, wake: threading.Event) -> Any:
    """Set `wake` whenever a file appears under `root`; None if it cannot watch."""
    if root is None:
        return None
    try:
        from watchdog.events import FileSystemEvent, FileSystemEventHandler
        from watchdog.observers import Observer
    except ImportError:  # polling alone still finds every file
        return None

    class _Wake(FileSystemEventHandler):
        def on_any_event(self, event: FileSystemEvent) -> None:
            if event.event_type in ("created", "moved", "closed"):
                wake.set()

    root.mkdir(parents=True, exist_ok=True)
    observer = Observer()
    observer.schedule(_Wake(), str(root), recursive=True)
    observer.daemon = True
    observer.start()
    return observer


def request_id_for_key(key: str) -> str:
    """The results folder of a file whose request id cannot be read (or is
    refused): its key without the extension, every run of other characters
    folded to one '_' (`evil/../x.json` -> `evil_x`), so it is always a safe
    folder name. Never the id a request runs under (see request_id_from_name)."""
    stem = key.rsplit(".", 1)[0] if "." in key.rsplit("/", 1)[-1] else key
    return _UNSAFE_ID.sub("_", stem).strip("_")[:128] or "request"


def refused_folders(key: str) -> tuple[str, str]:
    """Where a refused file `key` reports when its request's folder is taken:
    `<folded key>+refused`, or, when another key that folds alike reported
    there first, `<folded key>-<hash of key>+refused` (the key alone names it,
    so one refusal never overwrites another's report)."""
    folded = request_id_for_key(key)
    digest = hashlib.sha256(key.encode("utf-8", "surrogatepass")).hexdigest()[:8]
    return f"{folded}+refused", f"{folded[:119]}-{digest}+refused"


@dataclass(frozen=True)
class _Prepared:
    """A claimed file whose request is recorded as a queued job."""

    key: str
    request: RequestFile
    job: OpenedJob
    started: datetime

    @property
    def job_pk(self) -> int:
        return self.job.job_pk


@dataclass
class DispatcherStats:
    scans: int = 0
    last_scan_at: float | None = None
    claimed: int = 0
    finished: dict[str, int] = field(default_factory=dict)
    # Files the last scan left for later, and why: their request runs from
    # another file (tried again once that run has ended).
    waiting: dict[str, str] = field(default_factory=dict)
    # Files the last scan could not prepare because the store failed (their
    # claims let go: a later scan prepares them), and why.
    deferred: dict[str, str] = field(default_factory=dict)


class Dispatcher(Service):
    """Claims and runs request files; as a service (see personatag.service), one
    round recovers, scans, beats and deploys, then waits for a new file or the
    poll interval. `serve` loops in the calling thread."""

    thread_name = "dispatcher"
    title = "the embedded dispatcher"

    def __init__(
        self,
        store: Store,
        buckets: Buckets,
        settings: Settings,
        *,
        workers: int | None = None,
        deadline_s: float | None = None,
        poll_s: float | None = None,
        stale_s: float = 30.0,
        progress_s: float = 1.0,
        results_attempts: int = 4,
        results_backoff_s: float = 0.5,
        metrics: Metrics | None = None,
    ) -> None:
        """`progress_s`: a running job writes its progress counts at most this
        often (phase changes are written at once). Result files are written up
        to `results_attempts` times, `results_backoff_s` apart (doubling)."""
        self.store = store
        self.buckets = buckets
        self.settings = settings
        self.workers = workers or settings.dispatcher_workers
        self.deadline_s = deadline_s or settings.job_deadline_s
        self.poll_s = poll_s or settings.dispatcher_poll_s
        self.stale_s = stale_s
        self.runner = JobRunner(store, settings, progress_s=progress_s)
        self.metrics = metrics or default_metrics()
        workers = self.workers
        self.owner = _owner_token()
        self.stats = DispatcherStats()
        self._pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="job")
        self._running: dict[int, JobControl] = {}
        self._owned: set[int] = set()  # queued or running jobs of this dispatcher
        self._stopping = False
        self._results = ResultWriter(
            store, buckets, attempts=results_attempts, backoff_s=results_backoff_s
        )
        self._waited: dict[str, str] = {}  # stats.waiting of the scan before
        self._futures: set[Future[None]] = set()
        self._lock = threading.Lock()
        # A failed round is tried again after the poll interval, like any other.
        super().__init__(Backoff(self.poll_s, self.poll_s), wake=threading.Event())
        self._watcher: Any = None

    # -- scanning and claiming ------------------------------------------------

    def scan(self) -> int:
        """Claim every unclaimed request file (and orphaned claims); queue them."""
        self.stats.scans += 1
        self.stats.last_scan_at = time.time()
        self._waited, self.stats.waiting = self.stats.waiting, {}
        self.stats.deferred = {}
        # Files of other types (a README, a notes.txt) are not requests: left alone.
        keys = [k for k in self.buckets["requests"].list() if k.lower().endswith(REQUEST_SUFFIXES)]
        rf = self.store.tables.request_files
        with self.store.read() as conn:  # one query, not a failed claim per old file
            ended = {
                r.key: r
                for r in conn.execute(
                    select(rf.c.key, rf.c.outcome, rf.c.claimed_at, rf.c.job_pk).where(
                        rf.c.outcome.is_not(None)
                    )
                )
            }
        queued = 0
        for key in keys:
            if key in ended:
                if ended[key].outcome == RESULTS_FAILED:
                    job = self._retry_results(ended[key])
                    if job is not None:
                        queued += 1
                        self._submit(job)
                continue
            try:
                claimed = self._claim(key)
            except Exception:  # one key the store refuses must not hold up the others
                log.exception("request file %s could not be claimed", key)
                continue
            if claimed:
                job = self._prepare_safely(key)
                if job is not None:
                    queued += 1
                    self._submit(job)
        self.metrics.mark_scan()
        self._publish_queue()
        return queued

    def _claim(self, key: str) -> bool:
        rf = self.store.tables.request_files
        try:
            with self.store.write() as conn:
                conn.execute(
                    rf.insert().values(key=key, claimed_at=utcnow(), claimed_by=self.owner)
                )
            self.stats.claimed += 1
            self.metrics.mark_claimed()
            return True
        except IntegrityError:
            pass
        # Claimed before: take it over only if its claimer died before finishing.
        with self.store.write() as conn:
            row = conn.execute(
                select(rf.c.claimed_by, rf.c.outcome, rf.c.claimed_at, rf.c.request_id).where(
                    rf.c.key == key
                )
            ).first()
            if row is None or row.outcome is not None or not self._claimer_gone(conn, row):
                return False
            took = conn.execute(
                update(rf)
                .where(rf.c.key == key, rf.c.claimed_by == row.claimed_by, rf.c.outcome.is_(None))
                .values(claimed_by=self.owner, claimed_at=utcnow()),
                execution_options={"preserve_rowcount": True},
            ).rowcount
        if took:
            log.info("taking over request file %s from %s", key, row.claimed_by)
            self.metrics.mark_claimed()
        return bool(took)

    def _claimer_gone(self, conn: Any, claim: Any) -> bool:
        """Did the dispatcher holding an unfinished claim stop? On this host its
        pid says so; another host's is gone once the claim is older than the
        stale interval and no job of its request is queued or running (their
        heartbeats would keep them so: see recover)."""
        owner = claim.claimed_by
        if owner.split(":", 1)[0] == socket.gethostname():
            return not _owner_alive(owner)
        if claim.claimed_at > utcnow() - timedelta(seconds=self.stale_s):
            return False
        if claim.request_id is None:
            return True
        t = self.store.tables
        live = conn.scalar(
            select(t.jobs.c.pk)
            .join(t.requests, t.requests.c.pk == t.jobs.c.request_pk)
            .where(
                t.requests.c.request_id == claim.request_id,
                t.jobs.c.status.in_(jobs.ACTIVE),
            )
            .limit(1)
        )
        return live is None

    def _submit(self, job: _Prepared) -> None:
        future = self._pool.submit(self._run_safely, job)
        with self._lock:
            self._futures.add(future)
        future.add_done_callback(lambda f: self._futures.discard(f))

    # -- running one request file ---------------------------------------------

    def _prepare_safely(self, key: str) -> _Prepared | None:
        try:
            return self.prepare(key)
        except Exception:  # prepare ends every file itself; this is the store failing
            log.exception("request file %s could not be prepared", key)
            return None

    def _run_safely(self, job: _Prepared) -> None:
        try:
            self.run(job)
        except Exception:
            log.exception("request %s could not be run", job.request.request_id)

    def handle(self, key: str) -> str:
        """Prepare and run one claimed request file now; returns its outcome."""
        job = self.prepare(key)
        return "done" if job is None else self.run(job)

    def prepare(self, key: str) -> _Prepared | None:
        """Read, check and record a claimed file as a queued job.

        Returns the queued job, or None when the file is already finished
        (malformed, invalid, or a duplicate of a request that ran): those get
        their result files here. Whatever goes wrong while preparing (a parser
        or compiler that raises, a store that refuses a value) ends the file
        as a failed request with a summary that says why: no file is left
        claimed without an outcome, to fail again on every restart. Only a
        store that fails transiently (a dropped connection, a deadlock) is no
        fault of the file: preparing is tried again, and if the store still
        fails the claim is let go, so that a later scan prepares it afresh.
        """
        started = utcnow()
        parsed: list[RequestFile] = []
        try:
            return retrying(
                lambda _attempt: self._prepare(key, started, parsed),
                what=f"request file {key}",
                # Few: the store writes inside are retried themselves, and a
                # scan must not stall on one file while the store is down.
                attempts=PREPARE_ATTEMPTS,
                give_up=lambda: self._stopping,
            )
        except Exception as exc:
            if (cause := transient(exc)) is not None:
                self._let_go(key, f"the store failed ({cause})")
                return None
            request = parsed[-1] if parsed else None
            request_id = request.request_id if request else request_id_for_key(key)
            reason = one_line(reason_of(exc))
            unexpected = not isinstance(exc, PersonatagError)
            log.warning(
                "request file %s failed while being prepared: %s",
                key,
                reason,
                exc_info=unexpected and log.isEnabledFor(logging.DEBUG),
            )
            summary = self._summary(
                request_id,
                key,
                JobStatus.FAILED,
                {},
                started,
                error=f"{key}: the request could not be prepared: {reason}",
                req=request,
            )
            self._refuse(key, request_id, summary)
            return None

    def _prepare(self, key: str, started: datetime, parsed: list[RequestFile]) -> _Prepared | None:
        try:
            bucket = self.buckets["requests"]
            max_bytes = self.settings.max_request_bytes
            check_size(bucket.size(key), name=key, max_bytes=max_bytes)
            # A file without its own request id takes it from its name, by the
            # same rule as `submit` (so reading it again names the same request);
            # a name that is no request id is refused, never folded into one.
            request = self._with_engine(
                parse_request(bucket.get(key), name=key, max_bytes=max_bytes, id_from_name=True)
            )
        except PersonatagError as exc:
            request_id = request_id_for_key(key)
            summary = self._summary(request_id, key, JobStatus.FAILED, {}, started, error=str(exc))
            self._refuse(key, request_id, summary)
            return None
        parsed.append(request)
        return self._queue(key, request, started)

    def _with_engine(self, request: RequestFile) -> RequestFile:
        """`request` with its engine named: a file that names none runs on this
        dispatcher's batch_engine setting."""
        if request.engine is not None:
            return request
        return dataclasses.replace(request, engine=self.settings.batch_engine)

    def _let_go(self, key: str, why: str) -> None:
        """Give up this dispatcher's claim on `key` (no outcome recorded), so that
        a later scan, of this dispatcher or another, prepares it again."""
        rf = self.store.tables.request_files

        def release(_attempt: int) -> None:
            with self.store.write() as conn:
                conn.execute(
                    rf.delete().where(
                        rf.c.key == key, rf.c.claimed_by == self.owner, rf.c.outcome.is_(None)
                    )
                )

        self.stats.deferred[key] = why
        try:
            retrying(release, what=f"request file {key}")
        except Exception as exc:  # still claimed: a restarted dispatcher takes it over
            log.error(
                "request file %s could not be prepared (%s) nor let go (%s); "
                "a restarted dispatcher takes it over",
                key,
                why,
                one_line(reason_of(exc)),
            )
            return
        log.warning("request file %s could not be prepared: %s; tried again later", key, why)

    def _refuse(
        self,
        key: str,
        request_id: str,
        summary: dict[str, Any],
        failures: list[FailedRow] | None = None,
        *,
        taken: bool = False,
    ) -> None:
        """Report a file that never became a job. Its results go to its request's
        folder, unless another file already reported there (a request that ran,
        or another refusal) or `taken` (another request has the id: its job may
        still be writing there): then to `<key>+refused/`, which no request id
        can name ('+' is not allowed in ids), so nothing finished is overwritten."""
        folder = request_id
        results = self.buckets["results"]
        try:
            if taken or results.exists(f"{request_id}/summary.json"):
                folder, unique = refused_folders(key)
                if self._reported_by_another(folder, key):
                    folder = unique
        except Exception as exc:  # the results bucket fails: a later scan refuses it again
            unchecked = f"results could not be written: {one_line(reason_of(exc))}"
            self._done(key, request_id, JobStatus.FAILED, results_error=unchecked)
            return
        summary = {**summary, "results": folder}
        error = self._results.write(
            key, request_id=folder, summary=summary, failures=failures or []
        )
        self._done(key, request_id, JobStatus.FAILED, results_error=error)

    def _reported_by_another(self, folder: str, key: str) -> bool:
        """Does `folder` hold the report of a file other than `key`?"""
        results = self.buckets["results"]
        if not results.exists(f"{folder}/summary.json"):
            return False
        try:
            source = json.loads(results.get(f"{folder}/summary.json")).get("source")
        except ValueError:  # not ours to judge: keep clear of it
            return True
        return bool(source != key)

    def _queue(self, key: str, request: RequestFile, started: datetime) -> _Prepared | None:
        row_failures = [
            FailedRow(line, cid, reason, persona)
            for line, cid, persona, reason in request.row_errors
        ]
        as_of = request.as_of or utcnow()
        items = [
            Item(
                i.persona,
                i.action,
                criterion=i.criterion,
                expr=i.expr,
                contact_ids=i.contact_ids,
            )
            for i in request.items
        ]
        prior = self._prior_success(request.request_id)
        if prior is not None:
            if prior == key:
                # This very file's job committed, but its dispatcher died before
                # reporting it: report it now, from what the store recorded.
                self._report_recorded(key, request)
            elif self._same_content(prior, key):
                self._done(key, request.request_id, "duplicate")
            else:
                error = (
                    f"request id {request.request_id!r} was already used by "
                    f"{prior or 'a command-line request'} for a different request; use a new id"
                )
                summary = self._summary(
                    request.request_id, key, JobStatus.FAILED, {}, started, error=error, req=request
                )
                self._refuse(key, request.request_id, summary, taken=True)
            return None
        if request.format == "csv":
            # A CSV file names many contacts: rows of a persona that cannot be
            # tagged are failed rows, like unknown contact ids; the rest applies.
            items = self._drop_bad_personas(items, row_failures)
        try:
            if not items:
                raise PersonatagError("no row of the file can be applied (see failed.csv)")
            plan = resolve(self.store, items)
        except PersonatagError as exc:
            summary = self._summary(
                request.request_id, key, JobStatus.FAILED, {}, started, error=str(exc), req=request
            )
            self._refuse(key, request.request_id, summary, row_failures)
            return None
        submitter = submission_of(self.store, key, named=request.submitted_by)
        job_request = JobRequest(
            request_id=request.request_id,
            plan=plan,
            as_of=as_of,
            engine=request.engine or self.settings.batch_engine,
            dry_run=request.dry_run,
            submitted_by=submitter.who,
            source=key,
            format=request.format,
            row_failures=tuple(row_failures),
            via=submitter.via,
            token=submitter.token,
        )
        # Read before the write transaction; a record that cannot be read fails
        # the job once it is recorded (below), like any failure after that.
        bundle_error: Exception | None = None
        try:
            active = active_bundle(self.buckets)
        except Exception as exc:
            active, bundle_error = None, exc
        rf = self.store.tables.request_files

        def name_request(conn: Connection) -> None:
            conn.execute(update(rf).where(rf.c.key == key).values(request_id=request.request_id))

        try:
            # Queued, owned by this dispatcher, and named on the file's claim
            # (so `jobs cancel` can finish it), all in one transaction.
            opened = self.runner.open(
                job_request,
                owner=self.owner,
                deadline_s=self.deadline_s,
                bundle_version=active["version"] if active else None,
                also=name_request,
            )
        except PersonatagError as exc:  # a different request under a used id, or one running
            running = self._running_elsewhere(request.request_id)
            if running is not None:
                # Let go of the file: a later scan sees how that run ended.
                with self.store.write() as conn:
                    conn.execute(rf.delete().where(rf.c.key == key))
                why = f"request {request.request_id} is {running[1]} (job {running[0]})"
                self.stats.waiting[key] = why
                if key not in self._waited:  # once, not on every poll while it runs
                    log.info("request file %s waits: %s; tried again when it ends", key, why)
                return None
            prior = self._prior_success(request.request_id)  # it may have just ended
            if prior is not None and (prior == key or self._same_content(prior, key)):
                self._done(key, request.request_id, "duplicate")
                return None
            log.warning("request file %s: %s", key, exc)
            summary = self._summary(
                request.request_id, key, JobStatus.FAILED, {}, started, error=str(exc), req=request
            )
            self._refuse(key, request.request_id, summary, row_failures, taken=True)
            return None
        if isinstance(opened, AdhocResult):  # this request ran before (same id, another file)
            self._done(key, request.request_id, "duplicate")
            return None
        if bundle_error is not None:  # the job must not stay queued with nobody to run it
            reason = one_line(reason_of(bundle_error))
            self._abandon(opened.job_pk, f"the request could not be prepared: {reason}")
            raise bundle_error
        with self._lock:
            self._owned.add(opened.job_pk)
        return _Prepared(key, request, opened, started)

    def _abandon(self, job_pk: int, error: str) -> None:
        """Fail a queued job that will not run (its file is ended as failed)."""
        with self.store.write() as conn:
            jobs.finish_job(conn, self.store, job_pk, JobStatus.FAILED, {}, error=error)

    def run(self, job: _Prepared) -> str:
        """Run a queued job and write its result files; returns its status."""
        with request_context(job.request.request_id, job=job.job_pk):
            return self._run(job)

    def _run(self, job: _Prepared) -> str:
        control = JobControl(self.deadline_s)
        with self.runner.start(job.job, control=control, results=True) as run:
            return self._run_job(job, run)

    def _run_job(self, job: _Prepared, run: JobRun) -> str:
        t0 = time.perf_counter()
        key, request, started = job.key, job.request, job.started
        request_pk, job_pk = job.job.request_pk, job.job_pk
        row_failures = list(job.job.request.row_failures)
        with self._lock:
            self._running[job_pk] = run.control
        self._publish_queue()
        status: JobStatus
        try:
            result = run.execute()
            status, error, failures = result.status, None, result.failures
            counts = result.as_json()
            items = [
                {"persona": i.persona, "action": i.action, **vars(i.counts)} for i in result.items
            ]
        except RequestFailed as exc:
            if run.control.stopping:  # shut down mid-job: no results, the claim stays open
                log.info("request %s stopped by shutdown; it runs again", request.request_id)
                return "stopped"
            status, error, failures, counts, items = exc.status, exc.reason, row_failures, {}, []
        except Exception as exc:  # recorded, reported, and the dispatcher goes on
            status, error, failures, counts, items = (
                JobStatus.FAILED,
                reason_of(exc),
                row_failures,
                {},
                [],
            )
        finally:
            with self._lock:
                self._running.pop(job_pk, None)
                self._owned.discard(job_pk)
        summary = self._summary(
            request.request_id,
            key,
            status,
            counts,
            started,
            error=error,
            req=request,
            job_pk=job_pk,
            items=items,
        )
        # A job that failed keeps the progress it stopped at; one that
        # succeeded is `writing results` (committed with its outcome), and
        # done once they are written.
        results_error = self._results.write(
            key,
            request_id=request.request_id,
            summary=summary,
            failures=failures,
            request_pk=request_pk,
            prebuilt=run.changes,
        )
        done = run.done_in if status.applied and results_error is None else None
        self._done(
            key, request.request_id, status, job_pk=job_pk, results_error=results_error, also=done
        )
        seconds = time.perf_counter() - t0
        self.metrics.record_job(
            counts.get("engine") or request.engine or self.settings.batch_engine,
            seconds,
            tagged=counts.get("tagged", 0),
            untagged=counts.get("untagged", 0),
            dry_run=request.dry_run,
        )
        self._publish_queue()
        log.info(
            "request %s %s in %.3f s",
            request.request_id,
            status,
            seconds,
            extra={"status": status, "engine": request.engine, "seconds": round(seconds, 3)},
        )
        return status

    def _drop_bad_personas(self, items: list[Item], failures: list[FailedRow]) -> list[Item]:
        kept = []
        for item in items:
            try:
                resolve(self.store, [item])
            except PersonatagError as exc:
                failures.extend(
                    FailedRow(line, cid, str(exc), item.persona)
                    for line, cid in item.contact_ids or ()
                )
                continue
            kept.append(item)
        failures.sort(key=lambda f: f.line)
        return kept

    def _summary(
        self,
        request_id: str,
        key: str,
        status: str,
        counts: dict[str, Any],
        started: Any,
        *,
        error: str | None,
        req: RequestFile | None = None,
        job_pk: int | None = None,
        items: list[dict[str, Any]] | None = None,
    ) -> dict[str, Any]:
        finished = utcnow()
        base = {
            k: counts.get(k, 0)
            for k in ("matched", "tagged", "untagged", "already", "pinned", "failed")
        }
        return {
            "request_id": request_id,
            "status": status,
            "source": key,
            # The engine that ran it: another than asked when that one could
            # not answer (then `warnings` says why).
            "engine": counts.get("engine") or (req.engine if req else None),
            "warnings": counts.get("warnings", []),
            "dry_run": req.dry_run if req else None,
            "job": job_pk,
            "counts": base,
            "items": items or [],
            "timings": {
                "started_at": started,
                "finished_at": finished,
                "seconds": round((finished - started).total_seconds(), 3),
            },
            "error": error,
        }

    def _report_recorded(self, key: str, request: RequestFile, job_pk: int | None = None) -> None:
        """Write the result files of a job that ran (job `job_pk`, or the newest
        job of the request) from what the store recorded."""
        t = self.store.tables
        query = select(t.jobs, t.requests.c.pk.label("req_pk")).join(
            t.requests, t.requests.c.pk == t.jobs.c.request_pk
        )
        if job_pk is not None:
            query = query.where(t.jobs.c.pk == job_pk)
        else:
            query = query.where(t.requests.c.request_id == request.request_id)
        with self.store.read() as conn:
            row = conn.execute(query.order_by(t.jobs.c.pk.desc()).limit(1)).one()
        failures = [
            FailedRow(line, cid, reason, persona)
            for line, cid, persona, reason in request.row_errors
        ]
        items = [
            Item(i.persona, i.action, contact_ids=i.contact_ids)
            for i in request.items
            if i.contact_ids is not None
        ]
        if request.format == "csv":
            items = self._drop_bad_personas(items, failures)
        failures += self._unknown_ids(items)
        failures.sort(key=lambda f: f.line)
        counts = json.loads(row.counts or "{}")
        succeeded = row.status in jobs.APPLIED
        summary = self._summary(
            request.request_id,
            key,
            row.status,
            counts,
            row.started_at or row.queued_at,
            # A job that succeeded has an error only to say its results are missing.
            error=None if succeeded else row.error,
            req=request,
            job_pk=row.pk,
        )
        summary["timings"]["finished_at"] = row.finished_at
        summary["timings"]["seconds"] = (
            round((row.finished_at - row.started_at).total_seconds(), 3)
            if row.finished_at and row.started_at
            else None
        )
        error = self._results.write(
            key,
            request_id=request.request_id,
            summary=summary,
            failures=failures,
            request_pk=row.req_pk,
        )
        if error is None and row.status in jobs.APPLIED:
            reported = Progress(self.store, row.pk)
            reported.phase(DONE)
            reported.close()
        self._done(key, request.request_id, row.status, job_pk=row.pk, results_error=error)

    def _unknown_ids(self, items: list[Item]) -> list[FailedRow]:
        """The failed rows a list request had, found the way its job found them."""
        out: list[FailedRow] = []
        for item in items:
            with self.store.read() as conn:
                loaded = LoadedList(conn, self.store, item.contact_ids or (), item.persona)
                try:
                    out += loaded.failed
                finally:
                    loaded.drop(conn)
        return out

    def _prior_success(self, request_id: str) -> str | None:
        """If a job of this request succeeded (or ended partial): the key of the
        file it came from ("" for a command-line request); else None."""
        t = self.store.tables
        with self.store.read() as conn:
            row = conn.execute(
                select(t.jobs.c.status, t.requests.c.spec)
                .join(t.requests, t.requests.c.pk == t.jobs.c.request_pk)
                .where(t.requests.c.request_id == request_id)
                .order_by(t.jobs.c.pk.desc())
                .limit(1)
            ).first()
        if row is None or row.status not in jobs.APPLIED:
            return None
        return str(json.loads(row.spec).get("source") or "")

    def _running_elsewhere(self, request_id: str) -> tuple[int, str] | None:
        """(job pk, status) of a queued or running job of this request, if any."""
        t = self.store.tables
        with self.store.read() as conn:
            row = conn.execute(
                select(t.jobs.c.pk, t.jobs.c.status)
                .join(t.requests, t.requests.c.pk == t.jobs.c.request_pk)
                .where(
                    t.requests.c.request_id == request_id,
                    t.jobs.c.status.in_(jobs.ACTIVE),
                )
                .limit(1)
            ).first()
        return None if row is None else (int(row.pk), str(row.status))

    def _same_content(self, other_key: str, key: str) -> bool:
        """Are two request files byte for byte the same (a file dropped twice)?"""
        requests = self.buckets["requests"]
        if not other_key or not requests.exists(other_key):
            return False
        return requests.get(other_key) == requests.get(key)

    def _done(
        self,
        key: str,
        request_id: str,
        outcome: str,
        *,
        job_pk: int | None = None,
        results_error: str | None = None,
        also: Callable[[Connection], None] | None = None,
    ) -> None:
        """Record a file's outcome; with `results_error`, the outcome is
        `results_failed` (the file is finished but for its result files, which a
        later scan writes from the store) and a job that succeeded says so.
        `also` writes in the same transaction (the job's last progress)."""
        rf = self.store.tables.request_files
        values: dict[str, Any] = {"request_id": request_id, "outcome": outcome, "error": None}
        if job_pk is not None:
            values["job_pk"] = job_pk
        if results_error is not None:
            values |= {"outcome": RESULTS_FAILED, "error": results_error}

        def record(_attempt: int) -> None:  # the same writes again: safe to repeat
            with self.store.write() as conn:
                conn.execute(update(rf).where(rf.c.key == key).values(**values))
                if job_pk is not None:
                    note = None if results_error is None else f"{results_error}; tried again later"
                    jobs.note_results(conn, self.store, job_pk, note)
                if also is not None:
                    also(conn)

        retrying(record, what=f"request file {key}")
        if results_error is not None:
            log.error("request file %s: %s; a later scan tries again", key, results_error)
            self._results.schedule(key)
        else:
            self._results.written(key)
        outcome = values["outcome"]
        self.stats.finished[outcome] = self.stats.finished.get(outcome, 0) + 1
        self.metrics.record_request(outcome)

    # -- result files -----------------------------------------------------------

    def _retry_results(self, row: Any) -> _Prepared | None:
        """Write the result files of a file whose results could not be written
        (outcome `results_failed`), once per backoff interval: the job it ran
        is reported from the store, never run again; a file that never became
        a job is prepared again. One dispatcher at a time takes it."""
        key = row.key
        if not self._results.due(key):
            return None
        rf = self.store.tables.request_files
        values: dict[str, Any] = {"claimed_by": self.owner, "claimed_at": utcnow()}
        if row.job_pk is None:  # prepared again: an open claim, like a new file's
            values |= {"outcome": None, "error": None}
        with self.store.write() as conn:
            took = conn.execute(
                update(rf)
                .where(
                    rf.c.key == key,
                    rf.c.outcome == RESULTS_FAILED,
                    rf.c.claimed_at == row.claimed_at,
                )
                .values(**values),
                execution_options={"preserve_rowcount": True},
            ).rowcount
        if not took:
            return None
        self._results.schedule(key)  # whatever happens below, not again before then
        log.info("request file %s: writing its result files again", key)
        with self._results.single_attempt():
            if row.job_pk is None:
                return self._prepare_safely(key)
            try:
                request = self._with_engine(
                    parse_request(
                        self.buckets["requests"].get(key),
                        name=key,
                        max_bytes=self.settings.max_request_bytes,
                        id_from_name=True,
                    )
                )
                self._report_recorded(key, request, job_pk=row.job_pk)
            except PersonatagError as exc:  # the file is gone or unreadable: try later
                log.warning("request file %s: its result files cannot be written yet: %s", key, exc)
            except Exception:
                log.exception("request file %s: its result files could not be written again", key)
        return None

    # -- recovery, heartbeats, cancel -------------------------------------------

    def recover(self) -> int:
        """Fail the jobs of dispatchers that died; their files are claimed again on scan."""
        j = self.store.tables.jobs
        stale_before = utcnow() - timedelta(seconds=self.stale_s)
        n = 0
        with self.store.write() as conn:
            rows = conn.execute(
                select(j.c.pk, j.c.owner, j.c.heartbeat_at).where(
                    j.c.status.in_(jobs.ACTIVE), j.c.owner.is_not(None)
                )
            ).all()
            for pk, owner, beat in rows:
                if owner == self.owner:
                    continue
                # Same host: the pid (with its start time) says it for sure.
                # Another host: only a heartbeat that stopped does.
                local = owner.split(":", 1)[0] == socket.gethostname()
                stale = beat is not None and beat < stale_before
                dead = not _owner_alive(owner) if local else stale
                if dead:
                    jobs.finish_job(
                        conn,
                        self.store,
                        pk,
                        JobStatus.FAILED,
                        {},
                        error=f"dispatcher {owner} stopped while the job ran; it runs again",
                    )
                    n += 1
        return n

    def heartbeat(self) -> None:
        j = self.store.tables.jobs
        with self._lock:
            running = list(self._running)
            owned = list(self._owned)
        cancel = []
        with self.store.write() as conn:
            if owned:  # queued jobs too: a long queue must not look abandoned
                conn.execute(update(j).where(j.c.pk.in_(owned)).values(heartbeat_at=utcnow()))
            if running:
                cancel = list(
                    conn.scalars(
                        select(j.c.pk).where(j.c.pk.in_(running), j.c.cancel_requested.is_(True))
                    )
                )
        with self._lock:
            for pk in cancel:
                control = self._running.get(pk)
                if control is not None:
                    control.cancel()
        self.metrics.mark_heartbeat()
        self._publish_queue()

    def deploy_handler(self) -> None:
        """Validate and activate job bundles that appeared in `artifacts`."""
        result = scan_artifacts(self.buckets, actor=f"dispatcher {self.owner}")
        for d in result.deployed:
            log.info("job bundle %s deployed", d.version)
        for key, reason in result.rejected:
            log.warning("job bundle %s rejected: %s", key, reason)

    def _publish_queue(self) -> None:
        with self._lock:
            running = len(self._running)
        self.metrics.set_queue(self.queue_depth(), running)

    def queue_depth(self) -> int:
        with self._lock:
            return max(len(self._futures) - len(self._running), 0)

    # -- the loop -------------------------------------------------------------

    def run_once(self) -> dict[str, str]:
        """Run what is in the requests bucket now, then stop (`dispatcher --once`).

        A file whose request runs from another file waits for that run and is
        tried again when it ends (it then runs, or is a duplicate, or is
        refused), so nothing is left behind unreported. Returns the files still
        waiting at the end, and why: their request runs in another dispatcher.
        """
        self.recover()
        while True:
            queued = self.scan()
            self.drain()
            # Only a job this dispatcher queued can have ended since the scan.
            if not self.stats.waiting or not queued:
                break
        return dict(self.stats.waiting)

    def serve(self, stop: threading.Event, wake: threading.Event | None = None) -> None:
        """Scan on start, then whenever woken or every poll interval, until `stop`.

        A local requests folder is watched (inotify and friends) so a new file
        wakes the loop at once; the periodic listing still runs, so a missed or
        repeated event changes nothing.
        """
        self.loop(stop, wake)

    def setup(self) -> None:
        if self._wake_event is not None:  # a new file ends the wait between rounds
            self._watcher = watch_folder(self.buckets["requests"].local_root, self._wake_event)
        self.recover()

    def cycle(self) -> float:
        self.recover()
        self.scan()
        self.heartbeat()
        self.deploy_handler()
        return self.poll_s

    def on_error(self, exc: Exception) -> float:
        # The store or the bucket hiccuped: try again next round.
        log.exception("dispatcher round failed")
        return self.backoff.delay(self.failures)

    def teardown(self) -> None:
        if self._watcher is not None:
            self._watcher.stop()
            self._watcher = None
        self.close()

    def drain(self, timeout: float | None = None) -> None:
        """Wait until every queued and running job has finished."""
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            with self._lock:
                pending = list(self._futures)
            if not pending:
                return
            for f in pending:
                left = None if deadline is None else max(deadline - time.monotonic(), 0)
                f.result(timeout=left)

    def close(self) -> None:
        """Stop: running jobs roll back and their files stay claimable, so the
        next dispatcher runs them again (a shutdown is not a user's cancel)."""
        self._stopping = True
        self._results.closing.set()
        with self._lock:
            for control in self._running.values():
                control.shutdown()
        self._pool.shutdown(wait=True, cancel_futures=True)
