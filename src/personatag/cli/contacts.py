"""`personatag contact ...`: inspect and update contacts."""

from __future__ import annotations

from typing import Annotated

import typer

from personatag.cli.common import JsonOpt, actor, as_of_option, emit, store

app = typer.Typer(help="Inspect and update contacts.", no_args_is_help=True)


@app.command("set")
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


@app.command("add-read")
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


@app.command("add-login")
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


@app.command("search")
def contact_search(
    query: Annotated[
        str,
        typer.Argument(
            help="A contact id (whole, any case), or the start of a name, email or firm."
        ),
    ],
    limit: Annotated[int, typer.Option(help="At most this many (1-100).")] = 20,
    offset: Annotated[int, typer.Option(help="Skip this many (paging; at most 10,000).")] = 0,
    as_json: JsonOpt = False,
) -> None:
    """Find contacts: id matches first, then names, emails and firms by prefix."""
    from personatag.contacts import search_contacts

    result = search_contacts(store(), query, limit=limit, offset=offset)
    if as_json:
        emit(result)
        return
    if not result["items"]:
        typer.echo(f"no contact matches {result['query']!r}")
        return
    for hit in result["items"]:
        personas = ",".join(hit["personas"]) or "-"
        typer.echo(
            f"{hit['id']:<14} {hit['name'] or '-':<28} {hit['email'] or '-':<36} "
            f"{hit['firm'] or '-':<28} {hit['region'] or '-':<6} {personas}"
        )
    if result["next_offset"] is not None:
        typer.echo(f"more: --offset {result['next_offset']}")


@app.command("show")
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
