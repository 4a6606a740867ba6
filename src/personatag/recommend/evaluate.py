"""Offline evaluation of the feed: rolling weekly splits over a generated population.

Protocol (docs/feed.md): for each of `weeks` cut-offs T (the last is the
generated history's end minus one week), every ranker learns from reports
published before T and reads at or before T, and ranks each contact's whole
eligible catalogue (no sampled negatives). A contact is evaluated at T when it
read at least one eligible report in the test week (T, T + 7 days]; those
reads are the relevant items. Metrics are pooled over (contact, week) pairs;
95 % intervals come from resampling contacts (all of a contact's weeks move
together), and the lift of ours over a baseline is a paired bootstrap.
"""

from __future__ import annotations

import tempfile
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
from sqlalchemy import BigInteger, func, select, type_coerce

from personatag.config import Settings
from personatag.domain import Action
from personatag.errors import InputError
from personatag.generate import generate
from personatag.generate.vocab import FIRM_TYPES, REGIONS, TITLES
from personatag.recommend.baselines import RANKERS, Scorer
from personatag.recommend.model import FeedModel
from personatag.store import Store, open_store
from personatag.store.types import to_micros

F64 = npt.NDArray[np.float64]
I64 = npt.NDArray[np.int64]
K = 10
WEEK = timedelta(days=7)
END = datetime(2025, 6, 30, tzinfo=UTC)
NEW_REPORT_DAYS = 7
BATCH = 4096

# Evaluation personas: by title family, firm type and region (the attributes the
# generator's persona_share is about). Names as an editor would write them.
FAMILY_NAMES = {
    "cio": "CIOs", "head_fi": "Heads of Fixed Income", "head_eq": "Heads of Equities",
    "head_multi": "Multi-Asset Heads", "pm": "Portfolio Managers", "credit": "Credit Investors",
    "equity": "Equity Investors", "rates": "Rates Strategists", "fx": "FX Strategists",
    "commod": "Commodities Analysts", "econ": "Economists", "strat": "Strategists",
    "treasury": "Corporate Treasurers", "risk": "Risk Managers", "quant": "Quants",
    "trader": "Traders", "sales": "Relationship Managers", "exec": "Executives",
}  # fmt: skip


def _quote(value: str) -> str:
    return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'


def persona_definitions() -> list[tuple[str, str, str, str]]:
    """(key, name, category, criterion) of every evaluation persona."""
    out = []
    for family, name in FAMILY_NAMES.items():
        titles = ", ".join(_quote(t[0]) for t in TITLES if t[2] == family)
        out.append(
            (f"title-{family.replace('_', '-')}", name, "job title", f"job_title in ({titles})")
        )
    for firm_type, _ in FIRM_TYPES:
        key = "firm-" + firm_type.replace(" ", "-")
        out.append((key, f"{firm_type.title()}s", "firm type", f"firm_type = {_quote(firm_type)}"))
    for region in REGIONS:
        out.append(
            (
                f"region-{region.lower()}",
                f"{region} readers",
                "region",
                f"region = {_quote(region)}",
            )
        )
    return out  # fmt: skip


def tag_personas(store: Store, settings: Settings) -> int:
    """Create the evaluation personas and tag them with ad hoc requests (`run_adhoc`)."""
    from personatag.definitions.personas import add_persona
    from personatag.tagging.adhoc import AdhocRequest, run_adhoc

    with store.read() as conn:
        existing = set(conn.scalars(select(store.tables.personas.c.key)))
    tagged = 0
    for key, name, category, expr in persona_definitions():
        if key in existing:
            continue
        add_persona(store, key, name=name, category=category, actor="evaluate-feed")
        run_adhoc(
            store,
            AdhocRequest(persona=key, action=Action.TAG, expr=expr, actor="evaluate-feed"),
            settings,
        )
        tagged += 1
    return tagged


