"""`personatag evaluate-feed`: the feed model against baselines on a generated population."""

from __future__ import annotations

from typing import Annotated

import typer

from personatag.cli.common import JsonOpt, emit, settings

# Commands at the top level (joined into the root app without a name).
app = typer.Typer()


@app.command("evaluate-feed")
def evaluate_feed(
    contacts: Annotated[int, typer.Option(help="Contacts to generate.")] = 20_000,
    weeks: Annotated[int, typer.Option(help="Weekly splits (test weeks).")] = 8,
    persona_share: Annotated[
        float, typer.Option(help="0-1: how much of a reader's interests personas explain.")
    ] = 0.5,
    reports: Annotated[
        int | None,
        typer.Option(
            help="Publications to generate over the year (default: 1 per 1,000 contacts, "
            "200 to 20,000)."
        ),
    ] = None,
    seed: Annotated[int, typer.Option(help="Population and bootstrap seed.")] = 0,
    samples: Annotated[int, typer.Option(help="Bootstrap resamples.")] = 1000,
    store_url: Annotated[
        str | None,
        typer.Option(
            help="Evaluate on this store (generated with `personatag generate --end "
            "2025-06-30`; generated and tagged here if empty) instead of a temporary one."
        ),
    ] = None,
    as_json: JsonOpt = False,
) -> None:
    """Evaluate the feed model against baselines B0-B4 (HR@10, NDCG@10, coverage@10)."""
    from personatag.recommend.evaluate import format_table, run_evaluation

    summary = run_evaluation(
        contacts=contacts,
        reports=reports,
        weeks=weeks,
        persona_share=persona_share,
        seed=seed,
        samples=samples,
        store_url=store_url,
        settings=settings(),
        progress=lambda m: typer.echo(m, err=True),
    )
    if as_json:
        emit(summary)
    else:
        typer.echo(format_table(summary))
