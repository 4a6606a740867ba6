"""The flink engine: match contacts with a batch job on a Flink session cluster.

compute() does, outside any store transaction:

1. check the cluster can take a job (REST /overview: reachable, task
   managers, a free slot), waiting at most `flink_stall_s`;
2. compile the criterion to Flink SQL (criteria.to_flink) and export the
   snapshot it reads into the staging bucket (reused while the store is
   unchanged);
3. submit the active job bundle's job program with RUN_SPEC: through the
   local cluster's warm submitter (flink.submitter: a long-running Flink
   client, so no JVM starts per job) when one answers on the REST port + 3,
   else with `flink run -d -pyfs BUNDLE -pym personatag.engines.flink.programs.batch_job RUN_SPEC`;
   record the Flink JobID on the job;
4. poll /jobs/:jid until it ends, watching for stalls (no task managers, no
   slots, no progress, an unreachable cluster) and for the job's deadline or a
   cancel, both of which cancel the Flink job too; each poll reports how many
   of the job's tasks finished (`task_progress`) as the job's progress;
5. read the matched pks the job wrote to staging.

The applier then applies them exactly as it applies the local engine's match.
"""

from __future__ import annotations

import io
import json
import logging
import subprocess
import tempfile
import time
import uuid
import warnings
import zipfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
from sqlalchemy import (
    update,
)

from personatag.buckets import Bucket, open_buckets
from personatag.criteria.to_flink import FlinkQuery, compile_flink
from personatag.engines.base import BatchEngine, Match, MatchSpec
from personatag.engines.control import JobStopped
from personatag.engines.flink.deploy import fetch_active
from personatag.engines.flink.deploy.layout import PROPERTIES_FILE, read_properties
from personatag.engines.flink.jobs import (
    JOB_ID_RE,
    FlinkJobFailed,
    client_env,
    client_error,
    root_cause,
)
from personatag.engines.flink.programs.batch_job import SPEC_FORMAT
from personatag.engines.flink.runtime import home as flink_home
from personatag.engines.flink.runtime import submitter
from personatag.engines.flink.runtime.rest import FlinkRest, FlinkRestError, FlinkUnreachable
from personatag.engines.flink.snapshot import export_snapshot, odd_contacts
from personatag.engines.flink.watchdog import Watchdog, task_progress
from personatag.engines.pks import PksMatch
from personatag.files import atomic_write
from personatag.metrics import default_metrics
from personatag.store import Store

log = logging.getLogger(__name__)

RUNS_PREFIX = "runs/"
_ENDED = {"FINISHED", "FAILED", "CANCELED"}


def parse_pks(data: bytes) -> npt.NDArray[np.int64]:
    """The pks of a CSV part file Flink wrote (one integer per line)."""
    text_ = data.decode("ascii", errors="replace").strip()
    if not text_:
        return np.empty(0, dtype=np.int64)
    bad = FlinkJobFailed("the Flink job wrote a result file that is not one pk per line")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error")  # a partial read must not pass silently
            pks = np.fromstring(text_, dtype=np.int64, sep="\n")
    except (ValueError, DeprecationWarning):
        raise bad from None
    if len(pks) != text_.count("\n") + 1:
        raise bad
    return pks


# ---- the engine ---------------------------------------------------------------------


