"""The personatag command line (thin: parses, calls the modules, prints)."""

from __future__ import annotations

import getpass
import json
import logging
import os
import sys
from datetime import datetime
from enum import StrEnum
from pathlib import Path
from typing import Annotated, Any

import typer
from sqlalchemy import select
from sqlalchemy.exc import DBAPIError

from personatag.config import Settings, load_settings
from personatag.domain import Action, PinKind, parse_timestamp
from personatag.errors import InputError, PersonatagError
from personatag.store import Store, open_store

app = typer.Typer(
    name="personatag",
    help="Tag research readers with personas.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)
persona_app = typer.Typer(help="Create, list and inspect personas.", no_args_is_help=True)
criterion_app = typer.Typer(
    help="Create, edit and list criteria (versioned).", no_args_is_help=True
)
attribute_app = typer.Typer(help="Declare custom contact attributes.", no_args_is_help=True)
contact_app = typer.Typer(help="Inspect and update contacts.", no_args_is_help=True)
app.add_typer(persona_app, name="persona")
app.add_typer(criterion_app, name="criterion")
app.add_typer(attribute_app, name="attribute")
app.add_typer(contact_app, name="contact")


class _State:
    settings: Settings | None = None
    debug: bool = False


STATE = _State()

JsonOpt = Annotated[bool, typer.Option("--json", help="Print JSON instead of text.")]


def settings() -> Settings:
    if STATE.settings is None:
        STATE.settings = load_settings()
    return STATE.settings


def actor() -> str:
    return settings().actor or os.environ.get("USER") or getpass.getuser()


def store(*, create: bool = False) -> Store:
    s = settings()
    return open_store(s.resolved_store_url, create=create)


def emit(obj: Any) -> None:
    typer.echo(json.dumps(obj, default=str))


def as_of_option(value: str | None, option: str = "--as-of") -> datetime | None:
    if value is None:
        return None
    try:
        return parse_timestamp(value)
    except ValueError:
        raise InputError(
            f"invalid {option} {value!r}: use ISO-8601, e.g. 2026-06-30T12:00:00Z"
        ) from None


def iso(value: datetime | None) -> str | None:
    return None if value is None else value.isoformat().replace("+00:00", "Z")


@app.callback()
def _root(
    debug: Annotated[bool, typer.Option("--debug", help="Show tracebacks on errors.")] = False,
) -> None:
    STATE.debug = debug
    from personatag.logs import configure_logging

    configure_logging(logging.DEBUG if debug else logging.WARNING, json=False)


# -- store -------------------------------------------------------------------


@app.command()
def init() -> None:
    """Create or migrate the store and the data folders."""
    s = settings()
    s.data_dir.mkdir(parents=True, exist_ok=True)
    st = store(create=True)
    st.dispose()
    typer.echo(f"store ready: {s.resolved_store_url}")


@attribute_app.command("add")
def attribute_add(
    name: str,
    type_: Annotated[str, typer.Option("--type", help="string|int|float|bool|timestamp|list")],
    description: Annotated[str | None, typer.Option(help="What the attribute means.")] = None,
) -> None:
    """Declare a custom contact attribute, usable in imports and criteria."""
    from personatag.definitions.attributes import add_attribute

    add_attribute(store(), name, type_, description=description, actor=actor())
    typer.echo(f"attribute {name} ({type_}) added")


@attribute_app.command("list")
def attribute_list(as_json: JsonOpt = False) -> None:
    """List standard and custom contact attributes."""
    from personatag.definitions.attributes import list_attributes

    attrs = list_attributes(store())
    if as_json:
        emit({"attributes": attrs})
        return
    for a in attrs:
        typer.echo(f"{a['name']:<24} {a['type']:<10} {a['kind']}")


class ImportKind(StrEnum):
    contacts = "contacts"
    publications = "publications"
    reads = "reads"
    logins = "logins"


@app.command("import")
def import_(
    kind: ImportKind,
    file: Annotated[Path, typer.Argument(help="CSV (header row) or JSON Lines file.")],
    fmt: Annotated[
        str | None, typer.Option("--format", help="csv|jsonl (default: by extension)")
    ] = None,
    as_json: JsonOpt = False,
) -> None:
    """Import (upsert) contacts, publications, reads or logins from CSV or JSON Lines."""
    from personatag.importer import import_file

    def reject(line: int, reason: str) -> None:
        typer.echo(f"{file}:{line}: {reason}", err=True)

    result = import_file(
        store(), kind.value, file, fmt=fmt, batch_size=settings().batch_size, on_reject=reject
    )
    counts = {"inserted": result.inserted, "updated": result.updated, "rejected": result.rejected}
    if as_json:
        emit(counts)
    else:
        typer.echo(
            f"{kind.value}: {result.inserted} inserted, {result.updated} updated, "
            f"{result.rejected} rejected"
        )


@app.command()
def generate(
    contacts: Annotated[int, typer.Option(help="How many contacts to generate.")],
    seed: Annotated[int, typer.Option(help="Same seed, same population.")] = 0,
    end: Annotated[
        str | None, typer.Option(help="Last day of reading history (default: today, UTC).")
    ] = None,
    persona_share: Annotated[
        float | None,
        typer.Option(
            help="0-1: how much of a reader's interests job title, firm type and region "
            "explain (default: the original population)."
        ),
    ] = None,
    reports: Annotated[
        int | None,
        typer.Option(
            help="Publications over the year (default: 1 per 1,000 contacts, 200 to 20,000)."
        ),
    ] = None,
) -> None:
    """Generate a realistic synthetic population (contacts, publications, reads, logins)."""
    from personatag.generate import generate as run_generate

    if contacts < 1:
        raise InputError("--contacts must be at least 1")
    st = store()
    result = run_generate(
        st,
        contacts=contacts,
        seed=seed,
        end=as_of_option(end),
        progress=lambda msg: typer.echo(msg, err=True),
        persona_share=persona_share,
        reports=reports,
    )
    typer.echo(
        f"generated {result.contacts:,} contacts, {result.publications:,} publications, "
        f"{result.reads:,} reads and {result.logins:,} logins in {result.seconds:.1f} s"
    )


# -- personas ----------------------------------------------------------------


@persona_app.command("add")
def persona_add(
    key: str,
    name: Annotated[str, typer.Option(help="Display name.")],
    category: Annotated[str, typer.Option(help="job title, region, interest, ...")],
    description: Annotated[str | None, typer.Option()] = None,
) -> None:
    """Create a persona."""
    from personatag.definitions.personas import add_persona

    p = add_persona(
        store(), key, name=name, category=category, description=description, actor=actor()
    )
    typer.echo(f"persona {p.key} added")


@persona_app.command("list")
def persona_list(
    as_json: JsonOpt = False,
    all_: Annotated[bool, typer.Option("--all", help="Include archived personas.")] = False,
) -> None:
    """List personas by category with member counts."""
    from personatag.definitions.personas import list_personas

    st = store()
    with st.read() as conn:
        rows = list_personas(conn, st, include_archived=all_)
    if as_json:
        emit(
            {
                "personas": [
                    {
                        "key": p.key,
                        "name": p.name,
                        "category": p.category,
                        "members": n,
                        "archived": p.archived_at is not None,
                    }
                    for p, n in rows
                ]
            }
        )
        return
    for p, n in rows:
        flag = " (archived)" if p.archived_at else ""
        typer.echo(f"{p.category:<16} {p.key:<28} {n:>10,}  {p.name}{flag}")


@persona_app.command("show")
def persona_show(key: str, as_json: JsonOpt = False) -> None:
    """Show one persona: definition, member count and the criteria that feed it."""
    from personatag.definitions.criteria import list_criteria
    from personatag.definitions.personas import get_persona, member_count

    st = store()
    with st.read() as conn:
        p = get_persona(conn, st, key)
        n = member_count(conn, st, p.pk)
        feeding = [c for c in list_criteria(conn, st) if c.persona_key == key]
    data: dict[str, Any] = {
        "key": p.key,
        "name": p.name,
        "category": p.category,
        "description": p.description,
        "members": n,
        "created_at": iso(p.created_at),
        "created_by": p.created_by,
        "archived_at": iso(p.archived_at),
        "criteria": [
            {
                "name": c.name,
                "version": c.version,
                "action": c.action.value,
                "mode": c.mode.value,
                "expr": c.expr,
            }
            for c in feeding
        ],
    }
    if as_json:
        emit(data)
        return
    typer.echo(f"{p.key}: {p.name} [{p.category}]{' (archived)' if p.archived_at else ''}")
    typer.echo(f"members: {n:,}")
    for c in data["criteria"]:
        typer.echo(f"  {c['name']}@{c['version']} {c['action']} {c['mode']}: {c['expr']}")


@persona_app.command("members")
def persona_members(
    key: str,
    as_json: JsonOpt = False,
    limit: Annotated[int | None, typer.Option(min=0, help="At most this many.")] = None,
) -> None:
    """List the ids of the contacts holding a persona (streamed)."""
    from personatag.definitions.personas import get_persona

    st = store()
    t = st.tables
    with st.read() as conn:
        p = get_persona(conn, st, key)
        query = (
            select(t.contacts.c.id)
            .where(
                t.contacts.c.pk.in_(
                    select(t.memberships.c.contact_pk).where(t.memberships.c.persona_pk == p.pk)
                )
            )
            .order_by(t.contacts.c.id)
        )
        if limit is not None:
            query = query.limit(limit)
        ids = conn.execution_options(yield_per=10_000).scalars(query)
        out = sys.stdout
        if as_json:
            out.write('{"members": [')
            for i, cid in enumerate(ids):
                out.write(("," if i else "") + json.dumps({"id": cid}))
            out.write("]}\n")
        else:
            for cid in ids:
                out.write(cid + "\n")


@persona_app.command("archive")
def persona_archive(key: str) -> None:
    """Archive a persona: no more tagging; its members and history are kept."""
    from personatag.definitions.personas import archive_persona

    archive_persona(store(), key)
    typer.echo(f"persona {key} archived")


# -- criteria ----------------------------------------------------------------


def _criterion_json(c: Any) -> dict[str, Any]:
    return {
        "name": c.name,
        "version": c.version,
        "persona": c.persona_key,
        "expr": c.expr,
        "action": c.action.value,
        "mode": c.mode.value,
        "exit": c.exit_policy.value,
        "status": c.status,
        "created_at": iso(c.created_at),
        "created_by": c.created_by,
    }


@criterion_app.command("add")
def criterion_add(
    name: str,
    persona: Annotated[str, typer.Option(help="Persona key.")],
    expr: Annotated[str, typer.Option(help="The condition, in the criteria language.")],
    action: Annotated[str, typer.Option(help="tag|untag")] = "tag",
    mode: Annotated[str, typer.Option(help="adhoc|ongoing")] = "adhoc",
    exit_: Annotated[str, typer.Option("--exit", help="keep|remove (ongoing)")] = "keep",
    as_json: JsonOpt = False,
) -> None:
    """Create a criterion (version 1)."""
    from personatag.definitions.criteria import add_criterion

    c = add_criterion(
        store(),
        name,
        persona=persona,
        expr=expr,
        action=action,
        mode=mode,
        exit_policy=exit_,
        actor=actor(),
    )
    if as_json:
        emit(_criterion_json(c))
    else:
        typer.echo(f"criterion {c.label} added: {c.expr}")


@criterion_app.command("edit")
def criterion_edit(
    name: str,
    persona: Annotated[str | None, typer.Option(help="Persona key.")] = None,
    expr: Annotated[str | None, typer.Option(help="The new condition.")] = None,
    action: Annotated[str | None, typer.Option(help="tag|untag")] = None,
    mode: Annotated[str | None, typer.Option(help="adhoc|ongoing")] = None,
    exit_: Annotated[str | None, typer.Option("--exit", help="keep|remove")] = None,
    as_json: JsonOpt = False,
) -> None:
    """Edit a criterion: makes a new version; old versions are kept."""
    from personatag.definitions.criteria import edit_criterion

    c = edit_criterion(
        store(),
        name,
        persona=persona,
        expr=expr,
        action=action,
        mode=mode,
        exit_policy=exit_,
        actor=actor(),
    )
    if as_json:
        emit(_criterion_json(c))
    else:
        typer.echo(f"criterion {c.label} saved: {c.expr}")


def _criterion_status(name: str, action: str, as_json: bool) -> None:
    from personatag.memberships.retire import set_ongoing_status

    c = set_ongoing_status(store(), name, action, actor=actor())
    if as_json:
        emit(_criterion_json(c))
    else:
        typer.echo(f"criterion {c.label} is {c.status}")


@criterion_app.command("pause")
def criterion_pause(name: str, as_json: JsonOpt = False) -> None:
    """Pause an ongoing criterion: the stream skips it, its memberships stay."""
    _criterion_status(name, "pause", as_json)


@criterion_app.command("resume")
def criterion_resume(name: str, as_json: JsonOpt = False) -> None:
    """Resume a paused ongoing criterion: it is backfilled again and swapped in."""
    _criterion_status(name, "resume", as_json)


@criterion_app.command("retire")
def criterion_retire(name: str, as_json: JsonOpt = False) -> None:
    """Retire an ongoing criterion: its memberships are removed (exits logged)."""
    _criterion_status(name, "retire", as_json)


@criterion_app.command("list")
def criterion_list(as_json: JsonOpt = False) -> None:
    """List criteria (newest version of each)."""
    from personatag.definitions.criteria import list_criteria

    st = store()
    with st.read() as conn:
        found = list_criteria(conn, st)
    if as_json:
        emit({"criteria": [_criterion_json(c) for c in found]})
        return
    for c in found:
        typer.echo(
            f"{c.label:<28} {c.persona_key:<24} {c.action.value:<5} {c.mode.value:<7} {c.expr}"
        )


@criterion_app.command("show")
def criterion_show(name: str, as_json: JsonOpt = False) -> None:
    """Show a criterion with all its versions."""
    from personatag.definitions.criteria import criterion_versions

    st = store()
    with st.read() as conn:
        versions = criterion_versions(conn, st, name)
    if as_json:
        emit({"name": name, "versions": [_criterion_json(c) for c in versions]})
        return
    for c in versions:
        typer.echo(
            f"{c.label} {iso(c.created_at)} by {c.created_by}: {c.action.value} {c.persona_key} "
            f"({c.mode.value}, exit {c.exit_policy.value}) {c.expr}"
        )


# -- preview and ad hoc ------------------------------------------------------


@app.command()
def preview(
    expr: Annotated[str, typer.Option(help="The condition to preview.")],
    persona: Annotated[
        str | None, typer.Option(help="Compare with this persona's members.")
    ] = None,
    as_of: Annotated[str | None, typer.Option("--as-of", help="ISO-8601 (default: now).")] = None,
    sample: Annotated[int, typer.Option(min=0, help="How many sample ids.")] = 10,
    as_json: JsonOpt = False,
) -> None:
    """Count whom a criterion catches now, with a sample and enter/exit counts."""
    if settings().token:
        from personatag.cli_remote import remote_preview

        result = remote_preview(expr, persona, as_of, sample)
    else:
        from personatag.tagging.preview import preview as run_preview

        result = run_preview(
            store(), expr, persona=persona, as_of=as_of_option(as_of), sample_size=sample
        )
    if as_json:
        emit(result)
        return
    typer.echo(
        f"matches: {result['count']:,}  would enter: {result['would_enter']:,}  "
        f"would exit: {result['would_exit']:,}"
    )
    typer.echo("sample: " + ", ".join(result["sample"]))


def _run(
    action: Action,
    persona: str | None,
    expr: str | None,
    criterion: str | None,
    contacts: Path | None,
    as_of: str | None,
    dry_run: bool,
    engine: str,
    request_id: str | None,
    as_json: bool,
) -> None:
    from personatag.tagging.adhoc import AdhocRequest, RequestFailed, run_adhoc

    req = AdhocRequest(
        persona=persona,
        action=action,
        expr=expr,
        criterion=criterion,
        contacts_file=contacts,
        as_of=as_of_option(as_of),
        dry_run=dry_run,
        actor=actor(),
        request_id=request_id,
        engine=engine,
    )
    try:
        result = run_adhoc(store(), req, settings())
    except RequestFailed as exc:
        if as_json:
            emit({"request_id": exc.request_id, "status": "failed", "error": exc.reason})
        raise
    for f in result.failures:
        typer.echo(f"{contacts}:{f.line}: {f.reason}", err=True)
    out = result.as_json()
    if as_json:
        emit(out)
        return
    verb = "would " if dry_run else ""
    typer.echo(
        f"{out['request_id']} {out['status']}: matched {out['matched']:,}, {verb}tagged "
        f"{out['tagged']:,}, {verb}untagged {out['untagged']:,}, already {out['already']:,}, "
        f"pinned {out['pinned']:,}, failed {out['failed']:,}"
    )


PersonaOpt = Annotated[str | None, typer.Option(help="Persona key.")]
ExprOpt = Annotated[str | None, typer.Option(help="A condition in the criteria language.")]
CriterionOpt = Annotated[str | None, typer.Option(help="A stored criterion (newest version).")]
ContactsOpt = Annotated[
    Path | None, typer.Option(help="A file of contact ids (one a line, or CSV with contact_id).")
]
AsOfOpt = Annotated[str | None, typer.Option("--as-of", help="ISO-8601 (default: now).")]
DryRunOpt = Annotated[bool, typer.Option("--dry-run", help="Count only; change nothing.")]
EngineOpt = Annotated[str, typer.Option(help="Engine that computes the matches.")]
RequestIdOpt = Annotated[str | None, typer.Option(help="Idempotency key (default: generated).")]


def _adhoc_command(action: Action, doc: str) -> Any:
    def command(
        persona: PersonaOpt = None,
        expr: ExprOpt = None,
        criterion: CriterionOpt = None,
        contacts: ContactsOpt = None,
        as_of: AsOfOpt = None,
        dry_run: DryRunOpt = False,
        engine: EngineOpt = "local",
        request_id: RequestIdOpt = None,
        as_json: JsonOpt = False,
    ) -> None:
        _run(
            action, persona, expr, criterion, contacts, as_of, dry_run, engine, request_id, as_json
        )

    command.__doc__ = doc
    return command


app.command("tag")(
    _adhoc_command(
        Action.TAG, "Tag everyone who matches (or an explicit list) with a persona, once."
    )
)
app.command("untag")(
    _adhoc_command(
        Action.UNTAG, "Remove a persona from everyone who matches (or an explicit list), once."
    )
)


@app.command()
def pin(
    persona: Annotated[str, typer.Argument(help="Persona key.")],
    contact_id: Annotated[str, typer.Argument(help="Contact id.")],
    pin_in: Annotated[bool, typer.Option("--in", help="Always hold the persona.")] = False,
    pin_out: Annotated[bool, typer.Option("--out", help="Never hold the persona.")] = False,
    reason: Annotated[str | None, typer.Option(help="Why (kept in the log).")] = None,
    as_json: JsonOpt = False,
) -> None:
    """Pin a contact in or out of a persona; rules never override a pin."""
    from personatag.memberships.pins import pin as run_pin

    if pin_in == pin_out:
        raise InputError("give exactly one of --in or --out")
    kind = PinKind.IN if pin_in else PinKind.OUT
    result = run_pin(store(), persona, contact_id, kind, actor=actor(), reason=reason)
    if as_json:
        emit(result)
    else:
        typer.echo(f"{contact_id} pinned {kind.value} of {persona}")


@app.command()
def unpin(
    persona: Annotated[str, typer.Argument(help="Persona key.")],
    contact_id: Annotated[str, typer.Argument(help="Contact id.")],
    as_json: JsonOpt = False,
) -> None:
    """Remove a pin; rules decide again from the next run."""
    from personatag.memberships.pins import unpin as run_unpin

    result = run_unpin(store(), persona, contact_id, actor=actor())
    if as_json:
        emit(result)
    else:
        typer.echo(f"{contact_id} unpinned from {persona} (holds it: {result['holds']})")


@contact_app.command("set")
def contact_set(
    contact_id: str,
    assignments: Annotated[
        list[str], typer.Argument(help="field=value ... (empty value: NULL; lists ';'-separated)")
    ],
    create: Annotated[
        bool, typer.Option("--create", help="Create the contact if the id is new.")
    ] = False,
    as_json: JsonOpt = False,
) -> None:
    """Update one contact's fields (ongoing criteria follow within a second)."""
    from personatag.contacts import parse_assignments, set_contact

    result = set_contact(
        store(), contact_id, parse_assignments(assignments), actor=actor(), create=create
    )
    if as_json:
        emit(result)
    else:
        verb = "created" if result["created"] else "updated"
        typer.echo(f"{contact_id} {verb}: {', '.join(result['changed'])}")


@contact_app.command("add-read")
def contact_add_read(
    contact_id: str,
    publication_id: str,
    at: Annotated[str | None, typer.Option(help="When (ISO-8601; default now).")] = None,
    as_json: JsonOpt = False,
) -> None:
    """Record that a contact read a publication."""
    from personatag.contacts import add_events
    from personatag.domain import utcnow

    when = as_of_option(at, "--at") or utcnow()
    result = add_events(store(), contact_id, reads=[(publication_id, when)])
    if as_json:
        emit(result)
    else:
        typer.echo(f"{contact_id}: {result['reads']} read recorded")


@contact_app.command("add-login")
def contact_add_login(
    contact_id: str,
    at: Annotated[str | None, typer.Option(help="When (ISO-8601; default now).")] = None,
    as_json: JsonOpt = False,
) -> None:
    """Record that a contact logged in."""
    from personatag.contacts import add_events
    from personatag.domain import utcnow

    when = as_of_option(at, "--at") or utcnow()
    result = add_events(store(), contact_id, logins=[when])
    if as_json:
        emit(result)
    else:
        typer.echo(f"{contact_id}: {result['logins']} login recorded")


@contact_app.command("show")
def contact_show(contact_id: str, as_json: JsonOpt = False) -> None:
    """Show a contact: attributes, personas with source and since, recent history."""
    from personatag.contacts import show_contact

    data = show_contact(store(), contact_id)
    if as_json:
        emit(data)
        return
    typer.echo(f"contact {contact_id}")
    for k, v in data["attributes"].items():
        typer.echo(f"  {k:<16} {v if v is not None else '-'}")
    typer.echo("personas:")
    for p in data["personas"]:
        srcs = "; ".join(
            f"{s['source']}"
            + (f" {s['criterion']}" if s["criterion"] else "")
            + (f" {s['request_id']}" if s["request_id"] else "")
            + f" since {s['since']}"
            for s in p["sources"]
        )
        typer.echo(f"  {p['persona']:<28} {srcs}")
    for pn in data["pins"]:
        typer.echo(f"  pin {pn['pin']} {pn['persona']} by {pn['by']} at {pn['at']}")
    typer.echo("history:")
    for e in data["log"]:
        by = f" by {e['by']}" if e["by"] else ""  # None: a criterion or request did it
        typer.echo(f"  {e['at']} {e['change']:<5} {e['persona']}{by}: {e['reason']}")


# -- the request pipeline ------------------------------------------------------

jobs_app = typer.Typer(help="List, inspect and cancel jobs.", no_args_is_help=True)
app.add_typer(jobs_app, name="jobs")


def buckets() -> Any:
    from personatag.buckets import open_buckets

    return open_buckets(settings())


@app.command()
def submit(
    file: Annotated[Path, typer.Argument(help="A request file (.json or .csv).")],
    wait: Annotated[bool, typer.Option("--wait", help="Wait for the result.")] = False,
    timeout: Annotated[float, typer.Option(min=0, help="Seconds to wait with --wait.")] = 600,
    as_json: JsonOpt = False,
) -> None:
    """Validate a request file and put it in the requests bucket for the dispatcher."""
    if settings().token:
        from personatag.cli_remote import remote_submit

        answer = remote_submit(file, wait, timeout)
    else:
        from personatag.requests.submit import submit_file, wait_for_result

        try:
            data = file.read_bytes()
        except OSError as exc:
            raise InputError(f"cannot read {file}: {exc.strerror}") from None
        b = buckets()
        answer = submit_file(b, data, name=file.name)
        if wait:
            answer = wait_for_result(b, store(), answer, timeout=timeout)
    if not wait:
        if as_json:
            emit(answer)
        else:
            typer.echo(f"submitted {answer['request_id']} as {answer['key']}")
        return
    summary = answer
    if as_json:
        emit(summary)
    else:
        c = summary.get("counts", {})
        typer.echo(
            f"{summary['request_id']} {summary['status']}: matched {c.get('matched', 0):,}, "
            f"tagged {c.get('tagged', 0):,}, untagged {c.get('untagged', 0):,}, "
            f"failed {c.get('failed', 0):,}"
            + (f" ({summary['error']})" if summary.get("error") else "")
        )
    if summary["status"] in ("failed", "cancelled"):
        raise typer.Exit(1)


@app.command()
def dispatcher(
    workers: Annotated[int | None, typer.Option(min=1, help="Jobs run at once.")] = None,
    deadline: Annotated[float | None, typer.Option(min=0.1, help="Seconds a job may run.")] = None,
    poll: Annotated[float | None, typer.Option(min=0.05, help="Seconds between scans.")] = None,
    once: Annotated[
        bool, typer.Option("--once", help="Scan once, run what is there, exit.")
    ] = False,
    metrics_port: Annotated[
        int | None,
        typer.Option(min=0, max=65535, help="Port for /metrics and /healthz (0: any free one)."),
    ] = None,
    log_json: Annotated[
        bool, typer.Option("--log-json", help="Log JSON lines (with request ids) on stderr.")
    ] = False,
) -> None:
    """Run the dispatcher: claim request files from the requests bucket and run them."""
    import signal
    import threading

    from personatag.logs import configure_logging
    from personatag.metrics import start_metrics_server, stop_metrics_server
    from personatag.requests.dispatcher import Dispatcher

    configure_logging(logging.DEBUG if STATE.debug else logging.INFO, json=log_json)

    d = Dispatcher(
        store(), buckets(), settings(), workers=workers, deadline_s=deadline, poll_s=poll
    )
    if once:
        waiting = d.run_once()
        d.close()
        typer.echo(f"dispatcher: {d.stats.claimed} claimed, finished {d.stats.finished}")
        for key, why in waiting.items():
            typer.echo(f"dispatcher: {key} not run: {why} in another dispatcher; run again later")
        for key, why in d.stats.deferred.items():
            typer.echo(f"dispatcher: {key} not run: {why}; run again later")
        if d.stats.finished.get("results_failed"):
            typer.echo(
                f"dispatcher: {d.stats.finished['results_failed']} file(s) finished but their "
                "result files could not be written; the next run writes them"
            )
        return
    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.set())
    s = settings()
    port = s.metrics_port if metrics_port is None else metrics_port
    served = start_metrics_server(port, s.metrics_host)
    typer.echo(f"dispatcher {d.owner} watching {d.buckets['requests'].url('')}", err=True)
    typer.echo(f"metrics on http://{s.metrics_host}:{served.port}/metrics", err=True)
    try:
        d.serve(stop)
    finally:
        stop_metrics_server(served.server)


