"""`make demo`: a working personatag on the embedded defaults, start to finish.

Creates the store under PERSONATAG_DATA_DIR (./personatag-data), generates a
100k-contact population (once; reused on later runs), defines a handful of
personas with criteria, previews and tags them on the local engine, and prints
a short summary.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable
from typing import Any

from sqlalchemy import func, select

from personatag.config import Settings, load_settings
from personatag.contacts import show_contact
from personatag.definitions.criteria import add_criterion, get_criterion
from personatag.definitions.personas import add_persona, list_personas
from personatag.domain import Action
from personatag.errors import PersonatagError
from personatag.store import Store, open_store
from personatag.tagging.adhoc import AdhocRequest, run_adhoc
from personatag.tagging.preview import preview

CONTACTS = 100_000
SEED = 7

# key, name, category, criterion
PERSONAS = [
    (
        "cio",
        "Chief Investment Officer",
        "job title",
        'job_title ilike "%chief investment officer%" or job_title in ("CIO", "Group CIO", '
        '"Deputy CIO")',
    ),
    ("treasurer", "Corporate Treasurer", "job title", 'job_title ilike "%treasurer%"'),
    (
        "fixed-income",
        "Fixed income specialist",
        "job title",
        'job_title ilike "%fixed income%" or job_title ilike "%credit%" or interests contains_any '
        '("Rates", "Credit")',
    ),
    ("emea", "EMEA reader", "region", 'region = "EMEA"'),
    ("energy-reader", "Energy reader", "interest", 'count(read where sector = "Energy", 90d) >= 5'),
    (
        "emea-energy-cio",
        "EMEA energy CIO",
        "segment",
        'persona("cio") and region = "EMEA" and count(read where sector = "Energy", 90d) >= 5',
    ),
    (
        "dormant",
        "Dormant reader",
        "engagement",
        "last_login_at is null or not last_login_at within 90d",
    ),
]


def say(text: str = "") -> None:
    print(text, flush=True)


def run() -> None:
    settings = load_settings()
    settings.data_dir.mkdir(parents=True, exist_ok=True)
    url = settings.resolved_store_url
    say(f"personatag demo: store {url}")
    store = open_store(url, create=True)
    t = store.tables
    with store.read() as conn:
        existing = int(conn.scalar(select(func.count()).select_from(t.contacts)) or 0)
    if existing == 0:
        from personatag.generate import generate

        say(f"generating {CONTACTS:,} contacts with reads and logins (seed {SEED}) ...")
        start = time.perf_counter()
        made = generate(store, contacts=CONTACTS, seed=SEED, progress=lambda m: say("  " + m))
        say(
            f"  done in {time.perf_counter() - start:.1f}s: {made.contacts:,} contacts, "
            f"{made.publications:,} publications, {made.reads:,} reads, {made.logins:,} logins"
        )
    else:
        say(f"reusing the {existing:,} contacts already in the store")

    say("\npersonas and criteria (preview, then tag):")
    with store.read() as conn:
        have = {p.key for p, _ in list_personas(conn, store, include_archived=True)}
    for key, name, category, expr in PERSONAS:
        if key not in have:
            add_persona(store, key, name=name, category=category, actor="demo")
        try:
            with store.read() as conn:
                get_criterion(conn, store, key)
        except PersonatagError:
            add_criterion(store, key, persona=key, expr=expr, actor="demo")
        p = preview(store, expr, persona=key, sample_size=3)
        result = run_adhoc(
            store,
            AdhocRequest(persona=None, action=Action.TAG, criterion=key, actor="demo"),
            settings,
        ).as_json()
        say(
            f"  {key:<16} preview {p['count']:>7,} (would enter {p['would_enter']:,})  "
            f"tagged {result['tagged']:>7,}  already {result['already']:>7,}"
        )
        say(f"  {'':<16} {expr}")

    say("\nmembers per persona:")
    with store.read() as conn:
        rows = list_personas(conn, store)
    for persona, members in rows:
        say(f"  {persona.category:<12} {persona.key:<16} {members:>8,}  {persona.name}")

    with store.read() as conn:
        pk = conn.scalar(
            select(t.memberships.c.contact_pk)
            .join(t.personas, t.personas.c.pk == t.memberships.c.persona_pk)
            .where(t.personas.c.key == "emea-energy-cio")
            .order_by(t.memberships.c.contact_pk)
            .limit(1)
        )
        sample_id = (
            conn.scalar(select(t.contacts.c.id).where(t.contacts.c.pk == pk)) if pk else None
        )
    if sample_id:
        shown = show_contact(store, sample_id)
        a = shown["attributes"]
        say(
            f"\na sample contact, {sample_id}: {a['first_name']} {a['last_name']}, "
            f"{a['job_title']} at {a['firm']} ({a['country']}, {a['region']})"
        )
        for p in shown["personas"]:
            src = p["sources"][0]
            say(
                f"  {p['persona']:<16} since {p['since']} via {src['criterion'] or src['source']} "
                f"({src['request_id']})"
            )
    say("\nthe request pipeline: a request file through the dispatcher")
    _pipeline_demo(store, settings, say)
    say("\nongoing criteria: the stream keeps a persona true as data changes")
    _stream_demo(store, settings, say)
    if sample_id:
        say(f"\nthe reading feed of {sample_id} (top 3):")
        _feed_demo(store, settings, sample_id, say)
    say(
        "\ntry: .venv/bin/personatag persona list   |   .venv/bin/personatag contact show "
        f"{sample_id or 'c00000001'}   |   .venv/bin/personatag jobs list"
    )
    store.dispose()


def _pipeline_demo(store: Store, settings: Settings, say: Callable[[str], None]) -> None:
    import json

    from personatag.buckets import open_buckets
    from personatag.requests.dispatcher import Dispatcher
    from personatag.requests.submit import submit_file

    buckets = open_buckets(settings)
    request = {
        "version": 1,
        "submitted_by": "demo",
        "persona": "treasurer",
        "action": "untag",
        "expr": 'firm_type != "corporate"',
    }
    sent = submit_file(buckets, json.dumps(request).encode(), name="demo-request.json")
    say(f"  submitted {sent['key']} to {buckets['requests'].url('')}")
    dispatcher = Dispatcher(store, buckets, settings)
    dispatcher.scan()
    dispatcher.drain()
    dispatcher.close()
    summary = json.loads(buckets["results"].get(f"{sent['request_id']}/summary.json"))
    c = summary["counts"]
    say(
        f"  {summary['request_id']} {summary['status']}: matched {c['matched']:,}, "
        f"untagged {c['untagged']:,} (treasurers outside corporates)"
    )
    say(f"  result files in {buckets['results'].url('')}{sent['request_id']}/")


LIVE_KEY = "energy-live"
LIVE_EXPR = 'count(read where sector = "Energy", 30d) >= 3'


def _stream_demo(store: Store, settings: Settings, say: Callable[[str], None]) -> None:
    from datetime import timedelta

    from personatag.contacts import add_events
    from personatag.domain import utcnow
    from personatag.engines.local.stream.processor import StreamProcessor

    t = store.tables
    with store.read() as conn:
        have = {p.key for p, _ in list_personas(conn, store, include_archived=True)}
    if LIVE_KEY not in have:
        add_persona(store, LIVE_KEY, name="Energy reader (live)", category="interest", actor="demo")
        add_criterion(
            store,
            LIVE_KEY,
            persona=LIVE_KEY,
            expr=LIVE_EXPR,
            mode="ongoing",
            exit_policy="remove",
            actor="demo",
        )
    processor = StreamProcessor(store, settings)
    done = processor.catch_up(timeout_s=600)
    for line in done.lifecycle:
        say(f"  {line}")
    with store.read() as conn:
        persona_pk = conn.scalar(select(t.personas.c.pk).where(t.personas.c.key == LIVE_KEY))
        members = select(t.memberships.c.contact_pk).where(t.memberships.c.persona_pk == persona_pk)
        row = conn.execute(
            select(t.contacts.c.id).where(t.contacts.c.pk.not_in(members)).order_by(t.contacts.c.pk)
        ).first()
        energy = conn.scalars(
            select(t.publications.c.id)
            .where(t.publications.c.sector == "Energy", t.publications.c.published_at < utcnow())
            .order_by(t.publications.c.published_at.desc())
            .limit(3)
        ).all()
    if row is None or len(energy) < 3:
        return
    who = row[0]
    now = utcnow()
    add_events(store, who, reads=[(p, now - timedelta(hours=i + 1)) for i, p in enumerate(energy)])
    step = processor.catch_up(timeout_s=600)
    holds = any(p["persona"] == LIVE_KEY for p in show_contact(store, who)["personas"])
    say(
        f"  {who} read 3 Energy reports: the stream applied {step.changes} change(s), "
        f"{step.entered} entered; {who} holds {LIVE_KEY}: {holds}"
    )
    say(f"  {LIVE_KEY}: {LIVE_EXPR} (exit remove: they leave when the reads age out)")
    say(
        "  while the server runs, try: .venv/bin/personatag contact add-read ID PUBLICATION_ID"
        "   |   .venv/bin/personatag stream status"
    )


def _feed_demo(
    store: Store, settings: Settings, contact_id: str, say: Callable[[str], None]
) -> None:
    from personatag.recommend.service import feed_for

    feed = feed_for(store, contact_id, k=3, settings=settings)
    for item in feed["items"]:
        say(f"  {item['id']:<12} {item['score']:.2f}  {item['title']}  ({item['reason']})")


def admin_credentials(settings: Any) -> tuple[str, str]:
    """The first admin: created on a new store, else given a fresh password (a demo
    store is a playground; a real deployment uses `personatag user password`)."""
    from personatag import accounts

    store = open_store(settings.resolved_store_url)
    try:
        first = accounts.ensure_first_admin(store)
        if first is not None:
            return first
        password = accounts.generate_password()
        accounts.set_password(store, "admin", password, actor="demo")
        return "admin", password
    finally:
        store.dispose()


def main() -> None:
    try:
        run()
        from personatag import serve

        settings = load_settings()
        user, password = admin_credentials(settings)
        say(f"\nthe workbench: log in as {user} with password {password}")
        say("(Ctrl-C stops the server)")
        serve.run(settings, echo=say)
    except PersonatagError as exc:
        print(f"error: {exc}", file=sys.stderr)
        sys.exit(1)


if __name__ == "__main__":
    main()
