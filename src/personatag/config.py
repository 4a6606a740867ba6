"""Settings: one object, read from PERSONATAG_* environment variables, failing fast.

Settings is a pydantic model that reads its fields from the environment
(PERSONATAG_<NAME>, the name in any case) under the values it is given, as
pydantic-settings' BaseSettings does with this configuration (no .env file,
no secrets folder, no nested or JSON-valued settings). pydantic-settings
itself is not used: importing it costs a new process a tenth of its start-up
(it imports asyncio and ssl), for a few lines of work here."""

from __future__ import annotations

import ipaddress
import os
from pathlib import Path
from typing import Any, Literal
from urllib.parse import urlsplit

from pydantic import (
    BaseModel,
    ConfigDict,
    SecretStr,
    ValidationError,
    field_validator,
    model_validator,
)

from personatag.errors import ConfigError

ENV_PREFIX = "PERSONATAG_"


def _engine_name(value: str, kind: str, builtins: tuple[str, ...]) -> str:
    """`value` when it names a built-in engine or an installed engine plugin."""
    if value in builtins:
        return value
    from importlib.metadata import entry_points  # only for a name that is not built in

    plugins = {ep.name for ep in entry_points(group="personatag.engines")}
    if value not in plugins:
        names = [*builtins, *sorted(plugins - set(builtins))]
        raise ValueError(f"unknown {kind} engine {value!r}: use {' or '.join(names)}")
    return value


def _from_env() -> dict[str, str]:
    """The settings the environment sets: PERSONATAG_<NAME> for each field, the
    variable's name in any case (when two spellings are set, the later one in
    the environment wins)."""
    names = {(ENV_PREFIX + name).lower(): name for name in Settings.model_fields}
    return {names[k.lower()]: v for k, v in os.environ.items() if k.lower() in names}