@app.command()
def deploy(
    prop: Annotated[
        list[str] | None,
        typer.Option("--property", help="An engine property KEY=VALUE (repeatable)."),
    ] = None,
    rollback: Annotated[
        bool, typer.Option("--rollback", help="Make the previous version active again.")
    ] = False,
    list_: Annotated[bool, typer.Option("--list", help="List job bundles.")] = False,
    as_json: JsonOpt = False,
) -> None:
    """Build and activate a job bundle (the code and properties engines run)."""
    from personatag.engines.flink import deploy as dp

    if sum([bool(prop), rollback, list_]) > 1:
        raise InputError("give at most one of --property, --rollback or --list")
    b = buckets()
    if list_:
        bundles = [x.to_json() for x in dp.list_bundles(b)]
        if as_json:
            emit({"bundles": bundles})
            return
        for x in bundles:
            mark = "*" if x.get("active") else " "
            typer.echo(f"{mark} {x['version']:<40} {x.get('state', ''):<9} {x.get('checksum', '')}")
        return
    if rollback:
        done = dp.rollback(b, actor=actor())
    else:
        done = dp.deploy(b, properties=dp.parse_properties(prop or []), actor=actor())
    if as_json:
        emit(done.to_json())
    else:
        verb = "rolled back to" if rollback else "deployed"
        typer.echo(f"{verb} {done.version} (sha256 {done.checksum})")


