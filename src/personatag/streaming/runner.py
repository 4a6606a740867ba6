"""Running the stream (and the webhook deliveries) beside other work in a process."""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable

from personatag.config import Settings
from personatag.metrics import Metrics
from personatag.store import Store

log = logging.getLogger(__name__)


def _guard(name: str, target: Callable[[threading.Event], None], stop: threading.Event) -> None:
    try:
        target(stop)
    except Exception:  # the rest of the process keeps running; /metrics shows the lag
        log.exception("%s stopped", name)


def stream_target(
    store: Store, settings: Settings, metrics: Metrics | None = None
) -> Callable[[threading.Event], None]:
    """The loop of the configured stream engine (looked up in the engine registry)."""
    from personatag.engines import get_stream_engine

    return get_stream_engine(settings.stream_engine, store, settings, metrics).run


def start(
    store: Store,
    settings: Settings,
    stop: threading.Event,
    *,
    metrics: Metrics | None = None,
    stream: bool = True,
    webhooks: bool = True,
) -> list[threading.Thread]:
    """Start the stream processor and the webhook worker as daemon threads."""
    threads = []
    if stream:
        threads.append(
            threading.Thread(
                target=_guard,
                args=("the stream processor", stream_target(store, settings, metrics), stop),
                name="stream",
                daemon=True,
            )
        )
    if webhooks:
        from personatag.membership_events.delivery import WebhookWorker

        worker = WebhookWorker(store, settings, metrics)
        threads.append(
            threading.Thread(
                target=_guard,
                args=(
                    "webhook deliveries",
                    lambda s: worker.run(s, settings.webhook_interval_s),
                    stop,
                ),
                name="webhooks",
                daemon=True,
            )
        )
    for t in threads:
        t.start()
    return threads