class Settings(BaseModel):
    """Every setting personatag reads: the values given, else the environment's
    (PERSONATAG_<NAME>), else the defaults. Unknown PERSONATAG_* variables are
    errors (load_settings)."""

    model_config = ConfigDict(extra="forbid", frozen=True, validate_default=True)

    def __init__(self, **values: Any) -> None:
        super().__init__(**{**_from_env(), **values})

    data_dir: Path = Path("personatag-data")
    store_url: str | None = None
    # Rows per batch for imports and generation; bounds memory, not correctness.
    batch_size: int = 50_000
    # A bulk change with more rows than this is logged compactly (one entry plus
    # compressed ids) instead of one membership-log row per contact.
    bulk_log_threshold: int = 50_000
    # Who is acting when the CLI writes (recorded in the membership log).
    actor: str | None = None
    # Object storage for the request pipeline: unset means local folders under
    # data_dir/buckets/; s3://BUCKET/PREFIX puts every area under that prefix.
    bucket_url: str | None = None
    # S3-compatible service (MinIO, Ceph, ...); unset means AWS S3. Keys unset
    # means the usual AWS credential chain (AWS_* variables, ~/.aws, instance role).
    s3_endpoint_url: str | None = None
    s3_access_key: SecretStr | None = None
    s3_secret_key: SecretStr | None = None
    s3_region: str | None = None
    # The dispatcher: jobs run at once, seconds a job may run before it is
    # stopped, seconds between listings of the requests bucket (local folders
    # are also watched, so new files start at once), largest request file.
    dispatcher_workers: int = 2
    job_deadline_s: float = 3600.0
    dispatcher_poll_s: float = 2.0
    max_request_bytes: int = 100 * 2**20
    # Where the dispatcher serves /metrics and /healthz (0: pick a free port).
    metrics_host: str = "127.0.0.1"
    metrics_port: int = 9464
    # Where `personatag serve` serves the REST API (0: pick a free port).
    host: str = "127.0.0.1"
    port: int = 8000
    # Addresses or networks (comma-separated, e.g. 10.0.0.5,10.1.0.0/16) of the
    # reverse proxies whose X-Forwarded-For / X-Forwarded-Proto are believed.
    # Empty (the default): none, the client is the socket's peer.
    trusted_proxies: str = ""
    # Failed logins allowed within login_window_s seconds before `POST /login`
    # answers 429: per user name from one client address, per user name from
    # any address, per client address for any user names, and over all.
    # The workbench asks for confirmation before a tag or untag request that
    # would change more contacts than this (0: before every request).
    confirm_threshold: int = 1_000
    login_window_s: float = 300.0
    login_max_failures: int = 5
    login_max_failures_account: int = 20
    login_max_failures_address: int = 20
    login_max_failures_global: int = 100
    # Where CLI commands go when token is set (a bearer token, `pt_...`): they talk
    # to the running `personatag serve` at server_url instead of the local store.
    token: SecretStr | None = None
    server_url: str = "http://127.0.0.1:8000"
    # Apache Flink. flink_url targets an existing session cluster's REST API;
    # unset means the local cluster `personatag flink start` runs on
    # 127.0.0.1:flink_rest_port. flink_python is an interpreter with PyFlink
    # (apache-flink) installed; unset means this interpreter if it has PyFlink,
    # else ./.venv-flink/bin/python. flink_home is the Flink distribution;
    # unset means the one inside flink_python's pyflink package.
    flink_url: str | None = None
    flink_python: Path | None = None
    flink_home: Path | None = None
    flink_rest_port: int = 8081
    # The local cluster: task manager processes, slots each, memory (MiB) per
    # process, and the parallelism a job gets.
    flink_task_managers: int = 1
    flink_slots: int = 4
    flink_taskmanager_mb: int = 1600
    flink_jobmanager_mb: int = 1024
    flink_parallelism: int = 2
    # Task managers that follow the load (engines/flink/runtime/autoscale.py):
    # with flink_autoscale the local cluster's supervisor keeps between
    # _min and _max task managers, sized from the busy time of the slots
    # (aiming at _target of them busy), the requests queued for the flink
    # engine and the flink stream's backlog (_backlog_per_tm changes a task
    # manager; busy time averaged over _busy_window_s). It looks every
    # _interval_s; after a rescale it waits
    # _stabilisation_s; it shrinks only when a smaller size was enough for
    # _down_delay_s and only by idle task managers; at most
    # _rescales_per_hour rescales in any hour. flink_task_managers is the size
    # it starts at (within the bounds).
    flink_autoscale: bool = False
    flink_autoscale_min: int = 1
    flink_autoscale_max: int = 4
    flink_autoscale_target: float = 0.7
    flink_autoscale_interval_s: float = 10.0
    flink_autoscale_stabilisation_s: float = 60.0
    flink_autoscale_down_delay_s: float = 300.0
    flink_autoscale_rescales_per_hour: int = 12
    flink_autoscale_backlog_per_tm: int = 20_000
    flink_autoscale_busy_window_s: float = 60.0
    # Stall watchdog: a job that cannot get slots or shows no progress for this
    # long fails with the reason; the cluster is checked every flink_poll_s.
    flink_stall_s: float = 60.0
    flink_poll_s: float = 0.5
    # The local cluster also runs a warm job submitter (a long-running Flink
    # client on its REST port + 3); the flink engine submits through it when it
    # answers and with `flink run` otherwise. False: neither runs nor uses it.
    flink_submitter: bool = True
    # The stream processor (ongoing criteria): feed rows per micro-batch,
    # seconds to wait when the feed is idle, contacts in one batch above which
    # criteria are evaluated set-based in the store instead of one contact at a
    # time, due time-window re-checks per batch, seconds between reconciliation
    # rounds (0: never), the engine (local: in this process; flink: a Flink
    # streaming job on the cluster) and how the local engine evaluates a batch
    # (arrays: each criterion once over the batch's contacts, columnar; pairs:
    # one Python evaluation per contact and criterion).
    stream_batch: int = 5_000
    stream_poll_s: float = 0.1
    stream_set_based_contacts: int = 20_000
    stream_recheck_batch: int = 5_000
    stream_reconcile_s: float = 3600.0
    stream_engine: str = "local"
    stream_evaluation: Literal["arrays", "pairs"] = "arrays"
    # A stream step's enters (or exits) of one persona through one criterion,
    # when at least this many, are logged as one compact entry indexed by
    # contact instead of a log row each (0: always a row each).
    stream_log_compact: int = 16
    # Processes the local stream engine runs, each stepping the contacts whose
    # pk % stream_partitions is its number, with an offset of its own
    # (engines/local/stream/partitions.py; `personatag stream --partitions`).
    stream_partitions: int = 1
    # The engine of previews and of ad hoc tag and untag requests that name
    # none (columnar: numpy over the columnar copy under data_dir/columnar;
    # local: SQL in the store; flink: a batch job on the cluster, ad hoc
    # requests only).
    batch_engine: str = "columnar"
    # Seconds between the samples of the stream's lag and throughput kept in
    # the store (the monitoring charts), and days they are kept.
    stream_sample_s: float = 30.0
    stream_sample_keep_days: float = 7.0
    # The flink stream engine: seconds a batch (or a rules generation, or the
    # job's start) may take before the step fails and is retried, the job's
    # checkpoint interval (its results become visible at each checkpoint) and
    # how often its file sources look for new files.
    stream_flink_timeout_s: float = 120.0
    stream_flink_checkpoint_s: float = 1.0
    stream_flink_monitor_s: float = 0.5
    # How many failures (a task manager lost) in any 10 minutes the streaming
    # job restores itself from its last checkpoint before it fails for good and
    # the engine starts a new job from the store's offset (0: never).
    stream_flink_restarts: int = 3
    # Webhooks (personatag.membership_events): seconds a receiver has to answer, attempts
    # at one batch before it is dead-lettered, the first retry delay and its
    # cap (exponential, jittered), events per POST, seconds between passes.
    webhook_timeout_s: float = 10.0
    webhook_max_attempts: int = 8
    webhook_backoff_s: float = 5.0
    webhook_backoff_max_s: float = 3600.0
    webhook_batch: int = 500
    webhook_interval_s: float = 2.0
    # The feed (personatag.recommend.service): seconds a server keeps its feed model
    # before rebuilding it even if no reads, publications or memberships changed.
    feed_model_max_age_s: float = 900.0
    # Seconds from the end of one background rebuild of a big feed model (see
    # personatag.recommend.service) before the next may start: bounds the CPU that
    # rebuilding takes from a server while reads keep arriving (0: no gap).
    feed_model_rebuild_gap_s: float = 120.0
    # The reading feed (personatag.recommend, docs/feed.md): weights of the blend's
    # parts, how much freshness multiplies in (0: not at all, 1: fully), a
    # report's freshness half-life (the fallback when freshness is not learned),
    # how freshness is found and the horizon a learned one looks ahead, the reads
    # counted as popularity (window and half-life) and item neighbours kept per report.
    feed_weight_persona: float = 0.5
    feed_weight_coverage: float = 1.0
    feed_weight_similar: float = 0.2
    feed_weight_fresh: float = 0.95
    feed_half_life_days: float = 1.0
    feed_freshness: Literal["learned", "half-life"] = "learned"
    feed_fresh_horizon_days: float = 30.0
    feed_popularity_days: float = 30.0
    feed_popularity_half_life_days: float = 7.0
    feed_neighbours: int = 50

    @field_validator(
        "dispatcher_workers",
        "max_request_bytes",
        "flink_task_managers",
        "flink_autoscale_min",
        "flink_autoscale_max",
        "flink_autoscale_rescales_per_hour",
        "flink_autoscale_backlog_per_tm",
        "flink_slots",
        "flink_parallelism",
        "flink_taskmanager_mb",
        "flink_jobmanager_mb",
        "webhook_max_attempts",
        "webhook_batch",
        "stream_batch",
        "stream_set_based_contacts",
        "stream_recheck_batch",
        "login_max_failures",
        "login_max_failures_account",
        "login_max_failures_address",
        "login_max_failures_global",
    )
    @classmethod
    def _at_least_one(cls, value: int) -> int:
        if value < 1:
            raise ValueError("must be at least 1")
        return value

    @field_validator(
        "job_deadline_s",
        "dispatcher_poll_s",
        "flink_stall_s",
        "flink_poll_s",
        "flink_autoscale_interval_s",
        "flink_autoscale_busy_window_s",
        "webhook_timeout_s",
        "webhook_backoff_s",
        "webhook_backoff_max_s",
        "webhook_interval_s",
        "stream_poll_s",
        "stream_sample_s",
        "stream_sample_keep_days",
        "stream_flink_timeout_s",
        "stream_flink_checkpoint_s",
        "stream_flink_monitor_s",
        "feed_model_max_age_s",
        "login_window_s",
    )
    @classmethod
    def _positive_seconds(cls, value: float) -> float:
        if value <= 0:
            raise ValueError("must be more than 0 seconds")
        return value

    @field_validator("flink_autoscale_target")
    @classmethod
    def _utilisation(cls, value: float) -> float:
        if not 0 < value <= 1:
            raise ValueError("must be more than 0 and at most 1 (a share of the slots)")
        return value

    @field_validator(
        "feed_model_rebuild_gap_s",
        "flink_autoscale_stabilisation_s",
        "flink_autoscale_down_delay_s",
    )
    @classmethod
    def _not_negative_seconds(cls, value: float) -> float:
        if value < 0:
            raise ValueError("must be 0 seconds or more")
        return value

    @field_validator(
        "feed_weight_persona", "feed_weight_coverage", "feed_weight_similar", "feed_weight_fresh"
    )
    @classmethod
    def _weight(cls, value: float) -> float:
        if value < 0:
            raise ValueError("must be 0 or more")
        return value

    @field_validator(
        "feed_half_life_days",
        "feed_fresh_horizon_days",
        "feed_popularity_days",
        "feed_popularity_half_life_days",
        "feed_neighbours",
    )
    @classmethod
    def _feed_positive(cls, value: float) -> float:
        if value <= 0:
            raise ValueError("must be more than 0")
        return value

    @field_validator("stream_reconcile_s")
    @classmethod
    def _seconds_or_off(cls, value: float) -> float:
        if value < 0:
            raise ValueError("must be 0 (off) or more seconds")
        return value

    @field_validator("stream_engine")
    @classmethod
    def _stream_engine(cls, value: str) -> str:
        # The built-ins, or the name of an installed engine plugin (whether it
        # streams is checked by the engine registry when the stream starts).
        return _engine_name(value, "stream", ("local", "flink"))

    @field_validator("batch_engine")
    @classmethod
    def _batch_engine(cls, value: str) -> str:
        return _engine_name(value, "batch", ("columnar", "local", "flink"))

    @field_validator("metrics_port", "port", "flink_rest_port")
    @classmethod
    def _port(cls, value: int) -> int:
        if not 0 <= value <= 65535:
            raise ValueError("must be a port number from 0 to 65535")
        return value

    @field_validator("host")
    @classmethod
    def _host(cls, value: str) -> str:
        if not value.strip() or any(ch.isspace() for ch in value):
            raise ValueError("must be a host name or IP address, e.g. 127.0.0.1 or 0.0.0.0")
        return value

    @field_validator("trusted_proxies")
    @classmethod
    def _trusted_proxies(cls, value: str) -> str:
        out = []
        for item in (part.strip() for part in value.split(",")):
            if not item:
                continue
            try:
                out.append(str(ipaddress.ip_network(item, strict=False)))
            except ValueError:
                raise ValueError(
                    f"{item!r} is not an IP address or network: use e.g. 10.0.0.5 or 10.0.0.0/24"
                ) from None
        return ",".join(out)

    @model_validator(mode="after")
    def _autoscale_bounds(self) -> Settings:
        if self.flink_autoscale_max < self.flink_autoscale_min:
            raise ValueError(
                f"flink_autoscale_max ({self.flink_autoscale_max}) must be at least "
                f"flink_autoscale_min ({self.flink_autoscale_min})"
            )
        if self.flink_autoscale_max > MAX_LOCAL_TASK_MANAGERS:
            raise ValueError(
                f"flink_autoscale_max ({self.flink_autoscale_max}) must be at most "
                f"{MAX_LOCAL_TASK_MANAGERS}: the local cluster's Prometheus ports "
                "(REST port + 100 to + 120) serve the job manager and 20 task managers"
            )
        return self

    @property
    def flink_start_task_managers(self) -> int:
        """The task managers the local cluster starts with (within the
        autoscaler's bounds when it is on)."""
        n = self.flink_task_managers
        if self.flink_autoscale:
            n = min(max(n, self.flink_autoscale_min), self.flink_autoscale_max)
        return n

    @property
    def trusted_proxy_list(self) -> list[str]:
        return [p for p in self.trusted_proxies.split(",") if p]

    @field_validator("batch_size", "bulk_log_threshold")
    @classmethod
    def _positive(cls, value: int) -> int:
        if value < 1:
            raise ValueError("must be at least 1")
        return value

    @field_validator("stream_partitions")
    @classmethod
    def _stream_partitions(cls, value: int) -> int:
        if not 1 <= value <= 64:
            raise ValueError("must be 1 to 64 (a process each)")
        return value

    @field_validator("confirm_threshold", "stream_flink_restarts", "stream_log_compact")
    @classmethod
    def _not_negative(cls, value: int) -> int:
        if value < 0:
            raise ValueError("must be 0 or more")
        return value

    @field_validator("server_url")
    @classmethod
    def _server_url(cls, value: str) -> str:
        parts = urlsplit(value.strip())
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError(f"{value!r} is not an http(s) URL: use e.g. http://127.0.0.1:8000")
        if parts.query or parts.fragment:
            raise ValueError(f"{value!r} must not have a query or fragment")
        return value.strip().rstrip("/")

    @field_validator("bucket_url")
    @classmethod
    def _bucket_url(cls, value: str | None) -> str | None:
        if not value:
            return None
        parts = urlsplit(value)
        if parts.scheme != "s3":
            raise ValueError(
                f"unsupported scheme {parts.scheme or '(none)'!r} in {value!r}: use "
                "s3://BUCKET/PREFIX, or leave it unset for local folders under the data directory"
            )
        if not parts.netloc or parts.query or parts.fragment:
            raise ValueError(f"{value!r} is not of the form s3://BUCKET/PREFIX")
        prefix = parts.path.strip("/")
        if prefix and any(seg in ("", ".", "..") for seg in prefix.split("/")):
            raise ValueError(f"{value!r} has an empty, '.' or '..' segment in its prefix")
        return f"s3://{parts.netloc}/{prefix}" if prefix else f"s3://{parts.netloc}"

    @property
    def resolved_store_url(self) -> str:
        if self.store_url:
            return self.store_url
        return f"sqlite:///{(self.data_dir / 'store.db').resolve()}"