def _job_line(j: dict[str, Any]) -> str:
    from personatag.jobs.progress import describe

    c = j["counts"] or {}
    took = f"{j['seconds']}s" if j["seconds"] is not None else "-"
    line = (
        f"{j['id']:>6} {j['request_id']:<36} {j['status']:<10} {j['engine']:<6} {took:>9} "
        f"tagged {c.get('tagged', 0):,} untagged {c.get('untagged', 0):,} "
        f"failed {c.get('failed', 0):,}"
    )
    if j["status"] == "running" and j.get("progress"):
        line += f"  [{describe(j['progress'], j['status'])}]"
    return line + (f"  {j['error']}" if j["error"] else "")


@jobs_app.command("list")
def jobs_list(
    status: Annotated[str | None, typer.Option(help="Only jobs with this status.")] = None,
    limit: Annotated[int, typer.Option(min=1, help="At most this many.")] = 50,
    as_json: JsonOpt = False,
) -> None:
    """List jobs, newest first."""
    if settings().token:
        from personatag.cli_remote import remote_jobs_list

        found = remote_jobs_list(status, limit)
    else:
        from personatag.jobs.repository import list_jobs

        found = list_jobs(store(), status=status, limit=limit)
    if as_json:
        emit({"jobs": found})
        return
    for j in found:
        typer.echo(_job_line(j))


