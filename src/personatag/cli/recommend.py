"""`personatag feed`, `feed-rule ...` and `feed-precompute`: the reading feed
(see docs/feed.md). Rule changes are recorded in the audit log with source `cli`."""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path
from typing import Annotated, Any

import typer
from sqlalchemy import select

from personatag.cli.common import JsonOpt, actor, as_of_option, emit, settings, store
from personatag.times import iso

# Commands at the top level (joined into the root app without a name).
app = typer.Typer()
feed_rule_app = typer.Typer(
    help="Persona content rules for the feed: boosts, filters, pins, caps.", no_args_is_help=True
)


@app.command("feed")
def feed(
    contact_id: Annotated[str, typer.Argument(metavar="CONTACT_ID")],
    k: Annotated[int, typer.Option("--k", help="How many reports (1-100).")] = 10,
    as_of: Annotated[
        str | None, typer.Option("--as-of", help="ISO-8601; default now.", metavar="TS")
    ] = None,
    ranker: Annotated[
        str,
        typer.Option(
            "--ranker",
            help="ours (the default) or a baseline to compare with: b0 editions, b1 popular, "
            "b2 persona popular, b3 your coverage, b4 item-kNN.",
        ),
    ] = "ours",
    as_json: JsonOpt = False,
) -> None:
    """One contact's feed: unread reports published before as-of, best first, with reasons."""
    from personatag.recommend.service import feed_for

    result = feed_for(store(), contact_id, k, as_of_option(as_of), settings(), ranker=ranker)
    if as_json:
        emit(result)
        return
    by = f" ranked by {result['ranker']}" if "ranker" in result else ""
    typer.echo(f"feed of {result['contact']} as of {result['as_of']}{by}:")
    for n, item in enumerate(result["items"], 1):
        typer.echo(
            f"{n:>3}. {item['id']}  {item['title']}  [{item['series']}]  "
            f"score {item['score']:.3f}  - {item['reason']}"
        )
    if not result["items"]:
        typer.echo("  (nothing eligible)")


def _rule_line(r: dict[str, Any]) -> str:
    what = {
        "boost": lambda: f"boost {r['weight']:+g} where {r['expr']}",
        "filter": lambda: f"filter: only {r['expr']}",
        "pin": lambda: f"pin {r['publication']} until {r['expires_at'] or 'removed'}",
        "cap": lambda: f"cap {r['cap']} per series",
    }[r["kind"]]()
    return (
        f"{r['id']:>5} {r['persona']:<20} {what}  (by {r['created_by'] or '-'} {r['created_at']})"
    )


@feed_rule_app.command("add")
def feed_rule_add(
    persona: str,
    boost: Annotated[
        str | None, typer.Option("--boost", help="Boost reports matching EXPR.", metavar="EXPR")
    ] = None,
    weight: Annotated[
        float | None, typer.Option("--weight", help="The boost's weight (negative demotes).")
    ] = None,
    filter_: Annotated[
        str | None,
        typer.Option("--filter", help="Show holders only reports matching EXPR.", metavar="EXPR"),
    ] = None,
    pin: Annotated[
        str | None,
        typer.Option("--pin", help="Pin this publication first.", metavar="PUBLICATION_ID"),
    ] = None,
    expires: Annotated[
        str | None, typer.Option("--expires", help="When the pin ends (ISO-8601).", metavar="TS")
    ] = None,
    cap_per_series: Annotated[
        int | None,
        typer.Option("--cap-per-series", help="At most N reports of one series.", metavar="N"),
    ] = None,
    as_json: JsonOpt = False,
) -> None:
    """Add one rule to a persona: --boost EXPR --weight W | --filter EXPR |
    --pin PUBLICATION_ID [--expires TS] | --cap-per-series N."""
    from personatag.errors import InputError
    from personatag.recommend.rules import add_rule

    kinds = [
        name
        for name, given in (
            ("boost", boost is not None),
            ("filter", filter_ is not None),
            ("pin", pin is not None),
            ("cap", cap_per_series is not None),
        )
        if given
    ]
    if len(kinds) != 1:
        raise InputError(
            "give exactly one of --boost EXPR --weight W, --filter EXPR, "
            "--pin PUBLICATION_ID [--expires TS], --cap-per-series N"
        )
    if weight is not None and kinds[0] != "boost":
        raise InputError("--weight goes with --boost")
    if expires is not None and kinds[0] != "pin":
        raise InputError("--expires goes with --pin")
    rule = add_rule(
        store(),
        persona,
        kinds[0],
        expr=boost if boost is not None else filter_,
        weight=weight,
        publication=pin,
        expires_at=as_of_option(expires, "--expires"),
        cap=cap_per_series,
        actor=actor(),
    )
    if as_json:
        emit(rule.to_json())
        return
    typer.echo(f"feed rule {rule.id} added: {_rule_line(rule.to_json()).strip()}")