# Task managers a local cluster can run: its 21 Prometheus reporter ports
# (engines/flink/runtime/cluster.py METRICS_SPAN) serve them and the job manager.
MAX_LOCAL_TASK_MANAGERS = 20


def _unknown_env() -> list[str]:
    known = {ENV_PREFIX + name.upper() for name in Settings.model_fields}
    # Variables other tools of ours read directly (tests, benchmarks).
    known |= {ENV_PREFIX + "TEST_PG_URL", ENV_PREFIX + "TEST_FLINK_URL", ENV_PREFIX + "DEBUG"}
    return sorted(k for k in os.environ if k.startswith(ENV_PREFIX) and k not in known)


def load_settings(**overrides: object) -> Settings:
    """Read settings from the environment (overrides win); raise ConfigError on any problem."""
    unknown = _unknown_env()
    if unknown:
        names = ", ".join(f"{ENV_PREFIX}{n[len(ENV_PREFIX) :]}" for n in unknown)
        valid = ", ".join(ENV_PREFIX + n.upper() for n in Settings.model_fields)
        raise ConfigError(f"unknown setting {names}; valid settings are {valid}")
    try:
        return Settings(**{k: v for k, v in overrides.items() if v is not None})
    except ValidationError as exc:
        problems = "; ".join(
            f"{ENV_PREFIX}{'.'.join(str(p) for p in e['loc']).upper()}: {e['msg']}"
            for e in exc.errors()
        )
        raise ConfigError(f"invalid settings: {problems}") from None
