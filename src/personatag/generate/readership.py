"""Reads and logins for a chunk of contacts, driven by their latent preferences.

A contact reads publication p with probability proportional to
asset_w[p.asset_class] * sector_w[p.sector] * region_w[p.region]. Publications
are grouped into cells of (asset class, sector, region); sampling a cell per
read from each contact's cumulative weights is one searchsorted over the whole
chunk, then the publication is uniform within its cell.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from personatag.generate.population import DAY, PUB_REGIONS, YEAR, Latent, Publications
from personatag.generate.vocab import SECTORS

I64 = npt.NDArray[np.int64]

# Reads per active contact: 1 + lognormal, mean ~12; a long tail reads hundreds.
READS_MU = 1.45
READS_SIGMA = 1.4
ACTIVE_SHARE = 0.82
MAX_READS = 5_000


@dataclass(frozen=True)
class Cells:
    asset: I64
    sector: I64
    region: I64
    count: I64
    start: I64
    pubs: I64  # publication indices grouped by cell


def build_cells(pubs: Publications) -> Cells:
    n_sec = len(SECTORS) + 1
    n_reg = len(PUB_REGIONS)
    cell = (pubs.asset * n_sec + pubs.sector) * n_reg + pubs.region
    used, inverse, count = np.unique(cell, return_inverse=True, return_counts=True)
    order = np.argsort(inverse, kind="stable").astype(np.int64)
    start = np.concatenate([[0], np.cumsum(count)[:-1]]).astype(np.int64)
    asset = used // (n_sec * n_reg)
    sector = (used // n_reg) % n_sec
    region = used % n_reg
    return Cells(asset, sector, region, count.astype(np.int64), start, order)


@dataclass(frozen=True)
class Events:
    """Row-aligned arrays: contact index in the chunk, time in seconds, publication index."""

    read_contact: I64
    read_s: I64
    read_pub: I64
    login_contact: I64
    login_s: I64


def _unique_rows(*cols: I64) -> npt.NDArray[np.bool_]:
    """Given columns sorted together, a mask keeping the first of each identical row."""
    keep = np.ones(len(cols[0]), dtype=bool)
    if len(keep) > 1:
        same = np.ones(len(keep) - 1, dtype=bool)
        for c in cols:
            same &= c[1:] == c[:-1]
        keep[1:] = ~same
    return keep


def build_events(
    rng: np.random.Generator, latent: Latent, pubs: Publications, cells: Cells, end_s: int
) -> Events:
    n = len(latent.created_s)
    active = rng.random(n) < ACTIVE_SHARE
    drawn = 1 + np.floor(rng.lognormal(READS_MU, READS_SIGMA, n) * latent.activity)
    k = np.where(active, np.minimum(drawn, MAX_READS), 0).astype(np.int64)
    who = np.repeat(np.arange(n, dtype=np.int64), k)

    # Per contact, cumulative weights over the cells; offset row i by i so one
    # global searchsorted samples every read from its own contact's row.
    w = (
        latent.asset_w[:, cells.asset]
        * latent.sector_w[:, cells.sector]
        * latent.region_w[:, cells.region]
        * cells.count
    )
    cdf = np.cumsum(w, axis=1)
    cdf /= cdf[:, -1:]
    n_cells = len(cells.count)
    flat = (cdf + np.arange(n)[:, None]).ravel()
    pos = np.searchsorted(flat, who + rng.random(len(who)), side="right")
    cell = np.clip(pos - who * n_cells, 0, n_cells - 1)
    within = (rng.random(len(who)) * cells.count[cell]).astype(np.int64)
    pub = cells.pubs[cells.start[cell] + within]

    # Most reads come within days of publication; some dig into the archive.
    published = pubs.published_s[pub]
    soon = rng.exponential(1.5 * DAY, len(who))
    later = rng.random(len(who)) * 90 * DAY
    delay = np.where(rng.random(len(who)) < 0.8, soon, later).astype(np.int64) + 60
    at = published + delay
    late = at >= end_s
    at[late] = published[late] + (rng.random(int(late.sum())) * (end_s - published[late])).astype(
        np.int64
    )
    keep = at >= latent.created_s[who]  # nobody reads before they joined
    who, at, pub = who[keep], at[keep], pub[keep]
    order = np.lexsort((pub, at, who))
    who, at, pub = who[order], at[order], pub[order]
    first = _unique_rows(who, at, pub)
    who, at, pub = who[first], at[first], pub[first]

    # A login shortly before the first read of each day, plus logins without reads.
    day = at // DAY
    session = _unique_rows(who, day)
    s_who = who[session]
    s_at = at[session] - rng.integers(30, 900, int(session.sum()))
    extra_n = rng.poisson(0.5 + 0.1 * k) * (rng.random(n) < 0.85)
    e_who = np.repeat(np.arange(n, dtype=np.int64), extra_n)
    since = np.maximum(latent.created_s[e_who], end_s - YEAR)
    e_at = since + (rng.random(len(e_who)) * (end_s - since)).astype(np.int64)
    l_who = np.concatenate([s_who, e_who])
    l_at = np.maximum(np.concatenate([s_at, e_at]), latent.created_s[l_who])
    order = np.lexsort((l_at, l_who))
    l_who, l_at = l_who[order], l_at[order]
    first = _unique_rows(l_who, l_at)
    return Events(who, at, pub, l_who[first], l_at[first])


def last_login(n: int, events: Events) -> list[int | None]:
    """Newest login per contact in microseconds (None without logins); logins are sorted."""
    out: list[int | None] = [None] * n
    who, at = events.login_contact, events.login_s
    if len(who):
        ends = np.flatnonzero(np.append(who[1:] != who[:-1], True))
        for i, t in zip(who[ends].tolist(), at[ends].tolist(), strict=True):
            out[i] = t * 1_000_000
    return out
