"""`make demo`: a working personatag on the embedded defaults, start to finish.

Creates the store under PERSONATAG_DATA_DIR (./personatag-data), generates a
100k-contact population (once; reused on later runs), defines a handful of
personas with criteria, previews and tags them on the local engine, prints a
short summary, then serves the workbench. The admin's password is kept in the
data folder (`demo-admin-password`), so a second run prints the same one.
"""

from __future__ import annotations

import os
import sys
import time
from collections.abc import Callable
from pathlib import Path

from sqlalchemy import func, select

from personatag.config import Settings, load_settings
from personatag.contacts import show_contact
from personatag.definitions.criteria import add_criterion, get_criterion
from personatag.definitions.personas import add_persona, list_personas
from personatag.domain import Action
from personatag.errors import NotFoundError, PersonatagError
from personatag.store import Store, open_store
from personatag.tagging.adhoc import AdhocRequest, run_adhoc
from personatag.tagging.preview import preview

CONTACTS = 100_000
SEED = 7
# The contact the demo explains, and the README's tour too: with seed 7 a CIO in
# EMEA who reads Energy and Healthcare research (README.md's tour and
# tests/test_readme_tour.py name it as well).
SAMPLE_CONTACT = "c00000120"
# Where the demo keeps the admin's password, in the data folder (owner-only).
KEPT_LOGIN = "demo-admin-password"

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

    sample_id = _sample_contact(store)
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
        "\nin a second terminal while the workbench runs, try: .venv/bin/personatag persona list"
        f"   |   .venv/bin/personatag contact show {sample_id or 'c00000001'}"
        "   |   .venv/bin/personatag jobs list   (README.md's tour goes further)"
    )
    store.dispose()


def _sample_contact(store: Store) -> str | None:
    """SAMPLE_CONTACT when it holds a persona, else the first EMEA energy CIO
    (a store generated with another size or seed), else None."""
    t = store.tables
    holds = select(t.membership_rows.c.contact_pk).where(
        t.membership_rows.c.contact_pk == t.contacts.c.pk
    )
    sample = select(t.contacts.c.id).where(t.contacts.c.id == SAMPLE_CONTACT, holds.exists())
    with store.read() as conn:
        if conn.scalar(sample):
            return SAMPLE_CONTACT
        pk = conn.scalar(
            select(t.membership_rows.c.contact_pk)
            .join(t.personas, t.personas.c.pk == t.membership_rows.c.persona_pk)
            .where(t.personas.c.key == "emea-energy-cio")
            .order_by(t.membership_rows.c.contact_pk)
            .limit(1)
        )
        return conn.scalar(select(t.contacts.c.id).where(t.contacts.c.pk == pk)) if pk else None


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
        members = select(t.membership_rows.c.contact_pk).where(
            t.membership_rows.c.persona_pk == persona_pk
        )
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


def admin_login(settings: Settings) -> str:
    """How to log in as the admin, as a line to print. A new store gets a
    generated admin; later runs print the password kept in the data folder. One
    that no longer works (changed since, with `personatag user password` or in
    the workbench) is left alone; with none kept, the admin gets a new one and
    the line says so."""
    from personatag import accounts

    kept = settings.data_dir / KEPT_LOGIN
    store = open_store(settings.resolved_store_url)
    try:
        first = accounts.ensure_first_admin(store)
        if first is not None:
            _keep(kept, first[1])
            return f"log in as {first[0]} with password {first[1]} (kept in {kept})"
        saved = kept.read_text().strip() if kept.is_file() else ""
        if saved and accounts.authenticate(store, "admin", saved) is not None:
            return f"log in as admin with password {saved} (the same as before; kept in {kept})"
        if saved:
            return (
                f"log in as admin with the password you set: the one in {kept} no longer "
                "works (a new one: .venv/bin/personatag user password admin)"
            )
        password = accounts.generate_password()
        try:
            accounts.set_password(store, "admin", password, actor="demo")
        except NotFoundError:
            accounts.create_user(store, "admin", password, "admin", actor="demo")
        _keep(kept, password)
        return (
            f"log in as admin with a NEW password, {password}: no earlier one was kept "
            f"(kept now in {kept})"
        )
    finally:
        store.dispose()


def _keep(path: Path, password: str) -> None:
    # Owner-only from the start: the password is never readable by others.
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as out:
        out.write(password + "\n")


def main() -> None:
    try:
        run()
        from personatag import serve

        settings = load_settings()
        say(f"\nthe workbench: {admin_login(settings)}")
        say("(Ctrl-C stops the server)")
        serve.run(settings, echo=say)
    except PersonatagError as exc:
        print(f"error: {exc}", file=sys.stderr)
        sys.exit(1)


if __name__ == "__main__":
    main()