@dataclass
class Week:
    """One split: per evaluated contact, its relevant reports and the rankers' top K."""

    as_of: datetime
    contacts: I64
    new_contact: npt.NDArray[np.bool_]
    hits: dict[str, F64] = field(default_factory=dict)  # ranker -> HR (0/1) per contact
    ndcg: dict[str, F64] = field(default_factory=dict)
    new_report_hit: dict[str, F64] = field(default_factory=dict)  # NaN: no new-report read
    coverage: dict[str, float] = field(default_factory=dict)
    eligible_catalogue: int = 0


def hit_and_ndcg(top: I64, relevant: list[set[int]], k: int = K) -> tuple[F64, F64]:
    """HR@k (1 if any of the top k is relevant) and binary NDCG@k, per row."""
    hr = np.zeros(len(relevant))
    ndcg = np.zeros(len(relevant))
    discount = 1.0 / np.log2(np.arange(2, k + 2))
    for i, rel in enumerate(relevant):
        if not rel:
            continue
        gains = np.array([1.0 if j in rel else 0.0 for j in top[i, :k].tolist()])
        dcg = float((gains * discount[: len(gains)]).sum())
        ideal = float(discount[: min(len(rel), k)].sum())
        hr[i] = 1.0 if gains.any() else 0.0
        ndcg[i] = dcg / ideal
    return hr, ndcg


def coverage_at_k(top: I64, eligible_catalogue: int, k: int = K) -> float:
    """Distinct reports in anyone's top k / reports eligible for someone."""
    if eligible_catalogue <= 0:
        return 0.0
    return len(np.unique(top[:, :k])) / eligible_catalogue


def top_k(score: npt.NDArray[np.float32], k: int = K) -> I64:
    """Indices of the k best per row (ties: lower index first); -inf rows give -1."""
    k = min(k, score.shape[1])
    part = np.argpartition(-score, k - 1, axis=1)[:, :k]
    vals = np.take_along_axis(score, part, axis=1)
    order = np.lexsort((part, -vals), axis=1)
    top = np.take_along_axis(part, order, axis=1)
    top[~np.isfinite(np.take_along_axis(score, top, axis=1))] = -1
    return top.astype(np.int64)


def bootstrap_mean(
    units: I64, values: dict[str, F64], *, samples: int = 1000, seed: int = 0
) -> tuple[dict[str, tuple[float, float, float]], dict[str, F64]]:
    """Per ranker (mean, 2.5 %, 97.5 %) resampling `units` (contacts) with replacement.

    NaN values are left out. Also returns each ranker's resampled means: the
    same seed gives the same draws, so rankers can be compared pair-wise."""
    ids, inverse = np.unique(units, return_inverse=True)
    n = len(ids)
    rng = np.random.default_rng(seed)
    totals = {}
    for name, v in values.items():
        ok = ~np.isnan(v)
        totals[name] = (
            np.bincount(inverse[ok], weights=v[ok], minlength=n),
            np.bincount(inverse[ok], minlength=n).astype(np.float64),
        )
    means = {name: np.full(samples, np.nan) for name in values}
    for s in range(samples if n else 0):
        w = np.bincount(rng.integers(0, n, n), minlength=n).astype(np.float64)
        for name, (total, count) in totals.items():
            c = w @ count
            if c:
                means[name][s] = (w @ total) / c
    out: dict[str, tuple[float, float, float]] = {}
    for name, (total, count) in totals.items():
        point = float(total.sum() / count.sum()) if count.sum() else float("nan")
        m = means[name][~np.isnan(means[name])]
        lo, hi = np.percentile(m, [2.5, 97.5]) if len(m) else (float("nan"), float("nan"))
        out[name] = (point, float(lo), float(hi))
    return out, means