class FlinkEngine(BatchEngine):
    name = "flink"

    def __init__(self, store: Store, settings: Any = None) -> None:
        super().__init__(store, settings)
        self.rest = FlinkRest(flink_home.rest_url(self.settings), timeout=5.0)

    def compute(self, spec: MatchSpec) -> Match:
        pks = self.match_many(
            [spec], control=spec.control, job_pk=spec.job_pk, progress=spec.progress
        )
        return PksMatch(pks[0])

    def match_many(
        self,
        specs: list[MatchSpec],
        *,
        control: Any = None,
        job_pk: int | None = None,
        progress: Callable[[int | None, int | None, str | None], None] | None = None,
    ) -> list[npt.NDArray[np.int64]]:
        """The matched pks of each spec, from one Flink job (a query per spec);
        `progress(done, total, "tasks")` hears how far that job is."""
        started = time.monotonic()
        watchdog = Watchdog(self.rest, self.settings.flink_stall_s)
        self._wait_for(lambda: watchdog.cluster(need_slot=True) is not None, control)
        buckets = open_buckets(self.settings)
        staging = buckets["staging"]
        deployment, bundle = fetch_active(buckets)
        run_id = uuid.uuid4().hex[:16]
        queries = []
        by_store: list[npt.NDArray[np.int64] | None] = []
        for i, spec in enumerate(specs):
            query = compile_flink(
                spec.ast, catalog=spec.catalog, persona_pks=spec.persona_pks, as_of=spec.as_of
            )
            snapshot = export_snapshot(
                self.store,
                staging,
                query,
                catalog=spec.catalog,
                persona_pks=dict(spec.persona_pks),
                stop=control.cancel_event if control is not None else None,
                # a running job may read an older snapshot for up to its deadline
                keep_s=self.settings.job_deadline_s + 600.0,
            )
            log.info(
                "snapshot %s: %d rows, %s in %.2f s",
                snapshot.key,
                snapshot.rows,
                "reused" if snapshot.reused else "written",
                snapshot.seconds,
            )
            self._check(control)
            queries.append(
                {
                    "snapshot": snapshot.url,
                    "schema": snapshot.schema(query),
                    "where": snapshot.where(query),
                    "output": staging.url(f"{RUNS_PREFIX}{run_id}/q{i}"),
                }
            )
            # Contacts holding values of another type: the job leaves them
            # out, the store answers for them (snapshot.py).
            by_store.append(self._store_answers(spec, query) if snapshot.odd else None)
        run_spec = {
            "format": SPEC_FORMAT,
            "name": f"personatag job {job_pk or '-'} run {run_id}",
            "parallelism": self._parallelism(bundle),
            "queries": queries,
        }
        try:
            jid = self.submit(run_spec, bundle, deployment.version, control, watchdog)
            self._record(job_pk, jid, deployment.version)
            self.follow(jid, control, watchdog, progress)
            results = [
                self._read_output(staging, f"{RUNS_PREFIX}{run_id}/q{i}/")
                for i in range(len(specs))
            ]
            results = [
                got if odd is None else np.union1d(got, odd)
                for got, odd in zip(results, by_store, strict=True)
            ]
        finally:
            for key in staging.list(f"{RUNS_PREFIX}{run_id}/"):
                staging.delete(key)
        log.info(
            "flink job %s matched %s contacts in %.2f s",
            jid,
            "+".join(str(len(r)) for r in results),
            time.monotonic() - started,
        )
        return results

    # -- steps --------------------------------------------------------------------

    def _store_answers(self, spec: MatchSpec, query: FlinkQuery) -> npt.NDArray[np.int64]:
        """The contacts the snapshot of `query` marks odd that match `spec` in
        the store (its own SQL, as the local engine evaluates)."""
        criterion = spec.sql_condition(self.store)
        with self.store.read() as conn:
            pks = odd_contacts(conn, self.store, query, criterion)
        return np.asarray(pks, dtype=np.int64)

    def _parallelism(self, bundle: bytes) -> int:
        """The bundle's `flink.parallelism` property, else the setting."""
        with zipfile.ZipFile(io.BytesIO(bundle)) as archive:
            props = read_properties(archive.read(PROPERTIES_FILE)).properties
        value = props.get("flink.parallelism")
        try:
            return max(1, int(value)) if value is not None else self.settings.flink_parallelism
        except (TypeError, ValueError):
            return self.settings.flink_parallelism

    def _check(self, control: Any) -> None:
        if control is not None:
            control.check()

    def _wait_for(self, ready: Callable[[], bool], control: Any) -> None:
        while not ready():
            self._check(control)
            time.sleep(self.settings.flink_poll_s)

    def _bundle_path(self, bundle: bytes, version: str) -> Path:
        cache = (self.settings.data_dir / "flink" / "bundles").resolve()
        cache.mkdir(parents=True, exist_ok=True)
        path = cache / f"personatag-job-{version}.zip"
        if not path.exists() or path.stat().st_size != len(bundle):
            atomic_write(path, bundle)
        return path

    def submit(
        self,
        run_spec: dict[str, Any],
        bundle: bytes,
        version: str,
        control: Any,
        watchdog: Watchdog,
    ) -> str:
        """Submit the bundle's job with `run_spec` through the local cluster's warm
        submitter, else with `flink run -d`; returns the Flink JobID."""
        bundle_path = self._bundle_path(bundle, version)
        target = flink_home.rest_url(self.settings).split("://", 1)[-1]
        allowed = max(self.settings.flink_stall_s, 30.0) + 60.0
        jid = self._submit_warm(run_spec, bundle_path, control, allowed)
        if jid is not None:
            return jid
        home = flink_home.locate(self.settings)
        with tempfile.TemporaryDirectory(prefix="personatag-flink-") as tmp:
            spec_path = Path(tmp) / "run.json"
            spec_path.write_text(json.dumps(run_spec))
            out_path = Path(tmp) / "client.log"
            cmd = home.run_python_job(
                target,
                int(run_spec["parallelism"]),
                bundle_path,
                "personatag.engines.flink.programs.batch_job",
                str(spec_path),
            )
            with open(out_path, "wb") as out:
                client = subprocess.Popen(  # noqa: S603 - fixed argv, no shell
                    cmd,
                    stdout=out,
                    stderr=subprocess.STDOUT,
                    env=client_env(self.settings, home),
                    cwd=tmp,
                    start_new_session=True,
                )
                limit = time.monotonic() + allowed
                try:
                    while client.poll() is None:
                        time.sleep(0.1)
                        stop = control.stopped() if control is not None else None
                        if stop is not None:
                            raise stop
                        if time.monotonic() > limit:
                            default_metrics().flink_stalls.labels(reason="no_progress").inc()
                            raise FlinkJobFailed(
                                "the Flink client did not finish submitting the job in "
                                f"{allowed:.0f} s"
                            )
                finally:
                    if client.poll() is None:
                        client.kill()
                        client.wait()
            output = out_path.read_text(errors="replace")
        found = JOB_ID_RE.search(output)
        if client.returncode != 0 or found is None:
            raise FlinkJobFailed(f"flink run failed: {client_error(output)}")
        return found.group(1)

    def _submit_warm(
        self,
        run_spec: dict[str, Any],
        bundle_path: Path,
        control: Any,
        allowed: float,
    ) -> str | None:
        """Submit through the warm submitter of a cluster on this machine (its REST
        port + 3); None when there is none to use: not running, still warming up,
        serving another cluster, or the bundle's job program predates it."""
        address = submitter.address_of(flink_home.rest_url(self.settings))
        if not self.settings.flink_submitter or address is None:
            return None
        try:
            submitter.hello(address, timeout_s=5.0)
        except submitter.WrongSubmitter as exc:
            log.warning("%s: submitting with flink run", exc)
            return None
        except submitter.SubmitterError as exc:
            log.info("no warm submitter (%s): submitting with flink run", exc)
            return None
        started = time.monotonic()
        message = {"op": "submit", "bundle": str(bundle_path), "spec": run_spec}
        try:
            reply = submitter.request(
                address,
                message,
                allowed,
                stopped=None if control is None else lambda: control.stopped() is not None,
                grace_s=15.0,
            )
        except submitter.Stopped as halted:
            if halted.reply is not None and isinstance(halted.reply.get("job_id"), str):
                self._cancel(halted.reply["job_id"])
            stop = control.stopped() if control is not None else None
            if stop is None:  # cannot happen: Stopped means control said stop
                raise FlinkJobFailed("stopped while the job was being submitted") from None
            raise stop from None
        except submitter.SubmitterUnreachable as exc:  # it went away: nothing was sent
            log.info("the warm submitter went away (%s): submitting with flink run", exc)
            return None
        except submitter.SubmitterTimeout:
            default_metrics().flink_stalls.labels(reason="no_progress").inc()
            raise FlinkJobFailed(
                f"the Flink client did not finish submitting the job in {allowed:.0f} s"
            ) from None
        except submitter.SubmitterError as exc:
            raise FlinkJobFailed(f"the warm Flink submitter failed: {exc}") from None
        if "unsupported" in reply:
            log.info("%s: submitting with flink run", reply["unsupported"])
            return None
        jid = reply.get("job_id")
        if not isinstance(jid, str):
            raise FlinkJobFailed(
                f"flink job submission failed: {client_error(str(reply.get('error')))}"
            )
        log.info(
            "submitted flink job %s through the warm submitter in %.2f s",
            jid,
            time.monotonic() - started,
        )
        return jid

    def _record(self, job_pk: int | None, jid: str, version: str) -> None:
        if job_pk is None:
            return
        jobs = self.store.tables.jobs
        with self.store.write() as conn:
            conn.execute(
                update(jobs)
                .where(jobs.c.pk == job_pk)
                .values(engine_ref=jid, bundle_version=version)
            )

    def follow(
        self,
        jid: str,
        control: Any,
        watchdog: Watchdog,
        progress: Callable[[int | None, int | None, str | None], None] | None = None,
    ) -> None:
        """Poll the job until it ends; cancel it on a stall, deadline or cancel.
        Each poll of a running job tells `progress` how many tasks finished."""
        try:
            while True:
                stop = control.stopped() if control is not None else None
                if stop is not None:
                    raise stop
                info = self._job_info(jid, watchdog)
                if info is not None:
                    state = info.get("state")
                    if state == "FINISHED":
                        return
                    if state in ("FAILED", "CANCELED"):
                        raise FlinkJobFailed(self._failure(jid, state))
                    if state in ("RUNNING", "CREATED", "INITIALIZING"):
                        watchdog.cluster(need_slot=False)
                        watchdog.job(info)
                        tasks = task_progress(info)
                        if progress is not None and tasks is not None:
                            progress(*tasks, "tasks")
                time.sleep(self.settings.flink_poll_s)
        except (JobStopped, FlinkJobFailed, Exception):
            self._cancel(jid)
            raise

    def _job_info(self, jid: str, watchdog: Watchdog) -> dict[str, Any] | None:
        try:
            return self.rest.job(jid)
        except FlinkUnreachable:
            watchdog.cluster(need_slot=False)  # counts towards the stall bound
            return None
        except FlinkRestError as exc:
            if exc.status == 404:
                raise FlinkJobFailed(
                    f"Flink job {jid} is unknown to the cluster (was the cluster restarted?)"
                ) from None
            raise

    def _failure(self, jid: str, state: str) -> str:
        if state == "CANCELED":
            return f"Flink job {jid} was cancelled on the cluster"
        try:
            cause = root_cause(self.rest.exceptions(jid))
        except (FlinkUnreachable, FlinkRestError) as exc:
            cause = f"(its exceptions could not be read: {exc})"
        return f"Flink job {jid} failed: {cause}"

    def _cancel(self, jid: str) -> None:
        try:
            info = self.rest.job(jid)
            if info.get("state") in _ENDED:
                return
            self.rest.cancel(jid)
            log.info("cancelled flink job %s", jid)
        except (FlinkUnreachable, FlinkRestError) as exc:
            log.warning("could not cancel flink job %s: %s", jid, exc)

    def _read_output(self, staging: Bucket, prefix: str) -> npt.NDArray[np.int64]:
        parts = [
            parse_pks(staging.get(key))
            for key in staging.list(prefix)
            if not key.rsplit("/", 1)[-1].startswith((".", "_"))
        ]
        if not parts:
            return np.empty(0, dtype=np.int64)
        return np.concatenate(parts)
