"""`personatag preview|tag|untag|pin|unpin`: ad hoc tagging and pins."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer

from personatag.cli.client import open_client
from personatag.cli.common import JsonOpt, actor, as_of_option, audit, emit, settings, store
from personatag.domain import Action, ExitPolicy, JobStatus, Mode, PinKind
from personatag.errors import InputError

# Commands at the top level (joined into the root app without a name).
app = typer.Typer()


@app.command()
def preview(
    expr: Annotated[str, typer.Option(help="The condition to preview.")],
    persona: Annotated[
        str | None, typer.Option(help="Compare with this persona's members.")
    ] = None,
    as_of: Annotated[str | None, typer.Option("--as-of", help="ISO-8601 (default: now).")] = None,
    sample: Annotated[int, typer.Option(min=0, help="How many sample ids.")] = 10,
    action: Annotated[
        Action, typer.Option(help="Count as this action would apply it.")
    ] = Action.TAG,
    mode: Annotated[Mode, typer.Option(help="adhoc, or ongoing (with --exit).")] = Mode.ADHOC,
    exit_policy: Annotated[
        ExitPolicy, typer.Option("--exit", help="An ongoing criterion's exit policy.")
    ] = ExitPolicy.KEEP,
    engine: Annotated[
        str | None,
        typer.Option(
            help="columnar (numpy over the columnar copy) or local (SQL in the store); "
            "default: the batch_engine setting."
        ),
    ] = None,
    as_json: JsonOpt = False,
) -> None:
    """Count whom a criterion catches now, with a sample and enter/exit counts."""
    with open_client(settings()) as client:
        result = client.preview(
            expr,
            persona=persona,
            as_of=as_of,
            sample=sample,
            action=action.value,
            mode=mode.value,
            exit_policy=exit_policy.value,
            engine=engine,
        )
    if as_json:
        emit(result)
        return
    # An action that cannot add (or remove) anyone has no such count to print.
    parts = [f"matches: {result['count']:,}"]
    for key, label in (("would_enter", "would enter"), ("would_exit", "would exit")):
        if result[key] is not None:
            parts.append(f"{label}: {result[key]:,}")
    typer.echo("  ".join(parts))
    typer.echo("sample: " + ", ".join(result["sample"]))
    if result.get("hint"):
        typer.echo(f"hint: {result['hint']}")


def _run(
    action: Action,
    persona: str | None,
    expr: str | None,
    criterion: str | None,
    contacts: Path | None,
    as_of: str | None,
    dry_run: bool,
    engine: str | None,
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
            emit(
                {
                    "request_id": exc.request_id,
                    "status": JobStatus.FAILED.value,
                    "error": exc.reason,
                }
            )
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
EngineOpt = Annotated[
    str | None,
    typer.Option(
        help="Engine that computes the matches: columnar, local (SQL in the store), flink, "
        "or a plugin's (default: the batch_engine setting, columnar)."
    ),
]
RequestIdOpt = Annotated[str | None, typer.Option(help="Idempotency key (default: generated).")]


def _adhoc_command(action: Action, doc: str) -> Any:
    def command(
        persona: PersonaOpt = None,
        expr: ExprOpt = None,
        criterion: CriterionOpt = None,
        contacts: ContactsOpt = None,
        as_of: AsOfOpt = None,
        dry_run: DryRunOpt = False,
        engine: EngineOpt = None,
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
    audit("pin", contact_id, {"persona": persona, "kind": kind.value, "reason": reason})
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
    audit("unpin", contact_id, {"persona": persona})
    if as_json:
        emit(result)
    else:
        typer.echo(f"{contact_id} unpinned from {persona} (holds it: {result['holds']})")
