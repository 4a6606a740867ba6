"""`personatag evaluate-feed`: the feed model against baselines on a generated population."""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Annotated

import typer

from personatag.cli import JsonOpt, app, emit, settings
from personatag.errors import InputError


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
    from sqlalchemy import func, select

    from personatag.feed.evaluate import END, evaluate, format_table, tag_personas
    from personatag.generate import generate
    from personatag.store import open_store

    if weeks < 1 or contacts < 1 or samples < 10:
        raise InputError("--weeks and --contacts must be at least 1, --samples at least 10")
    if not 0.0 <= persona_share <= 1.0:
        raise InputError(f"--persona-share must be between 0 and 1, got {persona_share}")
    with tempfile.TemporaryDirectory(prefix="personatag-feed-") as tmp:
        url = store_url or f"sqlite:///{Path(tmp) / 'store.db'}"
        st = open_store(url, create=True)
        try:
            with st.read() as conn:
                empty = not conn.execute(
                    select(func.count()).select_from(st.tables.contacts)
                ).scalar_one()
            generated = None
            if empty:
                generated = generate(
                    st,
                    contacts=contacts,
                    seed=seed,
                    end=END,
                    persona_share=persona_share,
                    reports=reports,
                    progress=lambda m: typer.echo(m, err=True),
                )
            tag_personas(st, settings())
            summary = evaluate(
                st,
                weeks=weeks,
                settings=settings(),
                samples=samples,
                seed=seed,
                progress=lambda m: typer.echo(m, err=True),
            )
        finally:
            st.dispose()
    summary["persona_share"] = persona_share
    summary["generated_contacts"] = generated.contacts if generated else None
    summary["generated_reports"] = generated.publications if generated else None
    if as_json:
        emit(summary)
    else:
        typer.echo(format_table(summary))