@feed_rule_app.command("list")
def feed_rule_list(
    persona: Annotated[str | None, typer.Argument()] = None, as_json: JsonOpt = False
) -> None:
    """Rules of one persona, or of every persona (expired pins are marked)."""
    from personatag.domain import utcnow
    from personatag.recommend.rules import list_rules

    rules = list_rules(store(), persona)
    if as_json:
        emit({"rules": [r.to_json() for r in rules]})
        return
    now = utcnow()
    for r in rules:
        typer.echo(_rule_line(r.to_json()) + ("  [expired]" if r.expired(now) else ""))
    if not rules:
        typer.echo("no feed rules")


@feed_rule_app.command("remove")
def feed_rule_remove(rule_id: Annotated[int, typer.Argument(metavar="RULE_ID")]) -> None:
    """Delete a rule; feeds follow on the next request."""
    from personatag.recommend.rules import remove_rule

    rule = remove_rule(store(), rule_id, actor=actor())
    typer.echo(f"feed rule {rule.id} of {rule.persona} removed")


@app.command("feed-precompute")
def feed_precompute(
    out: Annotated[
        Path | None, typer.Option("--out", help="Write one JSON line per contact here.")
    ] = None,
    k: Annotated[int, typer.Option("--k", help="Reports per contact (1-100).")] = 10,
    batch: Annotated[int, typer.Option("--batch", help="Contacts per step.")] = 100_000,
    workers: Annotated[
        int | None,
        typer.Option("--workers", min=1, help="Processes ranking at once (default: one per CPU)."),
    ] = None,
) -> None:
    """Every contact's feed now, with recommend_many; prints how long it took.

    Lines are {"contact", "as_of", "items": [{"id", "score", "reason"}]}.
    """
    from personatag.errors import InputError
    from personatag.recommend.model import FeedModel
    from personatag.recommend.rules import rules_for_model
    from personatag.recommend.service import check_k

    check_k(k)
    if batch < 1:
        raise InputError("--batch must be at least 1")
    from personatag.domain import utcnow

    st = store()
    started = time.perf_counter()
    model = FeedModel.build(st, utcnow(), settings())
    built = time.perf_counter() - started
    rules = rules_for_model(st, model.as_of)
    t = st.tables
    with st.read() as conn:
        pub_ids = {
            pk: pid for pk, pid in conn.execute(select(t.publications.c.pk, t.publications.c.id))
        }
        contacts = conn.execute(select(t.contacts.c.pk, t.contacts.c.id).order_by(t.contacts.c.pk))
        pairs = [(int(pk), str(cid)) for pk, cid in contacts]
    as_of = iso(model.as_of)
    sink = out.open("w", encoding="utf-8") if out is not None else None
    n = 0
    try:
        for start in range(0, len(pairs), batch):
            part = pairs[start : start + batch]
            feeds = model.recommend_all([pk for pk, _ in part], k, rules=rules, workers=workers)
            n += len(feeds)
            if sink is not None:
                lines = []
                for pk, cid in part:
                    items = [
                        {"id": pub_ids.get(i.publication_pk), "score": round(i.score, 6),
                         "reason": i.reason}
                        for i in feeds.get(pk, [])
                    ]  # fmt: skip
                    lines.append(json.dumps({"contact": cid, "as_of": as_of, "items": items}))
                sink.write("\n".join(lines) + "\n")
            print(f"  {n:,} of {len(pairs):,} feeds", file=sys.stderr, flush=True)
    finally:
        if sink is not None:
            sink.close()
    took = time.perf_counter() - started
    where = f" to {out}" if out is not None else ""
    typer.echo(
        f"precomputed {n:,} feeds{where} in {took:.1f} s "
        f"(model built in {built:.1f} s, ranking {took - built:.1f} s)"
    )
