"""The feed model on a tiny hand-made store (real SQLite and PostgreSQL)."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

import numpy as np
import pytest

from personatag.definitions.personas import add_persona
from personatag.errors import InputError
from personatag.recommend import FeedModel, Rules
from personatag.recommend.model import learned_freshness
from personatag.store import Store
from tests.helpers import NOW, add_contacts
from tests.memberships.guard import outside_writes

H = timedelta(hours=1)
D = timedelta(days=1)

# id -> (series, sector, published_at)
PUBS = {
    "p1": ("Energy Weekly", "Energy", NOW - 1 * D),
    "p2": ("Tech Pulse", "Technology", NOW - 2 * D),
    "p3": ("Energy Weekly", "Energy", NOW - 5 * D),
    "p4": ("EMEA Credit Daily", None, NOW - 3 * D),
    "p5": ("Energy Weekly", "Energy", NOW + H),  # future
    "p6": ("Tech Pulse", "Technology", NOW),  # published exactly at as_of
    "p7": ("Energy Weekly", "Energy", NOW - 10 * D),
}
PK = {pid: i for i, pid in enumerate(PUBS, start=1)}
# contact -> [(publication, read_at)]
READS = {
    "c1": [("p3", NOW - 4 * D), ("p7", NOW)],  # p7 read exactly at as_of
    "c2": [("p1", NOW - 12 * H), ("p2", NOW - D), ("p3", NOW - 4 * D), ("p4", NOW + H)],
    "c3": [],
    "c4": [("p1", NOW - 20 * H), ("p3", NOW - 3 * D)],
}


@pytest.fixture
def model(store: Store) -> FeedModel:
    t = store.tables
    with store.write() as conn:
        conn.execute(
            t.publications.insert(),
            [
                {
                    "pk": PK[pid],
                    "id": pid,
                    "title": f"{series}: {pid}",
                    "series": series,
                    "sector": sector,
                    "published_at": at,
                    "asset_class": "Equities",
                    "region": "Global",
                }
                for pid, (series, sector, at) in PUBS.items()
            ],
        )
    add_contacts(store, [{"pk": i, "id": c} for i, c in enumerate(READS, start=1)])
    with store.write() as conn:
        rows = [
            {"contact_pk": i, "publication_pk": PK[p], "read_at": at}
            for i, c in enumerate(READS, start=1)
            for p, at in READS[c]
        ]
        conn.execute(t.reads.insert(), rows)
    energy = add_persona(store, "energy", name="Energy Readers", category="interest")
    with store.write() as conn, outside_writes():  # memberships as given, no rules
        conn.execute(
            t.memberships.insert(),
            [{"persona_pk": energy.pk, "contact_pk": c, "source": 0, "since": NOW} for c in (1, 3)],
        )
    return FeedModel.build(store, NOW)


def ids(items: list[Any]) -> list[str]:
    by_pk = {v: k for k, v in PK.items()}
    return [by_pk[i.publication_pk] for i in items]


def test_only_eligible_reports(model: FeedModel) -> None:
    # Never a read (including one exactly at as_of) nor a report published at or after as_of.
    assert sorted(ids(model.recommend(1, k=20))) == ["p1", "p2", "p4"]
    # A read after as_of does not count yet.
    assert sorted(ids(model.recommend(2, k=20))) == ["p4", "p7"]
    assert sorted(ids(model.recommend(3, k=20))) == ["p1", "p2", "p3", "p4", "p7"]
    # A contact the model has never seen gets the whole eligible catalogue.
    assert sorted(ids(model.recommend(999, k=20))) == ["p1", "p2", "p3", "p4", "p7"]
    assert len(model.recommend(3, k=2)) == 2
    for items in model.recommend_many([1, 2, 3, 4, 999], k=20).values():
        assert not {"p5", "p6"} & set(ids(items))
    assert all(i.reason for i in model.recommend(4, k=20))


def test_earlier_as_of_and_later_refused(model: FeedModel) -> None:
    # Three days earlier: p7 was not yet read by c1, p4 published exactly then is not eligible.
    assert ids(model.recommend(1, k=20, as_of=NOW - 3 * D)) == ["p7"]
    with pytest.raises(InputError, match="later than the model"):
        model.recommend(1, as_of=NOW + H)


def test_recommend_many_matches_recommend(model: FeedModel) -> None:
    many = model.recommend_many([1, 2, 3, 4], k=3, batch=2)
    assert many == {pk: model.recommend(pk, k=3) for pk in (1, 2, 3, 4)}


def is_tech(p: Any) -> bool:
    return bool(p["sector"] == "Technology")


def is_energy(p: Any) -> bool:
    return bool(p["sector"] == "Energy")


def test_boost_reorders(model: FeedModel) -> None:
    rules = {"energy": Rules("energy", "Energy Readers", boosts=((is_tech, 100.0),))}
    assert ids(model.recommend(1, rules=rules))[0] == "p2"
    assert ids(model.recommend(3, rules=rules))[0] == "p2"
    # Only for holders of the persona.
    plain = model.recommend(4, k=20)
    assert model.recommend(4, k=20, rules=rules) == plain
    assert model.recommend(1, rules=rules, held=[]) == model.recommend(1, held=[])


def test_filter_excludes(model: FeedModel) -> None:
    rules = {"energy": Rules("energy", "Energy Readers", filters=(is_energy,))}
    assert sorted(ids(model.recommend(3, k=20, rules=rules))) == ["p1", "p3", "p7"]
    # `held` overrides the snapshot's memberships.
    assert sorted(ids(model.recommend(4, k=20, rules=rules, held=["energy"]))) == ["p7"]
    assert sorted(ids(model.recommend(3, k=20, rules=rules, held=[]))) == [
        "p1", "p2", "p3", "p4", "p7"
    ]  # fmt: skip


def test_pins_first_expired_ignored(model: FeedModel) -> None:
    pin = Rules("energy", "Energy Readers", pins=((PK["p7"], None), (PK["p5"], None)))
    items = model.recommend(3, rules={"energy": pin})
    assert ids(items)[0] == "p7"
    assert items[0].reason == "pinned for Energy Readers"
    assert "p5" not in ids(items)  # a pinned future report stays ineligible
    expired = Rules("energy", "Energy Readers", pins=((PK["p7"], NOW - H),))
    assert model.recommend(3, rules={"energy": expired}) == model.recommend(3)
    # Pins of a read report are not shown either.
    assert "p7" not in ids(model.recommend(1, k=20, rules={"energy": pin}))


def test_cap_per_series(model: FeedModel) -> None:
    rules = {"energy": Rules("energy", "Energy Readers", cap_per_series=1)}
    got = ids(model.recommend(3, k=20, rules=rules))
    assert sum(1 for p in got if PUBS[p][0] == "Energy Weekly") == 1
    assert len(got) == 3  # one Energy Weekly, p2, p4
    assert sum(1 for p in ids(model.recommend(3, k=20)) if PUBS[p][0] == "Energy Weekly") == 3


def test_an_empty_catalogue_gives_an_empty_feed(store: Store) -> None:
    add_contacts(store, [{"pk": 1, "id": "c1"}])
    model = FeedModel.build(store, NOW)
    assert model.recommend(1) == []
    assert model.recommend_many([1, 2]) == {1: [], 2: []}


def test_recommend_all_in_forked_workers_equals_one_process(model: FeedModel) -> None:
    pks = list(range(1, 5))
    one = model.recommend_many(pks, 3)
    assert model.recommend_all(pks, 3, workers=2, batch=1) == one


def test_learned_freshness_hand_checked(model: FeedModel) -> None:
    # First reads at or before as_of, by age in 6-hour buckets: p1 at 4 h (bucket 0)
    # and 12 h (2); p2 at 1 d (4); p3 at 1 d twice (4) and 2 d (8); p7 at exactly
    # 10 d, its own age, so bucket 40 is not complete and the read is left out.
    # Reports out for all of a bucket (ages p1 1 d, p2 2 d, p4 3 d, p3 5 d, p7 10 d):
    # bucket 0 and 2: 5; bucket 4: 4; bucket 8: 3.
    rate = {0: 1 / 5, 2: 1 / 5, 4: 3 / 4, 8: 1 / 3}
    curve = learned_freshness(model.snap, 0.25, min_reads=1, min_reports=1)
    assert curve is not None
    want = [rate.get(b, 0.0) / 0.75 for b in range(10)]
    assert curve[:10].tolist() == pytest.approx(want, abs=1e-6)
    assert not curve[10:].any()
    # A one-day horizon averages four buckets ahead: bucket 1 = (0 + 1/5 + 0 + 3/4) / 4.
    day = learned_freshness(model.snap, 1.0, min_reads=1, min_reports=1)
    assert day is not None
    assert day[0] == pytest.approx((1 / 5 + 1 / 5) / 4 / (0.95 / 4))
    assert day[1] == pytest.approx(1.0)
    # Buckets judged on fewer than 4 reports are not trusted; too few reads: no curve.
    strict = learned_freshness(model.snap, 0.25, min_reads=1, min_reports=4)
    assert strict is not None and strict[8] == 0.0 and strict[4] == 1.0
    assert learned_freshness(model.snap, 1.0, min_reads=7) is None


def test_freshness_falls_back_to_the_half_life_on_little_data(model: FeedModel) -> None:
    # Six usable reads are far below FRESH_MIN_READS: F is the half-life curve.
    assert model.fresh_curve is None
    assert model.freshness(np.array([0.0, 1.0, 2.0])).tolist() == pytest.approx([1, 0.5, 0.25])
    model.fresh_curve = np.array([1.0, 0.5, 0.25], dtype=np.float32)
    # Ages index the curve by bucket; ages past its end take its last value.
    assert model.freshness(np.array([0.1, 0.3, 0.6, 50.0])).tolist() == [1, 0.5, 0.25, 0.25]


def _sim_bits(m: Any) -> tuple[list[int], list[int], list[int]]:
    import scipy.sparse as sp

    m = sp.csr_matrix(m, dtype=np.float32)
    m.sort_indices()
    return m.indptr.tolist(), m.indices.tolist(), m.data.view(np.int32).tolist()


def test_item_knn_by_parts_equals_whole_fit_and_implicit() -> None:
    """The part-by-part item-kNN fit is the whole fit, bit for bit, for any part and
    block size, and both are implicit's BM25 fit (ties on the k-th place included:
    0/1 reads over few reports tie often)."""
    import warnings

    import scipy.sparse as sp
    from implicit.nearest_neighbours import BM25Recommender

    from personatag.recommend.model import bm25_item_knn

    rng = np.random.default_rng(7)
    for _ in range(60):
        n_c, n_p = int(rng.integers(1, 50)), int(rng.integers(1, 20))
        x = sp.csr_matrix((rng.random((n_c, n_p)) < rng.uniform(0.05, 0.9)).astype(np.float32))
        k = int(rng.integers(1, 10))
        whole = bm25_item_knn(x, k, part_pairs=10**9, block_bytes=1 << 30)
        parts = bm25_item_knn(
            x, k, part_pairs=int(rng.integers(1, 40)), block_bytes=int(rng.integers(8, 500))
        )
        assert _sim_bits(parts) == _sim_bits(whole)
        knn = BM25Recommender(K=k)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            knn.fit(x, show_progress=False)
            ref = sp.csr_matrix(knn.similarity, dtype=np.float32)
            ref.setdiag(0.0)
        ref.eliminate_zeros()
        assert _sim_bits(whole) == _sim_bits(ref)


def test_model_by_ranges_equals_whole(model: FeedModel, monkeypatch: pytest.MonkeyPatch) -> None:
    """The per-read and per-contact steps computed a few reads or contacts at a time
    give the same model arrays as all at once."""
    import personatag.recommend.model as model_module
    from personatag.config import Settings

    monkeypatch.setattr(model_module, "WEIGHT_PART", 2)
    monkeypatch.setattr(model_module, "CONTACT_PART", 1)
    monkeypatch.setattr(model_module, "KNN_PART_PAIRS", 1)
    monkeypatch.setattr(model_module, "KNN_BLOCK_BYTES", 8)
    settings = Settings(feed_freshness="learned")
    parts = FeedModel(model.snap, settings)
    monkeypatch.setattr(model_module, "WEIGHT_PART", 1 << 30)
    monkeypatch.setattr(model_module, "CONTACT_PART", 1 << 30)
    whole = FeedModel(model.snap, settings)
    for name in ("persona_rate", "global_rate"):
        assert getattr(parts, name).tobytes() == getattr(whole, name).tobytes()
    for name in ("base_share", "persona_mix", "global_mix"):
        assert [a.tobytes() for a in getattr(parts, name)] == [
            a.tobytes() for a in getattr(whole, name)
        ]
    assert _sim_bits(parts.similarity) == _sim_bits(whole.similarity)
    assert model.snap.reads.nnz >= 2
    fresh = model_module.learned_freshness(model.snap, 7.0, min_reads=1, min_reports=1)
    monkeypatch.setattr(model_module, "WEIGHT_PART", 1)
    by_one = model_module.learned_freshness(model.snap, 7.0, min_reads=1, min_reports=1)
    assert fresh is not None and by_one is not None
    assert fresh.tobytes() == by_one.tobytes()
