"""`personatag persona ...`: create, list and inspect personas."""

from __future__ import annotations

import contextlib
import itertools
import json
import sys
from typing import Annotated, Any

import typer

from personatag.cli.common import JsonOpt, actor, audit, emit, settings, store
from personatag.times import iso

app = typer.Typer(help="Create, list and inspect personas.", no_args_is_help=True)


@app.command("add")
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
    audit("persona.add", p.key, {"name": p.name, "category": p.category})
    typer.echo(f"persona {p.key} added")


@app.command("list")
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


@app.command("show")
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


@app.command("members")
def persona_members(
    key: str,
    as_json: JsonOpt = False,
    limit: Annotated[int | None, typer.Option(min=0, help="At most this many.")] = None,
) -> None:
    """List the ids of the contacts holding a persona (streamed)."""
    from personatag.definitions.personas import get_persona
    from personatag.memberships.persona_view import iter_members

    st = store()
    with st.read() as conn:
        p = get_persona(conn, st, key)
    out = sys.stdout
    with contextlib.closing(iter_members(st, p.pk)) as rows:
        ids = (row[0] for row in (rows if limit is None else itertools.islice(rows, limit)))
        if as_json:
            out.write('{"members": [')
            for i, cid in enumerate(ids):
                out.write(("," if i else "") + json.dumps({"id": cid}))
            out.write("]}\n")
        else:
            for cid in ids:
                out.write(cid + "\n")


@app.command("stats")
def persona_stats(
    keys: Annotated[list[str], typer.Argument(help="One or more persona keys.")],
    as_json: JsonOpt = False,
    days: Annotated[
        int, typer.Option(min=0, max=3660, help="Also the size per UTC day over this many days.")
    ] = 0,
) -> None:
    """Sizes and overlaps of personas (A and B, A not B, A or B, the pairwise
    matrix) from the persona sets, and with --days the size over time."""
    from personatag.engines.columnar.sets import current_sets
    from personatag.engines.columnar.sets_stats import persona_stats as compute
    from personatag.errors import NotFoundError

    try:
        data = compute(current_sets(store(), settings().data_dir), keys, days=days)
    except NotFoundError as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(2) from None
    if as_json:
        emit(data)
        return
    width = max(len(k) for k in keys)
    for p in data["personas"]:
        typer.echo(f"{p['key']:<{width}}  {p['size']:>12,}  {p['name']}")
    for pr in data["pairs"]:
        a, b = pr["a"], pr["b"]
        typer.echo(
            f"{a} and {b}: {pr['both']:,}  {a} not {b}: {pr['a_not_b']:,}  "
            f"{b} not {a}: {pr['b_not_a']:,}  {a} or {b}: {pr['either']:,}  "
            f"jaccard: {pr['jaccard']:.3f}"
        )
    if len(keys) > 2:
        typer.echo(f"in all {len(keys)}: {data['all']:,}  in any: {data['any']:,}")
    history = data["history"]
    if history:
        typer.echo("day         " + "  ".join(f"{k:>12}" for k in keys))
        for i, day in enumerate(history["days"]):
            sizes = "  ".join(f"{history['size'][k][i]:>12,}" for k in keys)
            typer.echo(f"{day}  {sizes}")


@app.command("edit")
def persona_edit(
    key: str,
    name: Annotated[str | None, typer.Option(help="New display name.")] = None,
    category: Annotated[str | None, typer.Option(help="New category.")] = None,
    description: Annotated[str | None, typer.Option(help="New description ('' clears it).")] = None,
) -> None:
    """Change a persona's name, category or description (the key stays)."""
    from personatag.definitions.personas import KEEP, edit_persona

    if name is None and category is None and description is None:
        raise typer.BadParameter("give at least one of --name, --category, --description")
    edit_persona(
        store(),
        key,
        name=name,
        category=category,
        description=KEEP if description is None else description,
        actor=actor(),
    )
    typer.echo(f"persona {key} edited")


@app.command("restore")
def persona_restore(key: str) -> None:
    """Restore an archived persona: tagging into it is allowed again."""
    from personatag.definitions.personas import restore_persona

    restore_persona(store(), key, actor=actor())
    typer.echo(f"persona {key} restored")


@app.command("archive")
def persona_archive(key: str) -> None:
    """Archive a persona: no more tagging; its members and history are kept."""
    from personatag.definitions.archive import archive_persona

    archive_persona(store(), key)
    typer.echo(f"persona {key} archived")
