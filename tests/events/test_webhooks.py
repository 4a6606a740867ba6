"""Webhook delivery to a real local receiver, from real tagging and pins, on
real SQLite and PostgreSQL."""

from __future__ import annotations

import json
import threading
import time
from typing import Any

import pytest
from sqlalchemy import select

from personatag.config import Settings
from personatag.domain import Action, PinKind
from personatag.errors import InputError, NotFoundError
from personatag.membership_events.delivery import WebhookWorker, redeliver
from personatag.membership_events.export import export_events
from personatag.membership_events.http import DeliveryError, sign
from personatag.membership_events.webhooks import (
    add_webhook,
    get_webhook,
    list_dead_letters,
    list_webhooks,
    remove_webhook,
    set_enabled,
)
from personatag.memberships.pins import pin
from personatag.metrics import Metrics
from personatag.store import Store
from tests.events.conftest import FAST, Clock, tag
from tests.events.receiver import Receiver


def hook(store: Store, rx: Receiver, **kw: Any) -> int:
    created, secret = add_webhook(store, rx.url, actor="admin", **kw)
    rx.secret = secret
    return created.pk


def drain(worker: WebhookWorker, clock: Clock, passes: int = 50) -> None:
    """Pass until nothing more is sent."""
    for _ in range(passes):
        if worker.deliver_once(clock()) == 0:
            return
    raise AssertionError("deliveries did not settle")


def _value(metrics: Metrics, outcome: str) -> float:
    return metrics.webhook_deliveries.labels(outcome=outcome)._value.get()


def test_enter_and_exit_events_are_signed_and_match_the_export(pop: Store, rx: Receiver) -> None:
    tag(pop, "cio", 'job_title = "CIO"')  # before the webhook: not sent
    pk = hook(pop, rx)
    start = get_webhook(pop, pk).cursor_seq
    tag(pop, "emea", 'region = "EMEA"')
    pin(pop, "emea", "c0001", PinKind.IN, actor="bob")
    tag(pop, "emea", "seniority < 5", action=Action.UNTAG)
    metrics = Metrics()
    drain(WebhookWorker(pop, FAST, metrics), Clock())
    assert rx.bad_signatures == 0 and not rx.refused
    assert rx.events() == list(export_events(pop, since=start))
    changes = [(e["contact_id"], e["change"], e["source"]) for e in rx.events()]
    assert ("c0001", "enter", "manual") in changes and ("c0004", "exit", "adhoc") in changes
    assert all(e["persona"] == "emea" for e in rx.events())
    first = rx.accepted[0]
    assert first.content_type == "application/json"
    assert first.body["webhook"] == pk
    assert len(first.body["events"]) == FAST.webhook_batch
    assert first.body["first_seq"] == first.body["events"][0]["seq"]
    assert first.body["last_seq"] == first.body["events"][-1]["seq"]
    assert len({d.delivery_id for d in rx.accepted}) == len(rx.accepted)
    assert _value(metrics, "delivered") == len(rx.accepted)
    after = get_webhook(pop, pk)
    assert (after.attempts, after.last_error, after.cursor_part) == (0, None, None)
    assert after.cursor_seq == rx.events()[-1]["seq"]
    assert metrics.webhook_lag._value.get() == 0


def test_the_signature_covers_timestamp_and_body() -> None:
    sig = sign("s3cret", 1_750_000_000, b'{"a":1}')
    assert sig.startswith("sha256=") and len(sig) == 7 + 64
    assert sig != sign("s3cret", 1_750_000_001, b'{"a":1}')
    assert sig != sign("s3cret", 1_750_000_000, b'{"a":2}')
    assert sig != sign("other", 1_750_000_000, b'{"a":1}')


def test_persona_filter(pop: Store, rx: Receiver) -> None:
    hook(pop, rx, personas=["cio"])
    tag(pop, "emea", 'region = "EMEA"')
    tag(pop, "cio", 'job_title = "CIO"')
    pin(pop, "emea", "c0002", PinKind.IN)
    drain(WebhookWorker(pop, FAST), Clock())
    assert rx.events() == list(export_events(pop, persona="cio"))
    assert len(rx.events()) == 8


