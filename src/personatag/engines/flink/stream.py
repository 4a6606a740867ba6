"""The flink stream engine: the embedded processor, evaluating on a Flink streaming job.

`FlinkStream` is `StreamProcessor` with one method replaced: `evaluate_batch`
writes the batch's work (one JSON line per contact: its criteria and its
serialized EvalInput) into the staging bucket, where a long-running Flink
streaming job (personatag.engines.flink.programs.stream_job) picks it up with a continuously
monitored file source, evaluates it with the same compiled criteria, and
writes the answers with a FileSink that rolls on checkpoints. Everything else
— reading the feed, loading inputs, applying enters and exits, re-checks, the
offset in one transaction, lifecycle, reconciliation — is the embedded code,
so a batch is applied exactly once whichever engine evaluated it.

Staging (local-folder buckets only) holds, under ``stream/``:

    rules/rules-<gen>.jsonl            a generation of the criteria set
    changes/batch-<offset>-<n>.jsonl   work, one file per batch
    results/res-*.jsonl                answers and rule acknowledgements

Job lifecycle: the job is started on first use and recorded (JobID, code
fingerprint, cluster URL) in ``$DATA_DIR/flink/stream-<name>.json``. A later
process reuses a job that is still running the same code, and replaces one
that runs other code, failed, or is unknown to the cluster. `run` cancels it
when the stream stops; `close` does the same for callers of `catch_up`.

Rescaling: on a local cluster that scales itself (PERSONATAG_FLINK_AUTOSCALE)
the job runs at `flink_parallelism` slots on as many task managers as its own
backlog asks for (autoscale.stream_parallelism). Between batches, when that
moved, `rescale` stops the job with a savepoint and starts the same code from
it at the new parallelism: the sources keep what they read, the rules in
broadcast state come back on every subtask, and a new rules generation is
published so each new subtask acknowledges it. No batch is in flight then,
so nothing is lost or answered twice.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import logging
import os
import shutil
import subprocess
import tempfile
import time
import uuid
import zipfile
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from personatag.buckets import open_buckets
from personatag.config import Settings
from personatag.criteria.to_python import EvalInput
from personatag.domain import Catalog, utcnow
from personatag.engines.flink import codec
from personatag.engines.flink.deploy.bundle import ZIP_TIME, default_package_dir, read_package
from personatag.engines.flink.jobs import JOB_ID_RE, client_env, client_error, root_cause
from personatag.engines.flink.programs.stream_job import SPEC_FORMAT
from personatag.engines.flink.runtime import home as flink_home
from personatag.engines.flink.runtime.rest import FlinkRest, FlinkRestError, FlinkUnreachable
from personatag.engines.local.stream import ongoing as og
from personatag.engines.local.stream.evaluate import Evaluated
from personatag.engines.local.stream.processor import StepResult, StreamProcessor
from personatag.engines.local.stream.status import OFFSET_NAME
from personatag.errors import ConfigError, PersonatagError
from personatag.files import atomic_write
from personatag.metrics import Metrics
from personatag.store import Store, changefeed

log = logging.getLogger(__name__)

PREFIX = "stream"
RESULT_POLL_S = 0.02  # seconds between listings of the results folder while waiting
JOB_CHECK_S = 2.0  # seconds between REST checks of the job while waiting
# The job restores itself from its last checkpoint at most
# stream_flink_restarts times in any RESTART_INTERVAL_MS, RESTART_DELAY_MS
# after the failure.
RESTART_INTERVAL_MS = 600_000
RESTART_DELAY_MS = 2000
SAVEPOINT_POLL_S = 0.2  # seconds between checks of a savepoint being taken
_ALIVE = {"CREATED", "INITIALIZING", "RUNNING", "RESTARTING", "RECONCILING"}
# Packages the job needs beyond personatag (personatag.engines.local.stream.ongoing imports
# SQLAlchemy); the Flink venv has PyFlink's own dependencies only.
_SHIPPED = ("sqlalchemy", "typing_extensions")


class FlinkStreamError(PersonatagError):
    """The Flink streaming job could not evaluate a batch (the step is retried)."""


@dataclass
class _Batch:
    batch: str
    expected: set[tuple[int, int]]  # (contact, criterion)
    results: dict[tuple[int, int], codec.Result] = field(default_factory=dict)
    files: list[Path] = field(default_factory=list)


def _shipped_files() -> list[tuple[str, bytes]]:
    import importlib.util

    files = read_package(default_package_dir())
    for name in _SHIPPED:
        spec = importlib.util.find_spec(name)
        if spec is None or spec.origin is None:
            continue
        origin = Path(spec.origin)
        if origin.name == "__init__.py":
            root = origin.parent
            for path in sorted(root.rglob("*")):
                rel = path.relative_to(root.parent)
                if path.is_file() and "__pycache__" not in rel.parts and path.suffix != ".pyc":
                    files.append((rel.as_posix(), path.read_bytes()))
        else:
            files.append((origin.name, origin.read_bytes()))
    return sorted(files)


def stream_bundle(cache: Path) -> tuple[Path, str]:
    """The zip the job runs from (this personatag and what it imports), and its
    fingerprint; cached by fingerprint in `cache`."""
    files = _shipped_files()
    digest = hashlib.sha256()
    for name, data in files:
        digest.update(name.encode() + b"\0" + hashlib.sha256(data).digest())
    fingerprint = digest.hexdigest()[:16]
    path = cache / f"personatag-stream-{fingerprint}.zip"
    if not path.exists():
        cache.mkdir(parents=True, exist_ok=True)
        buffer = io.BytesIO()
        with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as archive:
            for name, data in files:
                archive.writestr(zipfile.ZipInfo(name, date_time=ZIP_TIME), data)
        atomic_write(path, buffer.getvalue())
    return path, fingerprint


class FlinkStream(StreamProcessor):
    """The stream processor with evaluation on a Flink streaming job (see module doc)."""

    def __init__(
        self,
        store: Store,
        settings: Settings | None = None,
        metrics: Metrics | None = None,
        *,
        name: str = OFFSET_NAME,
    ) -> None:
        super().__init__(store, settings, metrics, name=name)
        staging = open_buckets(self.settings)["staging"]
        if staging.local_root is None:
            raise ConfigError(
                f"the flink stream engine needs local-folder buckets, but PERSONATAG_BUCKET_URL "
                f"is {self.settings.bucket_url}: S3 staging is not supported for streaming yet. "
                "Unset PERSONATAG_BUCKET_URL or use PERSONATAG_STREAM_ENGINE=local"
            )
        self.root = staging.local_root / PREFIX
        self.rules_dir = self.root / "rules"
        self.changes_dir = self.root / "changes"
        self.results_dir = self.root / "results"
        for d in (self.rules_dir, self.changes_dir, self.results_dir):
            d.mkdir(parents=True, exist_ok=True)
        self.rest = FlinkRest(flink_home.rest_url(self.settings), timeout=5.0)
        self.state_file = self.settings.data_dir / "flink" / f"stream-{name}.json"
        self._token = uuid.uuid4().hex[:8]
        self._n = 0
        self._jid: str | None = None
        self._parallelism = self.settings.flink_parallelism
        self._checked_at = 0.0
        self._gen = self._newest_generation()
        self._gen_pks: frozenset[int] = frozenset()
        self._gen_catalog: str | None = None
        self._acked: dict[int, set[int]] = {}
        self._consumed: set[str] = set()
        self._pending: dict[str, _Batch] = {}
        self._rescaled_at = 0.0  # monotonic time of the last rescale tried
        self._followed_at = 0.0  # ... of the last look at the cluster's size while idle
        self.rescales: list[tuple[int, int]] = []  # (from, to) parallelism, this process
        self.redeploys: list[tuple[str, str]] = []  # (old, new) job ids, through savepoints

    @property
    def job_id(self) -> str | None:
        """The Flink JobID of the streaming job in use (None before the first batch)."""
        return self._jid

    # ---- the evaluation -----------------------------------------------------------

    def evaluate_batch(
        self, work: dict[int, set[int]], inputs: dict[int, EvalInput], index: og.Index
    ) -> Evaluated:
        out = Evaluated(inputs, [], set(), {}, [])
        lines = {cpk: crits for cpk, crits in work.items() if cpk in inputs and crits}
        if not lines:
            return out
        results = self._evaluate_remote(lines, inputs, index)
        # The embedded order (work, then each contact's set), so the applier
        # sees the same sequence as StreamProcessor.evaluate_batch.
        for cpk, crits in work.items():
            if cpk not in inputs:
                continue
            for crit_pk in crits:
                r = results[(cpk, crit_pk)]
                if r.error is not None:
                    out.errors.append((crit_pk, cpk, r.error))
                    continue
                out.evaluated.append((cpk, crit_pk))
                if r.match:
                    out.matched.add((cpk, crit_pk))
                if index.by_pk[crit_pk].windows:
                    out.due[(crit_pk, cpk)] = r.due
        return out

    def _evaluate_remote(
        self, lines: dict[int, set[int]], inputs: dict[int, EvalInput], index: og.Index
    ) -> dict[tuple[int, int], codec.Result]:
        timeout = self.settings.stream_flink_timeout_s
        self._ensure_job()  # may start or rescale the job: not on this batch's time
        deadline = time.monotonic() + timeout
        gen = self._rules(index, deadline)
        with self.store.read() as conn:
            offset = changefeed.get_offset(conn, self.store, self.name)
        self._n += 1
        batch = f"{offset}-{self._token}-{self._n}"
        b = _Batch(batch, {(c, k) for c, ks in lines.items() for k in ks})
        self._pending = {batch: b}  # answers to older, abandoned batches are dropped
        try:
            self._write_work(b, f"batch-{batch}", gen, lines, inputs)
            retries = 0
            while True:
                self._poll_results()
                if b.expected.issubset(b.results):
                    again = {k for k, r in b.results.items() if r.retry}
                    if not again:
                        break
                    # A subtask did not hold the generation yet: send those again.
                    retries += 1
                    for key in again:
                        del b.results[key]
                    redo: dict[int, set[int]] = {}
                    for c, k in again:
                        redo.setdefault(c, set()).add(k)
                    time.sleep(min(0.2 * retries, 2.0))
                    self._write_work(b, f"batch-{batch}-r{retries}", gen, redo, inputs)
                self._watch(deadline, f"the results of batch {batch} ({len(b.expected)} answers)")
                time.sleep(RESULT_POLL_S)
        finally:
            self._pending.pop(batch, None)
        for path in b.files:  # fully read and checkpointed: the job needs it no more
            with contextlib.suppress(OSError):
                path.unlink()
        return b.results

    def _write_work(
        self,
        b: _Batch,
        stem: str,
        gen: int,
        lines: dict[int, set[int]],
        inputs: dict[int, EvalInput],
    ) -> None:
        body = "".join(
            codec.work_line(b.batch, gen, cpk, sorted(crits), inputs[cpk]) + "\n"
            for cpk, crits in lines.items()
        )
        b.files.append(self._put(self.changes_dir, f"{stem}.jsonl", body))

    def _put(self, folder: Path, name: str, body: str) -> Path:
        """Write a file the job's source can see only complete (hidden temp, rename)."""
        target = folder / name
        atomic_write(target, body.encode("ascii"))
        return target

    def _watch(self, deadline: float, what: str) -> None:
        """Fail the wait when the job is gone or `deadline` passed (the step is retried)."""
        now = time.monotonic()
        if now - self._checked_at >= JOB_CHECK_S:
            self._checked_at = now
            problem = self._job_problem()
            if problem is not None:
                self._forget_job()
                raise FlinkStreamError(f"waiting for {what}: {problem}; the batch will be retried")
        if now > deadline:
            jid = self._jid
            self._cancel()  # a stuck job is replaced on the next attempt
            raise FlinkStreamError(
                f"Flink streaming job {jid} did not deliver {what} within "
                f"{self.settings.stream_flink_timeout_s:g} s (PERSONATAG_STREAM_FLINK_TIMEOUT_S); "
                "it was cancelled and the batch will be retried on a new job"
            )

    def _poll_results(self) -> None:
        """Read result files the sink has finished (visible, not hidden), once each."""
        try:
            names = sorted(
                e.name
                for e in os.scandir(self.results_dir)
                if e.is_file() and not e.name.startswith((".", "_"))
            )
        except FileNotFoundError:
            return
        for name in names:
            if name in self._consumed:
                continue
            path = self.results_dir / name
            try:
                text = path.read_text(encoding="utf-8")
            except FileNotFoundError:
                continue
            for raw in text.splitlines():
                if raw.strip():
                    self._take(json.loads(raw))
            self._consumed.add(name)
            with contextlib.suppress(OSError):
                path.unlink()
                self._consumed.discard(name)

    def _take(self, obj: dict[str, Any]) -> None:
        if "ack" in obj:
            self._acked.setdefault(int(obj["ack"]), set()).add(int(obj["subtask"]))
            return
        r = codec.parse_result(obj)
        b = self._pending.get(r.batch)
        if b is None or (r.contact, r.criterion) not in b.expected:
            return
        key = (r.contact, r.criterion)
        seen = b.results.get(key)
        # Duplicates (a job restarted on files it had answered) are identical;
        # a real answer replaces a `retry` one, never the reverse.
        if seen is None or (seen.retry and not r.retry):
            b.results[key] = r

    # ---- rules generations --------------------------------------------------------

    def _newest_generation(self) -> int:
        gens = [0]
        for p in self.rules_dir.glob("rules-*.jsonl"):
            with contextlib.suppress(ValueError):
                gens.append(int(p.stem.removeprefix("rules-")))
        return max(gens)

    def _rules(self, index: og.Index, deadline: float) -> int:
        """The generation holding `index`'s criteria, published and acknowledged."""
        with self.store.read() as conn:
            catalog = self.store.catalog(conn)
        cat = codec.dumps(codec.encode_catalog(catalog))
        pks = frozenset(index.by_pk)
        if self._gen_catalog == cat and pks <= self._gen_pks and self._is_acked(self._gen):
            return self._gen
        # A swap evaluates a criterion that is not active yet: publish it with
        # the active ones, so the next batches need no new generation.
        crits = dict(index.by_pk)
        if self._index is not None:
            for pk, c in self._index.by_pk.items():
                crits.setdefault(pk, c)
        self._publish(sorted(crits.values(), key=lambda c: c.pk), catalog, cat)
        while not self._is_acked(self._gen):
            self._poll_results()
            self._watch(deadline, f"the acknowledgement of rules generation {self._gen}")
            time.sleep(RESULT_POLL_S)
        return self._gen

    def _publish(self, crits: list[og.Ongoing], catalog: Catalog, cat: str) -> None:
        from personatag.criteria import to_json

        self._gen += 1
        rules = [
            codec.Rule(
                pk=c.pk,
                name=c.name,
                version=c.version,
                persona_pk=c.persona_pk,
                persona=c.persona_key,
                exit="remove" if c.exit_remove else "keep",
                status=c.status,
                ast=to_json(c.node),
            )
            for c in crits
        ]
        body = "".join(line + "\n" for line in codec.rules_lines(self._gen, catalog, rules))
        self._put(self.rules_dir, f"rules-{self._gen:012d}.jsonl", body)
        self._gen_pks = frozenset(c.pk for c in crits)
        self._gen_catalog = cat
        log.info("published rules generation %d (%d criteria)", self._gen, len(rules))

    def _is_acked(self, gen: int) -> bool:
        return len(self._acked.get(gen, ())) >= self._parallelism

    def step(self, now: datetime | None = None) -> StepResult:
        """The embedded step; when it had nothing to do, also follow the
        cluster's size (a job that keeps its slots while idle would keep a
        shrinking cluster from freeing a task manager)."""
        result = super().step(now)
        if (
            not result.busy
            and self._jid is not None
            and time.monotonic() - self._followed_at >= JOB_CHECK_S
        ):
            self._followed_at = time.monotonic()
            self._follow_cluster()
        return result

    # ---- the job ----------------------------------------------------------------------

    def _ensure_job(self) -> None:
        """A running job: the recorded one if it runs this code, else a new one."""
        if self._jid is not None:
            if time.monotonic() - self._checked_at < JOB_CHECK_S:
                return
            self._checked_at = time.monotonic()
            problem = self._job_problem()
            if problem is None:
                self._follow_cluster()
                return
            log.warning("flink stream job %s: %s; starting a new one", self._jid, problem)
            self._forget_job()
        try:
            overview = self.rest.overview()
        except (FlinkUnreachable, FlinkRestError) as exc:
            raise FlinkStreamError(
                f"{exc}; the stream waits and retries (is `personatag flink start` running?)"
            ) from None
        if not overview.get("taskmanagers"):
            raise FlinkStreamError(
                f"the Flink cluster at {self.rest.base_url} has no task managers; "
                "the stream waits and retries"
            )
        bundle, fingerprint = stream_bundle(self.settings.data_dir / "flink" / "bundles")
        recorded = self._read_state()
        if recorded.get("jid"):
            self._jid = str(recorded["jid"])
            same = (
                recorded.get("fingerprint") == fingerprint
                and recorded.get("url") == self.rest.base_url
                # A job a scaling cluster moved keeps its parallelism (see rescale).
                and (
                    self.settings.flink_autoscale
                    or recorded.get("parallelism") == self.settings.flink_parallelism
                )
            )
            problem = self._job_problem()
            if same and problem is None:
                log.info("reusing flink stream job %s", self._jid)
                self._parallelism = int(recorded["parallelism"])
                self._checked_at = time.monotonic()
                self._follow_cluster()
                return
            # A redeploy (new code, or a new parallelism setting) of a job that
            # runs: its state goes over through a savepoint.
            redeploy = problem is None and recorded.get("url") == self.rest.base_url
            if redeploy and self._redeploy(bundle, fingerprint):
                return
            self._cancel()
        self._start(bundle, fingerprint)

    def _redeploy(self, bundle: Path, fingerprint: str) -> bool:
        """Stop the recorded job with a savepoint and start `bundle` from it.
        False when that cannot be done (the caller then starts a fresh job,
        which is safe too: the store's offset holds what was applied)."""
        jid = str(self._jid)
        t0 = time.monotonic()
        folder = self._savepoint_folder()
        try:
            location = self._stop_with_savepoint(jid, folder)
        except FlinkStreamError as exc:
            log.warning("flink stream job %s: no savepoint for the redeploy: %s", jid, exc)
            return False
        try:
            self._start(bundle, fingerprint, savepoint=location)
        except Exception as exc:  # the new code could not take the old state
            log.warning(
                "the new flink stream job could not start from savepoint %s (%s); "
                "starting a fresh one",
                location,
                exc,
            )
            self._forget_job()
            return False
        self.redeploys.append((jid, str(self._jid)))
        self._keep_only(folder, location)
        log.info(
            "redeployed the flink stream job %s as %s through savepoint %s in %.1f s",
            jid,
            self._jid,
            location,
            time.monotonic() - t0,
        )
        return True

    def _savepoint_folder(self) -> Path:
        folder = (self.settings.data_dir / "flink" / "savepoints" / f"stream-{self.name}").resolve()
        folder.mkdir(parents=True, exist_ok=True)
        return folder

    @staticmethod
    def _keep_only(folder: Path, location: str) -> None:
        """Remove every savepoint in `folder` but the one at `location`."""
        in_use = Path(urlsplit(location).path).resolve()
        for old in folder.iterdir():
            if old.is_dir() and old.resolve() != in_use:
                shutil.rmtree(old, ignore_errors=True)

    def _job_problem(self) -> str | None:
        """Why the recorded job cannot take work (None: it can)."""
        jid = self._jid
        try:
            info = self.rest.job(str(jid))
        except FlinkUnreachable as exc:
            raise FlinkStreamError(
                f"{exc}; the stream waits and retries (is `personatag flink start` running?)"
            ) from None
        except FlinkRestError as exc:
            if exc.status == 404:
                return f"Flink job {jid} is unknown to the cluster (was it restarted?)"
            raise FlinkStreamError(str(exc)) from None
        state = info.get("state")
        if state in _ALIVE:
            return None
        if state == "FAILED":
            try:
                cause = root_cause(self.rest.exceptions(str(jid)))
            except (FlinkUnreachable, FlinkRestError) as exc:
                cause = f"(its exceptions could not be read: {exc})"
            return f"Flink job {jid} failed: {cause}"
        return f"Flink job {jid} is {state}"

    def wanted_parallelism(self) -> int:
        """The parallelism the job should run at now (see the module doc)."""
        base = self.settings.flink_parallelism
        if not self.settings.flink_autoscale or self.settings.flink_url:
            return base
        from personatag.engines.flink.runtime.autoscale import stream_parallelism
        from personatag.engines.flink.runtime.cluster import autoscale_state

        try:
            registered = int(self.rest.overview().get("taskmanagers") or 0)
        except (FlinkUnreachable, FlinkRestError):
            return self._parallelism
        state = autoscale_state(self.settings)
        with self.store.read() as conn:
            backlog = changefeed.pending(conn, self.store, self.name)
        return stream_parallelism(
            base,
            self.settings.flink_slots,
            state,
            registered,
            backlog,
            self.settings.flink_autoscale_backlog_per_tm,
        )

    def _follow_cluster(self) -> None:
        """Rescale the running job when the cluster's size moved (at most once
        per stabilisation window of the autoscaler)."""
        if not self.settings.flink_autoscale or self._jid is None:
            return
        gap = max(self.settings.flink_autoscale_stabilisation_s, JOB_CHECK_S)
        if time.monotonic() - self._rescaled_at < gap:
            return
        wanted = self.wanted_parallelism()
        if wanted != self._parallelism:
            self.rescale(wanted)

    def rescale(self, parallelism: int) -> None:
        """Move the running job to `parallelism` through a savepoint: stop it
        with one, start the same code from it. A savepoint that cannot be taken
        leaves the job running as it was (and says why in the log)."""
        jid = self._jid
        if jid is None:
            raise FlinkStreamError("no flink stream job runs: nothing to rescale")
        self._rescaled_at = time.monotonic()
        before = self._parallelism
        t0 = time.monotonic()
        folder = self._savepoint_folder()
        try:
            location = self._stop_with_savepoint(jid, folder)
        except FlinkStreamError as exc:
            log.warning("flink stream job %s was not rescaled to %d: %s", jid, parallelism, exc)
            # A stop that completed after all leaves no job: the next batch starts one.
            if self._job_problem() is not None:
                self._forget_job()
            return
        bundle, fingerprint = stream_bundle(self.settings.data_dir / "flink" / "bundles")
        try:
            self._start(bundle, fingerprint, parallelism=parallelism, savepoint=location)
        except Exception:
            # The old job has stopped: the next batch starts a new one (fresh,
            # which is safe: no batch is in flight and the store holds the rest).
            self._forget_job()
            raise
        self.rescales.append((before, parallelism))
        self._keep_only(folder, location)
        log.info(
            "rescaled the flink stream job from parallelism %d (job %s) to %d (job %s) "
            "through savepoint %s in %.1f s",
            before,
            jid,
            parallelism,
            self._jid,
            location,
            time.monotonic() - t0,
        )

    def _stop_with_savepoint(self, jid: str, folder: Path) -> str:
        """Stop job `jid` with a savepoint into `folder`; the savepoint's location."""
        timeout = self.settings.stream_flink_timeout_s
        try:
            answer = self.rest.request(
                "POST", f"/jobs/{jid}/stop", {"targetDirectory": folder.as_uri(), "drain": False}
            )
            trigger = str(answer["request-id"])
            deadline = time.monotonic() + timeout
            while True:
                info = self.rest.get(f"/jobs/{jid}/savepoints/{trigger}")
                if (info.get("status") or {}).get("id") == "COMPLETED":
                    break
                if time.monotonic() > deadline:
                    raise FlinkStreamError(f"the savepoint took more than {timeout:g} s")
                time.sleep(SAVEPOINT_POLL_S)
        except (FlinkUnreachable, FlinkRestError, KeyError, TypeError) as exc:
            raise FlinkStreamError(f"the savepoint could not be taken: {exc}") from None
        operation = info.get("operation") or {}
        if "failure-cause" in operation:
            cause = operation["failure-cause"] or {}
            text = str(cause.get("stack-trace") or cause.get("class") or cause)
            raise FlinkStreamError(f"the savepoint failed: {text.splitlines()[0][:300]}")
        location = operation.get("location")
        if not location:
            raise FlinkStreamError(f"the savepoint has no location: {info}")
        return str(location)

    def _start(
        self,
        bundle: Path,
        fingerprint: str,
        *,
        parallelism: int | None = None,
        savepoint: str | None = None,
    ) -> None:
        if savepoint is None:
            # No job reads the folders now: start from the newest rules only.
            for folder in (self.rules_dir, self.changes_dir, self.results_dir):
                shutil.rmtree(folder, ignore_errors=True)
                folder.mkdir(parents=True, exist_ok=True)
            self._consumed.clear()
        # From a savepoint the sources remember the files they read and the
        # rules come back in broadcast state; a new generation makes every
        # subtask (the new ones too) acknowledge it.
        self._acked.clear()
        self._gen_pks = frozenset()
        self._gen_catalog = None
        if parallelism is None:
            parallelism = (
                self.wanted_parallelism()
                if self.settings.flink_autoscale
                else self.settings.flink_parallelism
            )
        spec = {
            "format": SPEC_FORMAT,
            "name": f"personatag stream {self.name}",
            "parallelism": parallelism,
            "rules": self.rules_dir.resolve().as_uri(),
            "changes": self.changes_dir.resolve().as_uri(),
            "results": self.results_dir.resolve().as_uri(),
            "checkpoint_ms": max(10, int(self.settings.stream_flink_checkpoint_s * 1000)),
            "monitor_ms": max(10, int(self.settings.stream_flink_monitor_s * 1000)),
            "restarts": self.settings.stream_flink_restarts,
            "restart_interval_ms": RESTART_INTERVAL_MS,
            "restart_delay_ms": RESTART_DELAY_MS,
        }
        started = time.monotonic()
        self._jid = self._submit(spec, bundle, savepoint)
        self._parallelism = parallelism
        self._checked_at = time.monotonic()
        self._write_state(
            {
                "jid": self._jid,
                "fingerprint": fingerprint,
                "url": self.rest.base_url,
                "parallelism": self._parallelism,
                "started_at": utcnow().isoformat(),
                "savepoint": savepoint,
            }
        )
        log.info("started flink stream job %s in %.1f s", self._jid, time.monotonic() - started)

    def _submit(self, spec: dict[str, Any], bundle: Path, savepoint: str | None = None) -> str:
        home = flink_home.locate(self.settings)
        target = self.rest.base_url.split("://", 1)[-1]
        with tempfile.TemporaryDirectory(prefix="personatag-stream-") as tmp:
            spec_path = Path(tmp) / "stream.json"
            spec_path.write_text(json.dumps(spec))
            cmd = home.run_python_job(
                target,
                int(spec["parallelism"]),
                bundle.resolve(),
                "personatag.engines.flink.programs.stream_job",
                str(spec_path),
                savepoint=savepoint,
            )
            allowed = max(self.settings.flink_stall_s, 30.0) + 60.0
            try:
                done = subprocess.run(  # noqa: S603 - fixed argv, no shell
                    cmd,
                    stdout=subprocess.PIPE,
                    stderr=subprocess.STDOUT,
                    env=client_env(self.settings, home),
                    cwd=tmp,
                    timeout=allowed,
                    check=False,
                )
            except subprocess.TimeoutExpired:
                raise FlinkStreamError(
                    f"the Flink client did not finish submitting the stream job in {allowed:.0f} s"
                ) from None
        output = done.stdout.decode(errors="replace")
        found = JOB_ID_RE.search(output)
        if done.returncode != 0 or found is None:
            raise FlinkStreamError(
                f"submitting the flink stream job failed: {client_error(output)}"
            )
        return found.group(1)

    def _cancel(self) -> None:
        jid = self._jid
        if jid is None:
            return
        try:
            info = self.rest.job(jid)
            if info.get("state") in _ALIVE:
                self.rest.cancel(jid)
                log.info("cancelled flink stream job %s", jid)
        except (FlinkUnreachable, FlinkRestError) as exc:
            log.warning("could not cancel flink stream job %s: %s", jid, exc)
        self._forget_job()

    def _forget_job(self) -> None:
        self._jid = None
        self._checked_at = 0.0
        self._gen_pks = frozenset()
        self._gen_catalog = None

    def _read_state(self) -> dict[str, Any]:
        try:
            data = json.loads(self.state_file.read_text())
        except (OSError, ValueError):
            return {}
        return data if isinstance(data, dict) else {}

    def _write_state(self, data: dict[str, Any]) -> None:
        self.state_file.parent.mkdir(parents=True, exist_ok=True)
        atomic_write(self.state_file, json.dumps(data, indent=2))

    # ---- lifecycle ----------------------------------------------------------------------

    def teardown(self) -> None:
        """Once stopped, cancel the streaming job (it holds slots). A standby that
        never held the offset leaves the job alone: it is the active processor's
        (named in the same state file)."""
        try:
            super().teardown()
        finally:
            if self.held_offset:
                self.close()

    def close(self) -> None:
        """Cancel the streaming job this processor runs (or reused), if any."""
        if self._jid is None:
            self._jid = self._read_state().get("jid")
        if self._jid is not None:
            self._cancel()
        with contextlib.suppress(OSError):
            self.state_file.unlink()
