"""`personatag serve`: the REST API under uvicorn, with a dispatcher, the stream
processor and webhook deliveries in the same process.

On a store with no user at all an admin is created first and its generated
password printed once (`admin password: ...`). The dispatcher, the stream
processor and the webhook worker are services (personatag.service) started and
stopped by the app's lifespan; they run in background threads and record in the
same metrics registry `/metrics` shows.
"""

from __future__ import annotations

import gc
import logging
import signal
import socket
import threading
from collections.abc import Callable
from typing import TYPE_CHECKING

from personatag.config import Settings
from personatag.errors import ConfigError
from personatag.logs import RedactSecrets
from personatag.service import Service, stop_all

if TYPE_CHECKING:
    from personatag.engines.base import BatchEngine

log = logging.getLogger(__name__)

# Seconds a stopping server waits for each service (running jobs roll back).
DISPATCHER_STOP_S = 60.0

# What uvicorn says about the app's lifespan: the services say for themselves
# when they start and stop.
_LIFESPAN_LINES = frozenset(
    {
        "Waiting for application startup.",
        "Application startup complete.",
        "Waiting for application shutdown.",
        "Application shutdown complete.",
    }
)


def _not_lifespan(record: logging.LogRecord) -> bool:
    return record.msg not in _LIFESPAN_LINES


def bind(host: str, port: int) -> socket.socket:
    """A listening socket on host:port (0: a free port); ConfigError if it cannot be bound."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        # Inherited by every accepted connection: without it a response on a
        # kept-alive connection waited for the client's delayed ACK (~40 ms on
        # Linux) before its last segment left (a 10 ms preview took 52 ms).
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        sock.bind((host, port))
        sock.listen(128)
    except OSError as exc:
        sock.close()
        raise ConfigError(
            f"cannot listen on {host}:{port}: {exc.strerror or exc}; choose another address "
            "with --host/--port or PERSONATAG_HOST/PERSONATAG_PORT (port 0 picks a free one)"
        ) from None
    return sock


def _warm(engine: BatchEngine) -> None:
    try:
        engine.warm()
    except Exception:  # the first answer prepares it instead; the server serves on
        logging.getLogger(__name__).exception("preparing the %s engine failed", engine.name)


def run(
    settings: Settings,
    *,
    host: str | None = None,
    port: int | None = None,
    dispatcher: bool = True,
    stream: bool = True,
    echo: Callable[[str], object] = print,
) -> None:
    """Serve until SIGINT/SIGTERM, then stop the services: the dispatcher's running
    jobs roll back and are picked up again by the next dispatcher. A service whose
    loop ends on an error leaves the API serving (/readyz says so)."""
    import uvicorn

    from personatag import accounts
    from personatag.buckets import open_buckets
    from personatag.requests.dispatcher import Dispatcher
    from personatag.store import open_store
    from personatag.web import create_app

    host = host or settings.host
    port = settings.port if port is None else port
    store = open_store(settings.resolved_store_url)
    try:
        first = accounts.ensure_first_admin(store)
        if first is not None:
            echo(f"admin user: {first[0]}")
            echo(f"admin password: {first[1]}")
            echo("(shown once; change it with `personatag user password admin`)")
        # The stream processor (ongoing criteria) and webhook deliveries.
        from personatag.streaming import runner

        services: list[Service] = []
        if dispatcher:
            services.append(Dispatcher(store, open_buckets(settings), settings))
        services += runner.services(store, settings, stream=stream, webhooks=stream)
        app = create_app(settings, store, services=services, stop_timeout_s=DISPATCHER_STOP_S)
        sock = bind(host, port)
        # The feed model is built beside the server, not by the first feed request.
        from personatag.recommend.service import service_for

        service_for(store, settings).warm()
        # So is the batch engine's data (the columnar copy): previews asked for
        # meanwhile are answered by the local engine.
        from personatag.engines import get_engine

        batch = get_engine(settings.batch_engine, store, settings)
        threading.Thread(target=_warm, args=(batch,), name="batch-engine-warm", daemon=True).start()
        shown = f"[{host}]" if ":" in host else host
        base = f"http://{shown}:{sock.getsockname()[1]}"
        echo(f"workbench at {base}/ (API at {base}/api/v1, docs at {base}/api/v1/docs)")
        # X-Forwarded-* are applied by the app itself, from PERSONATAG_TRUSTED_PROXIES
        # only (uvicorn would otherwise believe them from 127.0.0.1).
        config = uvicorn.Config(
            app, log_config=None, proxy_headers=False, server_header=False, lifespan="on"
        )
        # A secret sent in a query string (`?token=...`) must not reach the access log.
        logging.getLogger("uvicorn.access").addFilter(RedactSecrets())
        logging.getLogger("uvicorn.error").addFilter(_not_lifespan)
        if threading.current_thread() is threading.main_thread():
            # uvicorn shuts down on SIGINT/SIGTERM (its lifespan stopping the
            # services), then re-raises the signal with the handlers it found: with
            # these the process exits 0 instead of dying by the signal.
            def stop(*_: object) -> None:
                for service in services:
                    service.request_stop()

            for sig in (signal.SIGINT, signal.SIGTERM):
                signal.signal(sig, stop)
        # What start-up made (modules, the app and its routes, caches) lives as
        # long as the process: frozen, it is left out of the collector's full
        # passes, which otherwise stall every request for ~0.1 s now and then.
        gc.collect()
        gc.freeze()
        try:
            uvicorn.Server(config).run(sockets=[sock])
        finally:
            # Already stopped by the lifespan, unless uvicorn ended before it ran.
            stop_all(services, DISPATCHER_STOP_S)
            sock.close()
    finally:
        store.dispose()