def test_bulk_entries_are_split_across_batches_without_loss(pop: Store, rx: Receiver) -> None:
    pk = hook(pop, rx)
    tag(pop, "emea", 'region = "EMEA"', bulk=3)  # one bulk entry of 10 contacts
    pin(pop, "emea", "c0001", PinKind.IN)
    worker, clock = WebhookWorker(pop, FAST), Clock()
    worker.deliver_once(clock())
    part = get_webhook(pop, pk)
    assert part.cursor_part == 4  # 4 of the bulk entry's 10 contacts sent
    drain(worker, clock)
    sizes = [len(d.body["events"]) for d in rx.accepted]
    assert sizes == [4, 4, 3]  # 10 bulk events, then the pin, 4 per POST
    events = rx.events()
    assert len({e["seq"] for e in events[:10]}) == 1
    assert [e["contact_id"] for e in events[:10]] == [f"c{i:04d}" for i in range(0, 40, 4)]
    assert events == list(export_events(pop, since=get_webhook(pop, pk).cursor_seq - 2))


def test_failures_retry_with_backoff_then_deliver_the_same_batch(pop: Store, rx: Receiver) -> None:
    settings = FAST.model_copy(update={"webhook_max_attempts": 5})
    pk = hook(pop, rx)
    pin(pop, "emea", "c0001", PinKind.IN)
    rx.fail = 2
    worker, clock = WebhookWorker(pop, settings, Metrics()), Clock()
    metrics = worker.metrics
    now = clock()
    assert worker.deliver_once(now) == 1
    state = get_webhook(pop, pk)
    assert (state.attempts, state.last_error) == (1, "HTTP 500")
    assert state.next_attempt_at is not None
    wait = (state.next_attempt_at - now).total_seconds()
    assert 0.5 <= wait <= 1.0  # backoff 1 s, jittered 50-100 %
    assert worker.deliver_once(now) == 0  # not due yet
    pin(pop, "emea", "c0002", PinKind.IN)  # logged meanwhile: not in the retried batch
    now = clock()
    worker.deliver_once(now)
    state = get_webhook(pop, pk)
    assert state.attempts == 2
    assert 0.75 <= (state.next_attempt_at - now).total_seconds() <= 1.5  # type: ignore[operator]
    worker.deliver_once(clock())
    assert [d.raw for d in rx.refused] == [rx.accepted[0].raw] * 2
    assert {d.delivery_id for d in rx.refused} == {rx.accepted[0].delivery_id}
    assert [e["contact_id"] for e in rx.events()] == ["c0001"]
    state = get_webhook(pop, pk)
    assert (state.attempts, state.last_error, state.next_attempt_at) == (0, None, None)
    drain(worker, clock)
    assert [e["contact_id"] for e in rx.events()] == ["c0001", "c0002"]
    assert _value(metrics, "failed") == 2 and _value(metrics, "delivered") == 2


def test_a_batch_that_never_gets_through_is_dead_lettered_and_the_hook_moves_on(
    pop: Store, rx: Receiver
) -> None:
    pk = hook(pop, rx)
    pin(pop, "emea", "c0001", PinKind.IN)
    rx.always_fail, rx.status = True, 503
    worker, clock = WebhookWorker(pop, FAST), Clock()
    for _ in range(FAST.webhook_max_attempts):
        worker.deliver_once(clock())
    assert len(rx.refused) == FAST.webhook_max_attempts
    [letter] = list_dead_letters(pop, pk)
    assert (letter.attempts, letter.last_error, letter.events) == (3, "HTTP 503", 1)
    assert letter.redelivered_at is None
    assert json.loads(letter.payload)["events"][0]["contact_id"] == "c0001"
    state = get_webhook(pop, pk)
    assert (state.cursor_seq, state.attempts, state.dead_letters) == (letter.last_seq, 0, 1)
    assert _value(worker.metrics, "dead_lettered") >= 1
    # Later changes still get through.
    rx.always_fail = False
    pin(pop, "emea", "c0002", PinKind.IN)
    drain(worker, clock)
    assert [e["contact_id"] for e in rx.events()] == ["c0002"]
    # Redelivery: refused first (the error is kept), then accepted.
    rx.fail = 1
    with pytest.raises(DeliveryError, match="HTTP 503"):
        redeliver(pop, FAST, letter.pk, actor="admin")
    assert list_dead_letters(pop, pk)[0].attempts == 4
    out = redeliver(pop, FAST, letter.pk, actor="admin")
    assert out["redelivered_at"] is not None and out["last_error"] is None
    assert rx.accepted[-1].delivery_id == letter.delivery_id == rx.refused[0].delivery_id
    assert [e["contact_id"] for e in rx.events()] == ["c0002", "c0001"]
    assert get_webhook(pop, pk).dead_letters == 0


