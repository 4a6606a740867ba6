"""Metric code on hand-checked cases, baselines on a tiny store, the generator's persona share."""

from __future__ import annotations

import hashlib
import math
from datetime import timedelta
from pathlib import Path

import numpy as np
import pytest

from personatag.errors import InputError
from personatag.generate import generate
from personatag.generate.population import (
    TITLE_FAMILIES,
    build_contacts,
    build_firms,
    build_publications,
)
from personatag.generate.readership import build_cells, build_events
from personatag.recommend import FeedModel
from personatag.recommend.baselines import BASELINES, b1_popular, b3_coverage, b4_item_knn
from personatag.recommend.evaluate import bootstrap_mean, coverage_at_k, hit_and_ndcg, top_k
from personatag.store import Store, open_store
from personatag.store.types import to_micros
from tests.helpers import NOW, add_contacts


def test_hit_and_ndcg_hand_checked() -> None:
    top = np.array([[3, 1, 2], [3, 1, 2], [3, 1, 2], [3, 1, 2]])
    hr, ndcg = hit_and_ndcg(top, [{1}, {1, 2}, {7}, set()], k=3)
    assert hr.tolist() == [1.0, 1.0, 0.0, 0.0]
    assert ndcg[0] == pytest.approx(1 / math.log2(3))
    assert ndcg[1] == pytest.approx((1 / math.log2(3) + 1 / math.log2(4)) / (1 + 1 / math.log2(3)))
    assert ndcg[2] == 0.0
    hr, ndcg = hit_and_ndcg(np.array([[5, 6]]), [{5}], k=2)
    assert (hr[0], ndcg[0]) == (1.0, 1.0)


def test_coverage_and_top_k() -> None:
    assert coverage_at_k(np.array([[0, 1], [1, 2]]), 6, k=2) == 0.5
    assert coverage_at_k(np.array([[0, 1]]), 0) == 0.0
    score = np.array([[0.5, 0.9, 0.5, -np.inf], [1.0, -np.inf, -np.inf, -np.inf]], np.float32)
    assert top_k(score, 3).tolist() == [[1, 0, 2], [0, -1, -1]]


def test_bootstrap_reproducible_and_paired() -> None:
    units = np.array([1, 1, 2, 3, 4, 5, 6, 7])
    a = np.array([1, 0, 1, 1, 0, 1, 1, 0], float)
    b = np.array([0, 0, 1, 0, 0, 1, np.nan, 0], float)
    ci1, m1 = bootstrap_mean(units, {"a": a, "b": b}, samples=300, seed=4)
    ci2, m2 = bootstrap_mean(units, {"a": a, "b": b}, samples=300, seed=4)
    assert ci1 == ci2 and np.array_equal(m1["a"], m2["a"], equal_nan=True)
    assert ci1["a"][0] == pytest.approx(5 / 8)
    assert ci1["b"][0] == pytest.approx(2 / 7)  # NaN left out
    assert ci1["a"][1] <= ci1["a"][0] <= ci1["a"][2]
    ci3, _ = bootstrap_mean(units, {"a": a}, samples=300, seed=5)
    assert ci3["a"][0] == ci1["a"][0] and ci3["a"][1:] != ci1["a"][1:]


@pytest.fixture
def tiny(store: Store) -> FeedModel:
    """p1 read by everyone, p2 by two, the rest by none; c9 read Tech Pulse only."""
    t = store.tables
    series = ["Energy Weekly", "Energy Weekly", "Tech Pulse", "Tech Pulse", "Macro"]
    with store.write() as conn:
        conn.execute(
            t.publications.insert(),
            [
                {
                    "pk": i + 1,
                    "id": f"p{i + 1}",
                    "title": f"t{i + 1}",
                    "series": s,
                    "sector": None,
                    "asset_class": "Macro",
                    "region": "Global",
                    "published_at": NOW - timedelta(days=10 - i),
                }
                for i, s in enumerate(series)
            ],
        )
    add_contacts(store, [{"pk": i, "id": f"c{i}"} for i in range(1, 10)])
    reads = [(c, 1) for c in range(1, 9)] + [(1, 2), (2, 2), (9, 3)]
    with store.write() as conn:
        conn.execute(
            t.reads.insert(),
            [{"contact_pk": c, "publication_pk": p, "read_at": NOW - timedelta(days=1)}
             for c, p in reads],
        )  # fmt: skip
    return FeedModel.build(store, NOW)


