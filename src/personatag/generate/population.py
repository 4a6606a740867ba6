"""Contacts and publications, generated column-wise with numpy.

Every contact carries latent preferences (asset classes from its job title's
family, one or two favourite sectors, its home region) that later drive what
it reads. The visible attributes are the latent ones with realistic gaps:
a missing job title or country does not change what someone reads.
"""

from __future__ import annotations

import unicodedata
from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt

from personatag.generate import vocab

F64 = npt.NDArray[np.float64]
I64 = npt.NDArray[np.int64]

DAY = 86_400
YEAR = 365 * DAY
SECTOR_NONE = len(vocab.SECTORS)  # index used for publications without a sector
REGION_GLOBAL = len(vocab.REGIONS)  # publication region "Global"
PUB_REGIONS = (*vocab.REGIONS, "Global")

# Share of NULLs per visible attribute (on top of structural NULLs).
NULL_RATES = {
    "email": 0.02,
    "first_name": 0.01,
    "last_name": 0.01,
    "job_title": 0.12,
    "seniority": 0.04,
    "region": 0.02,
    "country": 0.08,
    "firm": 0.02,
    "firm_type": 0.06,
    "interests": 0.30,
}


def _ascii(text: str) -> str:
    folded = unicodedata.normalize("NFKD", text).encode("ascii", "ignore").decode()
    return "".join(ch for ch in folded.lower() if ch.isalnum())


def _objects(values: list[str] | tuple[str, ...]) -> npt.NDArray[np.object_]:
    out = np.empty(len(values), dtype=object)
    out[:] = list(values)
    return out


def _with_nulls(values: npt.NDArray[Any], null: npt.NDArray[np.bool_]) -> list[Any]:
    out = values.astype(object)
    out[null] = None
    return list(out.tolist())


def _pick(rng: np.random.Generator, weights: Any, size: int) -> I64:
    p = np.asarray(weights, dtype=np.float64)
    return rng.choice(len(p), size=size, p=p / p.sum()).astype(np.int64)


@dataclass(frozen=True)
class Firms:
    names: npt.NDArray[np.object_]
    domains: npt.NDArray[np.object_]
    type_of: I64  # firm -> index into vocab.FIRM_TYPES
    by_type: list[I64]  # firm type -> its firms, biggest first
    weights: list[F64]  # firm type -> pick probabilities of its firms


def build_firms(rng: np.random.Generator) -> Firms:
    names: list[str] = []
    types: list[int] = []
    for t, (ftype, _) in enumerate(vocab.FIRM_TYPES):
        for stem in vocab.FIRM_STEMS:
            for suffix in vocab.FIRM_SUFFIXES[ftype]:
                names.append(f"{stem} {suffix}")
                types.append(t)
    type_of = np.array(types, dtype=np.int64)
    by_type: list[I64] = []
    weights: list[F64] = []
    for t in range(len(vocab.FIRM_TYPES)):
        members = np.flatnonzero(type_of == t)
        by_type.append(rng.permutation(members).astype(np.int64))
        w = 1.0 / np.arange(1, len(members) + 1) ** 0.9  # a few big firms, a long tail
        weights.append(w / w.sum())
    domains = [_ascii(n) + ".com" for n in names]
    return Firms(_objects(names), _objects(domains), type_of, by_type, weights)


@dataclass(frozen=True)
class Publications:
    """Publications sorted by published_at (pk = index + 1)."""

    ids: list[str]
    titles: list[str]
    published_s: I64  # seconds since the epoch
    asset: I64  # index into vocab.ASSET_CLASSES
    sector: I64  # index into vocab.SECTORS, or SECTOR_NONE
    region: I64  # index into PUB_REGIONS
    series: I64  # index into vocab.SERIES

    def rows(self) -> list[tuple[Any, ...]]:
        sectors = (*vocab.SECTORS, None)
        return [
            (i + 1, self.ids[i], self.titles[i], int(self.published_s[i]) * 1_000_000,
             vocab.ASSET_CLASSES[a], sectors[s], PUB_REGIONS[r], vocab.SERIES[k][0])
            for i, (a, s, r, k) in enumerate(
                zip(self.asset.tolist(), self.sector.tolist(), self.region.tolist(),
                    self.series.tolist(), strict=True)
            )
        ]  # fmt: skip