def _relevant(
    store: Store, model: FeedModel, as_of: datetime
) -> tuple[I64, list[set[int]], list[set[int]]]:
    """Contacts with eligible reads in (as_of, as_of + 1 week], those reads, and the new ones."""
    snap = model.snap
    lo, hi = to_micros(as_of), to_micros(as_of + WEEK)
    rc = store.tables.reads.c
    with store.read() as conn:
        rows = conn.execute(
            select(rc.contact_pk, rc.publication_pk)
            .where(type_coerce(rc.read_at, BigInteger) > lo, rc.read_at <= hi)
            .order_by(rc.contact_pk)
        ).all()
    if not rows:
        return np.empty(0, np.int64), [], []
    arr = np.array(rows, dtype=np.int64)
    contacts = np.unique(arr[:, 0])
    eligible = model.eligible(snap.contact_rows(contacts.tolist()), lo)
    new_from = lo - NEW_REPORT_DAYS * 86_400 * 1_000_000
    index = {int(c): i for i, c in enumerate(contacts.tolist())}
    rel: list[set[int]] = [set() for _ in contacts]
    for c, p in arr.tolist():
        j = snap.pub_index(p)
        i = index[c]
        if j is not None and eligible[i, j]:
            rel[i].add(j)
    keep = [i for i, r in enumerate(rel) if r]
    new = [{j for j in rel[i] if snap.pub_published_us[j] >= new_from} for i in keep]
    return contacts[keep], [rel[i] for i in keep], new


def evaluate_week(
    store: Store,
    as_of: datetime,
    settings: Settings,
    rankers: dict[str, Scorer] | None = None,
    progress: Callable[[str], None] | None = None,
) -> Week:
    rankers = rankers or RANKERS
    model = FeedModel.build(store, as_of, settings)
    snap = model.snap
    contacts, relevant, new_rel = _relevant(store, model, as_of)
    rows = snap.contact_rows(contacts.tolist())
    known = rows >= 0
    has_reads = np.zeros(len(rows), dtype=bool)
    has_reads[known] = np.diff(snap.reads.indptr)[rows[known]] > 0
    week = Week(as_of=as_of, contacts=contacts, new_contact=~has_reads)
    as_of_us = to_micros(as_of)
    week.eligible_catalogue = int((snap.pub_published_us < as_of_us).sum())
    for name, scorer in rankers.items():
        tops = [
            top_k(scorer(model, contacts[s : s + BATCH].tolist(), as_of_us))
            for s in range(0, len(contacts), BATCH)
        ]
        top = np.concatenate(tops) if tops else np.empty((0, K), np.int64)
        week.hits[name], week.ndcg[name] = hit_and_ndcg(top, relevant)
        new_hr, _ = hit_and_ndcg(top, new_rel)
        week.new_report_hit[name] = np.where([bool(r) for r in new_rel], new_hr, np.nan)
        week.coverage[name] = coverage_at_k(top, week.eligible_catalogue)
    if progress:
        progress(
            f"week to {as_of:%Y-%m-%d}: {len(contacts):,} contacts evaluated, "
            f"HR@10 ours {week.hits['ours'].mean():.3f}"
            if "ours" in week.hits
            else ""
        )
    return week


def summarise(weeks: Sequence[Week], *, samples: int = 1000, seed: int = 0) -> dict[str, Any]:
    """The results table: metrics with 95 % intervals, slices, lift of ours over baselines."""
    units = np.concatenate([w.contacts for w in weeks])
    names = list(weeks[0].hits)
    new_c = np.concatenate([w.new_contact for w in weeks])

    def cat(attr: str, name: str) -> F64:
        return np.concatenate([getattr(w, attr)[name] for w in weeks])

    hr = {n: cat("hits", n) for n in names}
    nd = {n: cat("ndcg", n) for n in names}
    hr_new_c = {n: np.where(new_c, hr[n], np.nan) for n in names}
    hr_new_r = {n: cat("new_report_hit", n) for n in names}
    hr_ci, hr_means = bootstrap_mean(units, hr, samples=samples, seed=seed)
    nd_ci, _ = bootstrap_mean(units, nd, samples=samples, seed=seed)
    nc_ci, _ = bootstrap_mean(units, hr_new_c, samples=samples, seed=seed)
    nr_ci, _ = bootstrap_mean(units, hr_new_r, samples=samples, seed=seed)
    rankers = {}
    for n in names:
        rankers[n] = {
            "hr10": hr_ci[n],
            "ndcg10": nd_ci[n],
            "coverage10": float(np.mean([w.coverage[n] for w in weeks])),
            "hr10_new_contacts": nc_ci[n],
            "hr10_new_reports": nr_ci[n],
        }
    lifts = {}
    for n in names:
        if n == "ours" or "ours" not in names:
            continue
        ratio = hr_means["ours"] / hr_means[n] - 1.0
        point = hr_ci["ours"][0] / hr_ci[n][0] - 1.0 if hr_ci[n][0] else float("nan")
        lo, hi = np.nanpercentile(ratio, [2.5, 97.5])
        lifts[n] = (point, float(lo), float(hi))
    return {
        "weeks": [w.as_of.isoformat() for w in weeks],
        "units": len(units),
        "contacts": len(np.unique(units)),
        "new_contact_units": int(new_c.sum()),
        "new_report_units": sum(int(np.sum(~np.isnan(w.new_report_hit[names[0]]))) for w in weeks),
        "eligible_catalogue": [w.eligible_catalogue for w in weeks],
        "rankers": rankers,
        "lift_hr10": lifts,
    }  # fmt: skip