def test_baselines_on_a_tiny_store(tiny: FeedModel) -> None:
    now = to_micros(NOW)
    for name, scorer in BASELINES.items():
        s = scorer(tiny, [3, 9, 99], now)
        assert s.shape == (3, 5), name
        assert np.isneginf(s[0, 0]), name  # c3 read p1
        assert np.isfinite(s[2]).all(), name  # unknown contact: everything eligible
    assert top_k(b1_popular(tiny, [3], now), 2).tolist() == [[1, 2]]  # p2 (2 reads), p3 (1)
    assert top_k(b3_coverage(tiny, [9], now), 1).tolist() == [[3]]  # newest Tech Pulse: p4
    # c3 read p1, which c1 and c2 read with p2: item-kNN suggests p2.
    assert top_k(b4_item_knn(tiny, [3], now), 1).tolist() == [[1]]


def test_persona_share_default_unchanged_and_validated(tmp_path: Path) -> None:
    firms = build_firms(np.random.default_rng([3, 0, 1]))
    cols, lat = build_contacts(np.random.default_rng([3, 1, 0]), 1, 500, 1_750_000_000, firms)
    digest = hashlib.sha256(
        repr([cols[c] for c in sorted(cols)]).encode()
        + lat.asset_w.tobytes()
        + lat.sector_w.tobytes()
        + lat.region_w.tobytes()
    ).hexdigest()
    # Recorded with the generator before persona_share existed.
    assert digest == "0b9ff20ce745032d6e6aaa4c00e04b71620e5d56b4bd9bf3d22c3e4e0fb64125"
    st = open_store(f"sqlite:///{tmp_path / 's.db'}", create=True)
    with pytest.raises(InputError, match="persona-share"):
        generate(st, contacts=10, persona_share=1.5)
    st.dispose()


def _family_predicts_asset(share: float) -> float:
    """Share of readers whose most-read asset class is their title family's most common one."""
    end = 1_750_000_000
    firms = build_firms(np.random.default_rng([1, 0, 1]))
    pubs = build_publications(np.random.default_rng([1, 0, 0]), 400, end)
    rng = np.random.default_rng([1, 1, 0])
    cols, lat = build_contacts(rng, 1, 6000, end, firms, persona_share=share)
    ev = build_events(rng, lat, pubs, build_cells(pubs), end)
    counts = np.zeros((6000, 7))
    np.add.at(counts, (ev.read_contact, pubs.asset[ev.read_pub]), 1)
    readers = counts.sum(1) >= 5
    fav = counts.argmax(1)
    family = np.array([hash(t) % 997 for t in cols["job_title"]])  # title stands for family
    hits = 0
    for f in np.unique(family[readers]):
        members = readers & (family == f)
        hits += int((fav[members] == np.bincount(fav[members]).argmax()).sum())
    return hits / int(readers.sum())


def test_persona_share_changes_how_much_attributes_explain() -> None:
    assert len(TITLE_FAMILIES) > 5
    low, high = _family_predicts_asset(0.1), _family_predicts_asset(0.9)
    assert high > low + 0.1


def test_evaluate_feed_from_the_command_line(tmp_path: Path) -> None:
    from tests.test_cli import CLI

    cli = CLI(f"sqlite:///{tmp_path / 'unused.db'}", tmp_path)
    out = cli.json(
        "evaluate-feed", "--contacts", "3000", "--reports", "150", "--weeks", "2",
        "--samples", "20", "--seed", "4", "--json",
    )  # fmt: skip
    assert (out["generated_contacts"], out["generated_reports"]) == (3000, 150)
    assert len(out["weeks"]) == 2 and out["units"] > 0
    assert set(out["rankers"]) == {"ours", *BASELINES}
    assert set(out["lift_hr10"]) == set(BASELINES)
    for r in out["rankers"].values():
        hr, lo, hi = r["hr10"]
        assert 0.0 <= lo <= hr <= hi <= 1.0
    # The catalogue at each cut: reports published before it, at most the 150.
    assert all(0 < n <= 150 for n in out["eligible_catalogue"])
    bad = cli("evaluate-feed", "--reports", "0", ok=False)
    assert bad.returncode != 0 and "--reports must be between" in bad.stderr
    assert "Traceback" not in bad.stderr
