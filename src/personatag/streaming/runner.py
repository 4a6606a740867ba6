"""The stream processor and the webhook deliveries as services of a process
(`personatag serve`, `personatag stream`): made here, started and stopped by it."""

from __future__ import annotations

from personatag.config import Settings
from personatag.metrics import Metrics
from personatag.service import Service
from personatag.store import Store


def stream_target(store: Store, settings: Settings, metrics: Metrics | None = None) -> Service:
    """The configured stream engine, looked up in the engine registry (a service);
    with `stream_partitions` above 1, the local engine's partitions."""
    from personatag.engines import get_stream_engine

    if settings.stream_partitions > 1:
        from personatag.engines.local.stream.partitioned import Partitions

        return Partitions(store, settings, metrics)
    return get_stream_engine(settings.stream_engine, store, settings, metrics)


def services(
    store: Store,
    settings: Settings,
    *,
    metrics: Metrics | None = None,
    stream: bool = True,
    webhooks: bool = True,
) -> list[Service]:
    """The stream processor and the webhook worker, not started yet."""
    out: list[Service] = []
    if stream:
        out.append(stream_target(store, settings, metrics))
    if webhooks:
        from personatag.membership_events.delivery import WebhookWorker

        out.append(WebhookWorker(store, settings, metrics))
    return out
