"""`personatag serve`: the REST API under uvicorn, with a dispatcher, the stream
processor and webhook deliveries in the same process.

On a store with no user at all an admin is created first and its generated
password printed once (`admin password: ...`). The dispatcher, the stream
processor and the webhook worker run in background threads and record in the
same metrics registry `/metrics` shows.
"""

from __future__ import annotations

import gc
import logging
import signal
import socket
import threading
from collections.abc import Callable

from personatag.config import Settings
from personatag.errors import ConfigError
from personatag.logs import RedactSecrets

log = logging.getLogger(__name__)

# Seconds a stopping server waits for the dispatcher (running jobs roll back).
DISPATCHER_STOP_S = 60.0


def bind(host: str, port: int) -> socket.socket:
    """A listening socket on host:port (0: a free port); ConfigError if it cannot be bound."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((host, port))
        sock.listen(128)
    except OSError as exc:
        sock.close()
        raise ConfigError(
            f"cannot listen on {host}:{port}: {exc.strerror or exc}; choose another address "
            "with --host/--port or PERSONATAG_HOST/PERSONATAG_PORT (port 0 picks a free one)"
        ) from None
    return sock


def _run_dispatcher(target: Callable[[threading.Event], None], stop: threading.Event) -> None:
    try:
        target(stop)
    except Exception:  # the API keeps serving; /status shows the queue not moving
        log.exception("the embedded dispatcher stopped")


def run(
    settings: Settings,
    *,
    host: str | None = None,
    port: int | None = None,
    dispatcher: bool = True,
    stream: bool = True,
    echo: Callable[[str], object] = print,
) -> None:
    """Serve until SIGINT/SIGTERM, then stop the dispatcher (its running jobs roll
    back and are picked up again by the next dispatcher)."""
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
        app = create_app(settings, store)
        sock = bind(host, port)
        stop = threading.Event()
        worker = None
        if dispatcher:
            d = Dispatcher(store, open_buckets(settings), settings)
            worker = threading.Thread(
                target=_run_dispatcher, args=(d.serve, stop), name="dispatcher", daemon=True
            )
            worker.start()
        # The stream processor (ongoing criteria) and webhook deliveries.
        from personatag.streaming import runner

        background = runner.start(store, settings, stop, stream=stream, webhooks=stream)
        # The feed model is built beside the server, not by the first feed request.
        from personatag.recommend.service import service_for

        service_for(store, settings).warm()
        shown = f"[{host}]" if ":" in host else host
        base = f"http://{shown}:{sock.getsockname()[1]}"
        echo(f"workbench at {base}/ (API at {base}/api/v1, docs at {base}/api/v1/docs)")
        # X-Forwarded-* are applied by the app itself, from PERSONATAG_TRUSTED_PROXIES
        # only (uvicorn would otherwise believe them from 127.0.0.1).
        config = uvicorn.Config(
            app, log_config=None, proxy_headers=False, server_header=False, lifespan="off"
        )
        # A secret sent in a query string (`?token=...`) must not reach the access log.
        logging.getLogger("uvicorn.access").addFilter(RedactSecrets())
        if threading.current_thread() is threading.main_thread():
            # uvicorn shuts down on SIGINT/SIGTERM, then re-raises the signal with the
            # handlers it found: with these the process stops the dispatcher and exits
            # 0 instead of dying by the signal.
            for sig in (signal.SIGINT, signal.SIGTERM):
                signal.signal(sig, lambda *_: stop.set())
        # What start-up made (modules, the app and its routes, caches) lives as
        # long as the process: frozen, it is left out of the collector's full
        # passes, which otherwise stall every request for ~0.1 s now and then.
        gc.collect()
        gc.freeze()
        try:
            uvicorn.Server(config).run(sockets=[sock])
        finally:
            stop.set()
            if worker is not None:
                worker.join(DISPATCHER_STOP_S)
            for thread in background:
                thread.join(DISPATCHER_STOP_S)
            sock.close()
    finally:
        store.dispose()