PUBLICATION_COLUMNS = (
    "pk", "id", "title", "published_at", "asset_class", "sector", "region", "series"
)  # fmt: skip


def publication_count(contacts: int) -> int:
    return int(min(20_000, max(200, contacts // 1000)))


def build_publications(rng: np.random.Generator, count: int, end_s: int) -> Publications:
    series = _pick(rng, [s[4] for s in vocab.SERIES], count)
    asset = np.array(
        [vocab.ASSET_CLASSES.index(vocab.SERIES[k][1]) for k in series], dtype=np.int64
    )
    region = np.array([PUB_REGIONS.index(vocab.SERIES[k][3]) for k in series], dtype=np.int64)
    any_sector = rng.integers(0, len(vocab.SECTORS), count)
    sector = np.array(
        [
            SECTOR_NONE
            if s[2] is None
            else any_sector[i]
            if s[2] == "*"
            else vocab.SECTORS.index(s[2])
            for i, s in enumerate(vocab.SERIES[k] for k in series)
        ],
        dtype=np.int64,
    )
    # Working days over the last year, 06:00-18:00 UTC.
    day = end_s // DAY - rng.integers(1, 366, count)
    weekday = (day + 3) % 7  # 1970-01-01 was a Thursday (weekday 3)
    day = day - np.where(weekday == 5, 1, 0) - np.where(weekday == 6, 2, 0)
    published = day * DAY + rng.integers(6 * 3600, 18 * 3600, count)
    order = np.argsort(published, kind="stable")
    series, asset, region, sector, published = (
        a[order] for a in (series, asset, region, sector, published)
    )
    topics = rng.integers(0, len(vocab.TITLE_TOPICS), count)
    titles = []
    for k, s, r, t in zip(
        series.tolist(), sector.tolist(), region.tolist(), topics.tolist(), strict=True
    ):
        subject = vocab.SECTORS[s] if s != SECTOR_NONE else PUB_REGIONS[r]
        titles.append(f"{vocab.SERIES[k][0]}: {subject} {vocab.TITLE_TOPICS[t]}")
    ids = [f"p{i + 1:06d}" for i in range(count)]
    return Publications(ids, titles, published.astype(np.int64), asset, sector, region, series)


@dataclass(frozen=True)
class Latent:
    """What drives a chunk of contacts' reading (rows align with the chunk)."""

    asset_w: F64  # (n, asset classes)
    sector_w: F64  # (n, sectors + "no sector")
    region_w: F64  # (n, PUB_REGIONS)
    activity: F64  # multiplier on the number of reads
    created_s: I64


TITLE_FAMILIES = sorted({t[2] for t in vocab.TITLES})


def _title_probabilities() -> F64:
    """(firm type, title) -> probability of the title at that kind of firm."""
    base = np.array([t[3] for t in vocab.TITLES])
    rows = []
    for ftype, _ in vocab.FIRM_TYPES:
        boost = vocab.FIRM_FAMILY_BOOST.get(ftype, {})
        w = base * np.array([boost.get(t[2], 1.0) for t in vocab.TITLES])
        rows.append(w / w.sum())
    return np.array(rows)


_COUNTRY_CODES = [list(vocab.COUNTRIES[r]) for r in vocab.REGIONS]
_COUNTRY_WEIGHTS = [np.array(list(vocab.COUNTRIES[r].values()), float) for r in vocab.REGIONS]
_TITLE_P = _title_probabilities()
_FAMILY_OF_TITLE = np.array([TITLE_FAMILIES.index(t[2]) for t in vocab.TITLES])
_FAMILY_ASSETS = np.array([vocab.FAMILY_ASSETS[f] for f in TITLE_FAMILIES], dtype=np.float64)
_INTEREST_NAMES = _objects((*vocab.ASSET_CLASSES, *vocab.SECTORS))
_FIRST = _objects(vocab.FIRST_NAMES)
_LAST = _objects(vocab.LAST_NAMES)
_FIRST_ASCII = _objects([_ascii(n) for n in vocab.FIRST_NAMES])
_LAST_ASCII = _objects([_ascii(n) for n in vocab.LAST_NAMES])

# The favourite sector a (firm type, title family) pair leans to under persona_share.
_PERSONA_SECTOR = np.random.default_rng(20_240_607).integers(
    0, len(vocab.SECTORS), (len(vocab.FIRM_TYPES), len(TITLE_FAMILIES))
)


def _shared_latent(
    rng: np.random.Generator, share: float, family: I64, firm_type: I64, region: I64
) -> tuple[F64, F64, F64]:
    """Latent preferences that the persona-defining attributes explain to degree `share`.

    Asset classes mix the title family's profile (weight share) with a random
    personal one; the favourite sector is the (firm type, family) pair's with
    probability share, else random; the home-region weight is 1 + 10 * share.
    At 0 attributes say nothing about reading; at 1 they say all but noise.
    """
    n = len(family)
    n_sec = len(vocab.SECTORS)
    fam = _FAMILY_ASSETS[family]
    fam = fam / fam.sum(axis=1, keepdims=True)
    own = rng.dirichlet(np.full(len(vocab.ASSET_CLASSES), 0.3), n)
    asset_w = share * fam + (1.0 - share) * own + 1e-4
    rows = np.arange(n)
    own_fav = rng.integers(0, n_sec, n)
    fav1 = np.where(rng.random(n) < share, _PERSONA_SECTOR[firm_type, family], own_fav)
    fav2 = rng.integers(0, n_sec, n)
    sector_w = np.ones((n, n_sec + 1))
    sector_w[:, n_sec] = 1.5
    sector_w[rows, fav1] += 40.0
    sector_w[rows, fav2] += rng.random(n) * 10.0
    region_w = np.ones((n, len(PUB_REGIONS)))
    region_w[rows, region] = 1.0 + 10.0 * share
    region_w[:, REGION_GLOBAL] = 3.0
    return asset_w, sector_w, region_w


CONTACT_COLUMNS = (
    "pk", "id", "email", "first_name", "last_name", "job_title", "seniority", "region",
    "country", "firm", "firm_type", "interests", "created_at", "updated_at", "last_login_at",
)  # fmt: skip


def build_contacts(
    rng: np.random.Generator,
    first_pk: int,
    n: int,
    end_s: int,
    firms: Firms,
    persona_share: float | None = None,
) -> tuple[dict[str, list[Any]], Latent]:
    """Columns of `n` contacts (pk from first_pk) except last_login_at, plus their latent side.

    `persona_share` (0 to 1) replaces the default latent preferences by ones that
    job title, firm type and region explain to that degree (see `_shared_latent`);
    None keeps the default population exactly."""
    null = {k: rng.random(n) < p for k, p in NULL_RATES.items()}

    region = _pick(rng, vocab.REGION_WEIGHTS, n)
    country = np.empty(n, dtype=object)
    for r in range(len(vocab.REGIONS)):
        where = np.flatnonzero(region == r)
        codes = _objects(_COUNTRY_CODES[r])
        country[where] = codes[_pick(rng, _COUNTRY_WEIGHTS[r], len(where))]

    firm_type = _pick(rng, [w for _, w in vocab.FIRM_TYPES], n)
    firm = np.empty(n, dtype=np.int64)
    title = np.empty(n, dtype=np.int64)
    for t in range(len(vocab.FIRM_TYPES)):
        where = np.flatnonzero(firm_type == t)
        members = firms.by_type[t]
        firm[where] = members[rng.choice(len(members), size=len(where), p=firms.weights[t])]
        title[where] = rng.choice(len(vocab.TITLES), size=len(where), p=_TITLE_P[t])
    seniority = np.array([t[1] for t in vocab.TITLES], dtype=np.int64)[title]
    family = _FAMILY_OF_TITLE[title]

    # Latent preferences: the family's asset mix, individually perturbed; one or
    # two favourite sectors; a strong home-region bias.
    asset_w = _FAMILY_ASSETS[family] * rng.gamma(1.5, 1.0, (n, len(vocab.ASSET_CLASSES)))
    n_sec = len(vocab.SECTORS)
    sector_w = np.ones((n, n_sec + 1))
    sector_w[:, n_sec] = 1.5  # macro / rates / FX pieces without a sector
    fav1 = rng.integers(0, n_sec, n)
    fav2 = rng.integers(0, n_sec, n)
    rows = np.arange(n)
    sector_w[rows, fav1] += 40.0
    sector_w[rows, fav2] += rng.random(n) * 10.0
    region_w = np.ones((n, len(PUB_REGIONS)))
    region_w[rows, region] = 6.0
    region_w[:, REGION_GLOBAL] = 3.0
    if persona_share is not None:
        asset_w, sector_w, region_w = _shared_latent(rng, persona_share, family, firm_type, region)

    # Interests as stated: up to four names drawn from the latent preferences
    # without replacement (Gumbel top-k).
    interest_w = np.concatenate(
        [
            asset_w / asset_w.sum(1, keepdims=True),
            sector_w[:, :n_sec] / sector_w.sum(1, keepdims=True),
        ],
        axis=1,
    )
    scores = np.log(interest_w) + rng.gumbel(size=interest_w.shape)
    top = np.argsort(-scores, axis=1)[:, :4]
    k = rng.integers(1, 5, n)
    interests: list[Any] = [
        None if nul else _INTEREST_NAMES[row[:kk]].tolist()
        for row, kk, nul in zip(top, k.tolist(), null["interests"].tolist(), strict=True)
    ]

    # Most contacts are years old; some joined during the last year.
    recent = rng.random(n) < 0.15
    age = np.where(recent, rng.integers(DAY, YEAR, n), rng.integers(YEAR, 8 * YEAR, n))
    created = end_s - age
    updated = created + (rng.random(n) * (end_s - created)).astype(np.int64)
    activity = np.where(seniority >= 5, 0.85, np.where(seniority <= 2, 1.3, 1.0))

    first = rng.integers(0, len(_FIRST), n)
    last = rng.integers(0, len(_LAST), n)
    suffix = np.where(rng.random(n) < 0.15, rng.integers(1, 100, n), 0)
    emails = [
        f"{f}.{la}{s or ''}@{d}"
        for f, la, s, d in zip(
            _FIRST_ASCII[first].tolist(),
            _LAST_ASCII[last].tolist(),
            suffix.tolist(),
            firms.domains[firm].tolist(),
            strict=True,
        )
    ]
    pks = range(first_pk, first_pk + n)
    title_names = _objects([t[0] for t in vocab.TITLES])
    # A missing title usually means the seniority is unknown too.
    seniority_null = null["seniority"] | (null["job_title"] & (rng.random(n) < 0.8))
    columns: dict[str, list[Any]] = {
        "pk": list(pks),
        "id": [f"c{pk:08d}" for pk in pks],
        "email": _with_nulls(_objects(emails), null["email"]),
        "first_name": _with_nulls(_FIRST[first], null["first_name"]),
        "last_name": _with_nulls(_LAST[last], null["last_name"]),
        "job_title": _with_nulls(title_names[title], null["job_title"]),
        "seniority": _with_nulls(seniority, seniority_null),
        "region": _with_nulls(_objects(vocab.REGIONS)[region], null["region"]),
        "country": _with_nulls(country, null["country"]),
        "firm": _with_nulls(firms.names[firm], null["firm"]),
        "firm_type": _with_nulls(
            _objects([f for f, _ in vocab.FIRM_TYPES])[firm_type], null["firm_type"]
        ),
        "interests": interests,
        "created_at": (created * 1_000_000).tolist(),
        "updated_at": (updated * 1_000_000).tolist(),
    }
    latent = Latent(asset_w, sector_w, region_w, activity.astype(np.float64), created)
    return columns, latent