def test_unreachable_receivers_count_as_failures(pop: Store, rx: Receiver) -> None:
    created, _ = add_webhook(pop, "http://127.0.0.1:9/nothing-listens", actor="a")
    pin(pop, "emea", "c0001", PinKind.IN)
    WebhookWorker(pop, FAST).deliver_once(Clock()())
    state = get_webhook(pop, created.pk)
    assert state.attempts == 1 and "cannot connect" in str(state.last_error)


def test_from_start_disable_enable_remove(pop: Store, rx: Receiver) -> None:
    pin(pop, "emea", "c0001", PinKind.IN)
    pk = hook(pop, rx, from_start=True)
    assert get_webhook(pop, pk).cursor_seq == 0
    set_enabled(pop, pk, False, actor="admin")
    worker, clock = WebhookWorker(pop, FAST), Clock()
    assert worker.deliver_once(clock()) == 0 and not rx.accepted
    set_enabled(pop, pk, True, actor="admin")
    drain(worker, clock)
    assert [e["contact_id"] for e in rx.events()] == ["c0001"]
    assert [h.pk for h in list_webhooks(pop)] == [pk]
    remove_webhook(pop, pk, actor="admin")
    assert list_webhooks(pop) == []
    with pytest.raises(NotFoundError, match="unknown webhook"):
        get_webhook(pop, pk)
    audit = pop.tables.audit_events
    with pop.read() as conn:
        actions = list(conn.scalars(select(audit.c.action).order_by(audit.c.seq)))
    assert actions == ["webhook.create", "webhook.disable", "webhook.enable", "webhook.remove"]


@pytest.mark.parametrize(
    "url", ["ftp://example.com/x", "example.com/hook", "http://", "https://u:p@example.com/"]
)
def test_bad_urls_are_refused(pop: Store, url: str) -> None:
    with pytest.raises(InputError, match="invalid webhook URL"):
        add_webhook(pop, url)


def test_unknown_persona_and_dead_letter(pop: Store) -> None:
    with pytest.raises(NotFoundError, match="unknown persona 'ghost'"):
        add_webhook(pop, "https://example.com/h", personas=["emea", "ghost"])
    with pytest.raises(NotFoundError, match="unknown dead letter"):
        redeliver(pop, Settings(), 999)
    with pytest.raises(NotFoundError, match="unknown webhook"):
        list_dead_letters(pop, 999)


def test_run_delivers_in_the_background_until_stopped(pop: Store, rx: Receiver) -> None:
    hook(pop, rx)
    stop = threading.Event()
    worker = WebhookWorker(pop, FAST)
    thread = threading.Thread(target=worker.run, args=(stop, 0.01), daemon=True)
    thread.start()
    try:
        pin(pop, "emea", "c0001", PinKind.IN)
        deadline = time.monotonic() + 30
        while not rx.accepted and time.monotonic() < deadline:
            time.sleep(0.02)
    finally:
        stop.set()
        thread.join(30)
    assert not thread.is_alive()
    assert [e["contact_id"] for e in rx.events()] == ["c0001"]


def test_the_worker_as_a_service_delivers_and_stops_within_its_interval(
    pop: Store, rx: Receiver
) -> None:
    """Started in its own thread (as `serve` and `stream` do): a pass that
    delivered is followed by another at once; a stop ends the wait between
    passes at once, however long the interval."""
    hook(pop, rx)
    pin(pop, "emea", "c0001", PinKind.IN)
    worker = WebhookWorker(pop, FAST.model_copy(update={"webhook_interval_s": 3600.0}))
    worker.start()
    try:
        deadline = time.monotonic() + 30
        while not rx.accepted and time.monotonic() < deadline:
            time.sleep(0.02)
        assert worker.health().alive
    finally:
        assert worker.stop(30)  # the interval is an hour: the stop ended the wait
    assert not worker.is_alive() and worker.health().failures == 0
    assert [e["contact_id"] for e in rx.events()] == ["c0001"]


def test_two_workers_send_each_batch_once(pop: Store, rx: Receiver) -> None:
    hook(pop, rx)
    tag(pop, "emea", 'region = "EMEA"')
    clock = Clock()
    a, b = WebhookWorker(pop, FAST), WebhookWorker(pop, FAST)
    for _ in range(10):
        now = clock()
        threads = [threading.Thread(target=w.deliver_once, args=(now,)) for w in (a, b)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
    assert rx.events() == list(export_events(pop, persona="emea"))
