"""`personatag init|import|generate` and `attribute ...`: the store and what goes in it."""

from __future__ import annotations

from enum import StrEnum
from pathlib import Path
from typing import Annotated

import typer

from personatag.cli.common import JsonOpt, actor, as_of_option, audit, emit, settings, store
from personatag.errors import InputError

# Commands at the top level (joined into the root app without a name).
app = typer.Typer()
attribute_app = typer.Typer(help="Declare custom contact attributes.", no_args_is_help=True)


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
    audit("attribute.add", name, {"type": type_, "description": description})
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
