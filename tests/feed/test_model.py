"""The feed model on a tiny hand-made store (real SQLite and PostgreSQL)."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

import pytest

from personatag.errors import InputError
from personatag.feed import FeedModel, Rules
from personatag.store import Store
from personatag.store.personas import add_persona
from tests.helpers import NOW, add_contacts

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
    with store.write() as conn:
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