@jobs_app.command("show")
def jobs_show(
    ref: Annotated[str, typer.Argument(metavar="ID", help="Job number or request id.")],
    as_json: JsonOpt = False,
) -> None:
    """Show one job: status, timings, counts, error."""
    if settings().token:
        from personatag.cli_remote import remote_jobs_show

        j = remote_jobs_show(ref)
    else:
        from personatag.jobs.repository import get_job

        j = get_job(store(), ref)
    if as_json:
        emit(j)
        return
    from personatag.jobs.progress import describe

    for k, v in j.items():
        if k == "progress" and v:
            v = f"{describe(v, j['status'])} (at {v['updated_at']})"
        typer.echo(f"{k:<15} {v if v is not None else '-'}")


@jobs_app.command("cancel")
def jobs_cancel(
    ref: Annotated[str, typer.Argument(metavar="ID", help="Job number or request id.")],
    as_json: JsonOpt = False,
) -> None:
    """Cancel a queued job, or ask a running one to stop."""
    if settings().token:
        from personatag.cli_remote import remote_jobs_cancel

        j = remote_jobs_cancel(ref)
    else:
        from personatag.jobs.repository import cancel_job

        j = cancel_job(store(), ref)
    if as_json:
        emit(j)
    else:
        typer.echo(f"job {j['id']} ({j['request_id']}): {j['status']}")


