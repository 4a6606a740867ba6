"""`personatag webhook ...` and `personatag export-log`: membership changes for
other systems (see docs/events.md). Webhook changes are recorded in the audit
log with source `cli`."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated, Any

import typer

from personatag.cli.common import JsonOpt, actor, emit, settings, store

# Commands at the top level (joined into the root app without a name).
app = typer.Typer()
webhook_app = typer.Typer(
    help="Send membership changes to other systems (signed HTTP POSTs).", no_args_is_help=True
)

WebhookId = Annotated[int, typer.Argument(metavar="ID", help="The webhook's id (webhook list).")]


def _hook_line(h: dict[str, Any]) -> str:
    state = "enabled" if h["enabled"] else "disabled"
    personas = ",".join(h["personas"]) if h["personas"] else "*"
    cursor = str(h["cursor_seq"]) + (f"+{h['cursor_part']}" if h["cursor_part"] is not None else "")
    line = (
        f"{h['id']:>5} {state:<8} {h['url']}  personas {personas}  cursor {cursor}  "
        f"attempts {h['attempts']}  dead letters {h['dead_letters']}"
    )
    if h["last_error"]:
        line += f"  last error: {h['last_error']}"
    return line


@webhook_app.command("add")
def webhook_add(
    url: str,
    persona: Annotated[
        list[str] | None,
        typer.Option("--persona", help="Only changes of this persona (repeat for more)."),
    ] = None,
    from_start: Annotated[
        bool, typer.Option("--from-start", help="Deliver the whole log, not only new changes.")
    ] = False,
    as_json: JsonOpt = False,
) -> None:
    """Register a webhook; its signing secret is printed once."""
    from personatag.membership_events.webhooks import add_webhook

    hook, secret = add_webhook(
        store(), url, personas=persona or None, from_start=from_start, actor=actor()
    )
    if as_json:
        emit(hook.to_json() | {"secret": secret})
        return
    typer.echo(f"webhook {hook.pk} added: {hook.url} (from seq {hook.cursor_seq})")
    typer.echo(f"secret (shown once): {secret}")


@webhook_app.command("list")
def webhook_list(as_json: JsonOpt = False) -> None:
    """Webhooks with cursor, attempts, last error and dead letters (never the secret)."""
    from personatag.membership_events.webhooks import list_webhooks

    hooks = [h.to_json() for h in list_webhooks(store())]
    if as_json:
        emit({"webhooks": hooks})
        return
    for h in hooks:
        typer.echo(_hook_line(h))


@webhook_app.command("remove")
def webhook_remove(webhook_id: WebhookId) -> None:
    """Delete a webhook and its dead letters."""
    from personatag.membership_events.webhooks import remove_webhook

    hook = remove_webhook(store(), webhook_id, actor=actor())
    typer.echo(f"webhook {hook.pk} ({hook.url}) removed")


@webhook_app.command("disable")
def webhook_disable(webhook_id: WebhookId) -> None:
    """Stop delivering to a webhook; its cursor is kept."""
    from personatag.membership_events.webhooks import set_enabled

    hook = set_enabled(store(), webhook_id, False, actor=actor())
    typer.echo(f"webhook {hook.pk} disabled")


@webhook_app.command("enable")
def webhook_enable(webhook_id: WebhookId) -> None:
    """Deliver to a webhook again, from its cursor, trying at once."""
    from personatag.membership_events.webhooks import set_enabled

    hook = set_enabled(store(), webhook_id, True, actor=actor())
    typer.echo(f"webhook {hook.pk} enabled")


@webhook_app.command("dead-letters")
def webhook_dead_letters(
    webhook_id: Annotated[
        int | None, typer.Argument(metavar="[ID]", help="Only this webhook's.")
    ] = None,
    as_json: JsonOpt = False,
) -> None:
    """Batches given up on after the last attempt (redelivered ones too)."""
    from personatag.membership_events.webhooks import list_dead_letters

    letters = [d.to_json() for d in list_dead_letters(store(), webhook_id)]
    if as_json:
        emit({"dead_letters": letters})
        return
    for d in letters:
        state = f"redelivered {d['redelivered_at']}" if d["redelivered_at"] else "pending"
        typer.echo(
            f"{d['id']:>5} webhook {d['webhook']}  seq {d['first_seq']}-{d['last_seq']}  "
            f"{d['events']} events  {d['attempts']} attempts  failed {d['failed_at']}  "
            f"{state}  {d['last_error'] or ''}".rstrip()
        )


@webhook_app.command("redeliver")
def webhook_redeliver(
    dead_letter_id: Annotated[int, typer.Argument(metavar="DEAD_LETTER_ID")],
) -> None:
    """Send a dead letter again, once, now (exit 1 if the receiver refuses)."""
    from personatag.membership_events.delivery import redeliver

    letter = redeliver(store(), settings(), dead_letter_id, actor=actor())
    typer.echo(
        f"dead letter {letter['id']} redelivered to webhook {letter['webhook']} "
        f"(seq {letter['first_seq']}-{letter['last_seq']})"
    )


@webhook_app.command("deliver")
def webhook_deliver(as_json: JsonOpt = False) -> None:
    """One delivery pass over the due webhooks (for cron and tests)."""
    from personatag.membership_events.delivery import WebhookWorker

    counts = WebhookWorker(store(), settings()).deliver_pass(settle_wait_s=10.0)
    out = {
        "delivered": counts.delivered,
        "failed": counts.failed,
        "dead_lettered": counts.dead_lettered,
        "events": counts.events,
    }
    if as_json:
        emit(out)
        return
    typer.echo(
        f"{counts.delivered} batches delivered ({counts.events} events), "
        f"{counts.failed} failed, {counts.dead_lettered} dead-lettered"
    )


@app.command("export-log")
def export_log(
    persona: Annotated[str | None, typer.Option(help="Only this persona's changes.")] = None,
    since: Annotated[
        int, typer.Option(min=0, help="Start after this log seq (exclusive; resume point).")
    ] = 0,
    until: Annotated[int | None, typer.Option(min=0, help="Stop at this seq (inclusive).")] = None,
    limit: Annotated[
        int | None,
        typer.Option(min=1, help="At most this many log entries (a bulk entry is one)."),
    ] = None,
    out: Annotated[Path | None, typer.Option("--out", help="Write here (default: stdout).")] = None,
) -> None:
    """The membership log as JSON lines, one per contact change, in seq order."""
    from personatag.membership_events.export import ExportProgress, export_lines

    progress = ExportProgress()
    lines = export_lines(
        store(), persona=persona, since=since, until=until, limit=limit, progress=progress
    )
    if out is None:
        sys.stdout.writelines(lines)
        sys.stdout.flush()
    else:
        with out.open("w", encoding="utf-8") as fh:
            fh.writelines(lines)
    resume = progress.last_seq if progress.last_seq is not None else since
    typer.echo(
        f"{progress.events} events from {progress.entries} log entries; "
        f"resume with --since {resume}",
        err=True,
    )