def evaluate(
    store: Store,
    *,
    weeks: int = 8,
    end: datetime = END,
    settings: Settings | None = None,
    samples: int = 1000,
    seed: int = 0,
    progress: Callable[[str], None] | None = None,
) -> dict[str, Any]:
    """Evaluate on a store holding a generated population that ended at `end`."""
    settings = settings or Settings()
    with store.read() as conn:
        last = conn.execute(
            select(func.max(type_coerce(store.tables.reads.c.read_at, BigInteger)))
        ).scalar_one()
    if last is not None and last > to_micros(end):
        raise ValueError(f"the store has reads after {end.isoformat()}: pass its real end")
    cuts = [end - WEEK * (weeks - w) for w in range(weeks)]
    results = [evaluate_week(store, t, settings, progress=progress) for t in cuts]
    return summarise(results, samples=samples, seed=seed)


def format_table(summary: dict[str, Any]) -> str:
    """A Markdown table of the summary."""

    def ci(v: tuple[float, float, float]) -> str:
        return f"{v[0]:.3f} [{v[1]:.3f}, {v[2]:.3f}]"

    lines = [
        "| ranker | HR@10 | NDCG@10 | coverage@10 | HR@10 new contacts | HR@10 new reports |",
        "|---|---|---|---|---|---|",
    ]
    for name, r in summary["rankers"].items():
        lines.append(
            f"| {name} | {ci(r['hr10'])} | {ci(r['ndcg10'])} | {r['coverage10']:.3f} | "
            f"{ci(r['hr10_new_contacts'])} | {ci(r['hr10_new_reports'])} |"
        )
    lines.append("")
    lines.append("| lift of ours in HR@10 over | relative lift [95 % CI] |")
    lines.append("|---|---|")
    for name, v in summary["lift_hr10"].items():
        lines.append(f"| {name} | {v[0]:+.1%} [{v[1]:+.1%}, {v[2]:+.1%}] |")
    return "\n".join(lines)


def run_evaluation(
    *,
    contacts: int = 20_000,
    reports: int | None = None,
    weeks: int = 8,
    persona_share: float = 0.5,
    seed: int = 0,
    samples: int = 1000,
    store_url: str | None = None,
    settings: Settings | None = None,
    progress: Callable[[str], None] | None = None,
) -> dict[str, Any]:
    """`personatag evaluate-feed`: generate a population (in a temporary SQLite
    store unless `store_url` names one; an existing generated store is used as
    it is), tag the evaluation personas and evaluate. The summary also says
    what was generated and the persona share."""
    if weeks < 1 or contacts < 1 or samples < 10:
        raise InputError("--weeks and --contacts must be at least 1, --samples at least 10")
    if not 0.0 <= persona_share <= 1.0:
        raise InputError(f"--persona-share must be between 0 and 1, got {persona_share}")
    settings = settings or Settings()
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
                    progress=progress,
                )
            tag_personas(st, settings)
            summary = evaluate(
                st, weeks=weeks, settings=settings, samples=samples, seed=seed, progress=progress
            )
        finally:
            st.dispose()
    summary["persona_share"] = persona_share
    summary["generated_contacts"] = generated.contacts if generated else None
    summary["generated_reports"] = generated.publications if generated else None
    return summary