@app.command()
def status(as_json: JsonOpt = False) -> None:
    """Queue and recent jobs at a glance."""
    if settings().token:
        from personatag.cli_remote import remote_status

        out = remote_status()
    else:
        from personatag.jobs.repository import list_jobs

        st = store()
        out = {
            "queued": len(list_jobs(st, status="queued", limit=1000)),
            "running": len(list_jobs(st, status="running", limit=1000)),
            "recent": list_jobs(st, limit=10),
        }
    if as_json:
        emit(out)
        return
    typer.echo(f"queued {out['queued']}, running {out['running']}")
    for j in out["recent"]:
        typer.echo(_job_line(j))


def main() -> None:
    debug = "--debug" in sys.argv[1:3] or os.environ.get("PERSONATAG_DEBUG") == "1"
    try:
        rv = app(standalone_mode=False)
    except typer.Exit as exc:
        sys.exit(exc.exit_code)
    except typer.TyperException as exc:  # usage errors: wrong option, missing argument
        ctx = getattr(exc, "ctx", None)
        where = f" (see `{ctx.command_path} --help`)" if ctx is not None else ""
        message = " ".join(exc.format_message().split())
        typer.echo(f"error: {message}{where}", err=True)
        sys.exit(exc.exit_code)
    except (typer.Abort, KeyboardInterrupt):
        typer.echo("aborted", err=True)
        sys.exit(130)
    except PersonatagError as exc:
        if debug:
            raise
        typer.echo(f"error: {exc}", err=True)
        sys.exit(1)
    except DBAPIError as exc:
        if debug:
            raise
        typer.echo(f"error: the store failed: {str(exc.orig).strip().splitlines()[0]}", err=True)
        sys.exit(1)
    except Exception as exc:
        if debug:
            raise
        typer.echo(
            f"error: unexpected {type(exc).__name__}: {exc} (run with --debug for details)",
            err=True,
        )
        sys.exit(1)
    sys.exit(rv if isinstance(rv, int) else 0)


# Command groups in their own modules register themselves on `app`.
import personatag.cli_accounts  # noqa: E402
import personatag.cli_events  # noqa: E402
import personatag.cli_feed  # noqa: E402
import personatag.cli_feed_eval  # noqa: E402
import personatag.cli_flink  # noqa: E402
import personatag.cli_ops  # noqa: E402
import personatag.cli_stream  # noqa: E402
import personatag.cli_web  # noqa: E402

if __name__ == "__main__":
    # Under `python -m personatag.cli` this file runs as __main__, a second copy
    # of the module: the command groups registered on personatag.cli's app.
    import personatag.cli

    personatag.cli.main()
