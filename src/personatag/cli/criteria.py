"""`personatag criterion ...`: create, edit and list criteria (versioned)."""

from __future__ import annotations

from typing import Annotated, Any

import typer

from personatag.cli.common import JsonOpt, actor, audit, emit, store
from personatag.times import iso

app = typer.Typer(help="Create, edit and list criteria (versioned).", no_args_is_help=True)


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


@app.command("add")
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
    audit("criterion.add", c.name, {"version": c.version, "expr": c.expr})
    if as_json:
        emit(_criterion_json(c))
    else:
        typer.echo(f"criterion {c.label} added: {c.expr}")


@app.command("edit")
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
    audit("criterion.edit", c.name, {"version": c.version, "expr": c.expr})
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


@app.command("pause")
def criterion_pause(name: str, as_json: JsonOpt = False) -> None:
    """Pause an ongoing criterion: the stream skips it, its memberships stay."""
    _criterion_status(name, "pause", as_json)


@app.command("resume")
def criterion_resume(name: str, as_json: JsonOpt = False) -> None:
    """Resume a paused ongoing criterion: it is backfilled again and swapped in."""
    _criterion_status(name, "resume", as_json)


@app.command("retire")
def criterion_retire(name: str, as_json: JsonOpt = False) -> None:
    """Retire an ongoing criterion: its memberships are removed (exits logged)."""
    _criterion_status(name, "retire", as_json)


@app.command("list")
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


@app.command("show")
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


@app.command("diff")
def criterion_diff(
    name: str,
    from_: Annotated[
        int | None, typer.Option("--from", help="Older version (default: the one before --to).")
    ] = None,
    to: Annotated[
        int | None, typer.Option("--to", help="Newer version (default: the newest).")
    ] = None,
    as_json: JsonOpt = False,
) -> None:
    """Compare two versions: the text, and whom each catches now (what --to would move)."""
    from personatag.definitions.criteria import criterion_versions
    from personatag.errors import NotFoundError
    from personatag.tagging import versions as vs

    st = store()
    with st.read() as conn:
        found = {c.version: c for c in criterion_versions(conn, st, name)}
    new = max(found) if to is None else to
    old = max(new - 1, 1) if from_ is None else from_
    for v in (new, old):
        if v not in found:
            have = ", ".join(map(str, sorted(found)))
            raise NotFoundError(f"criterion {name!r} has no version {v} (it has {have})")
    text = vs.text_diff(found[old].expr, found[new].expr)
    m = vs.membership_diff(st, vs.Side.of(found[old]), vs.Side.of(found[new]))
    if as_json:
        emit({"name": name, "from": old, "to": new, "text": text, "membership": m})
        return
    marks = {"same": "{}", "del": "[-{}-]", "add": "{{+{}+}}"}
    typer.echo(
        f"{name}@{old} -> {name}@{new}: " + "".join(marks[p["op"]].format(p["text"]) for p in text)
    )
    typer.echo(
        f"matches now: {m['old_count']:,} -> {m['new_count']:,} "
        f"(+{m['gained']['count']:,} only @{new}, -{m['lost']['count']:,} only @{old})"
    )
    moves = [f"would enter: {m['would_enter']:,}"] if m["would_enter"] is not None else []
    if m["would_exit"] is not None:
        moves.append(f"would exit: {m['would_exit']:,}")
    if moves:
        typer.echo(", ".join(moves))
