"""Writer.decide against Holders' index of who holds each persona through each
source: the index follows every move, and the moves are those of the rules."""

from __future__ import annotations

import random
from datetime import UTC, datetime

from personatag.memberships import rules
from personatag.memberships.rows import Holders, Writer

AT = datetime(2026, 1, 1, tzinfo=UTC)


def by_source(holders: Holders) -> dict[tuple[int, int], set[int]]:
    out: dict[tuple[int, int], set[int]] = {}
    for (ppk, cpk), srcs in holders.sources.items():
        for src in srcs:
            out.setdefault((ppk, src), set()).add(cpk)
    return out


def test_decide_moves_what_the_rules_move_and_keeps_the_index() -> None:
    rng = random.Random(5)
    holders = Holders()
    for cpk in range(300):
        srcs = {s for s in (10, 11, 12) if rng.random() < 0.4}
        if srcs:
            holders.sources[(1, cpk)] = srcs
    holders.pinned_out = {(1, c) for c in range(0, 300, 17)}
    expected = {k: set(v) for k, v in holders.sources.items()}
    writer = Writer(None, AT, 10**9)  # type: ignore[arg-type]  # decide writes nothing
    logs: list[tuple[int, str, int, int]] = []
    for _ in range(6):
        crit = rng.choice((10, 11, 12))
        exit_remove = rng.random() < 0.5
        evaluated = rng.sample(range(300), 120) + rng.sample(range(300), 10)  # some twice
        matched = {c for c in evaluated if rng.random() < 0.5}
        before = len(holders.holding(1, crit))  # the index, built before the moves
        assert before == len(by_source(holders).get((1, crit), set()))
        writer.decide(holders, 1, crit, exit_remove, evaluated, matched)
        # The same answers through the rules, one by one, on a plain copy.
        for cpk in evaluated:
            srcs = expected.setdefault((1, cpk), set())
            change = rules.answer(
                srcs, crit, cpk in matched, exit_remove, (1, cpk) in holders.pinned_out
            )
            if change is not None:
                logs.append((1, change.value, crit, cpk))
        assert {k: v for k, v in holders.sources.items() if v} == {
            k: v for k, v in expected.items() if v
        }
        for (ppk, src), cpks in by_source(holders).items():
            assert holders.holding(ppk, src) == cpks
    assert writer.logs == logs
