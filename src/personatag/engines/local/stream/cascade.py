"""Settling persona(...) criteria inside one stream step, before anything is written.

A step's first evaluation reads the personas a contact held when the step
began. When the same step moves one of those personas (`region = "EMEA" and
seniority >= 5` -> s0 exits), every criterion reading it (`persona("s0") and
seniority < 8` -> s3) may answer differently. Writing the first answers and
then correcting them would log an enter and an exit of the same persona in one
step (and, with both row writes queued, leave the wrong row behind). Instead
each contact's answers are settled here: the personas it would hold under the
current answers are worked out in memory, the persona criteria whose inputs
changed are evaluated again in dependency order, and so on until nothing
moves. Only the settled answers are applied, so the step ends where a full
evaluation of the same data would, and the log holds at most one change per
(contact, persona).

Criteria that read each other in a circle (`persona("a")` -> b, `persona("b")`
-> a) are settled by repeating the pass; an answer that still flips after
`MAX_PASSES` passes (a circle through a `not`) keeps its last value and is
reported as an error of that contact and criterion.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field

from personatag.engines.local.stream import ongoing as og
from personatag.memberships import rules
from personatag.memberships.rows import Holders

MAX_PASSES = 8

# (criterion, contact pk, the personas it holds) -> True / False, or None when it failed
Evaluate = Callable[[og.Ongoing, int, frozenset[str]], bool | None]


@dataclass
class Contact:
    """One contact's answers in a step and the personas they give it."""

    pk: int
    # persona pk -> sources, as stored when the step began (only personas the step covers)
    stored: dict[int, frozenset[int]]
    # personas held that the step does not cover (no criterion of it can move them)
    outside: frozenset[str]
    answers: dict[int, bool] = field(default_factory=dict)  # criterion pk -> matched


def held(
    contact: Contact,
    by_pk: Mapping[int, og.Ongoing],
    keys: Mapping[int, str],
    pinned_out: set[tuple[int, int]],
) -> frozenset[str]:
    """The persona keys `contact` holds once its answers are applied, by the
    writer's rules (memberships.rules)."""
    sources = {p: set(s) for p, s in contact.stored.items()}
    for crit_pk, matched in contact.answers.items():
        crit = by_pk[crit_pk]
        p = crit.persona_pk
        rules.answer(
            sources.setdefault(p, set()),
            crit_pk,
            matched,
            crit.exit_remove,
            (p, contact.pk) in pinned_out,
        )
    return (
        frozenset(keys[p] for p, s in sources.items() if rules.holds(s) and p in keys)
        | contact.outside
    )


def settle(
    contact: Contact,
    order: Sequence[og.Ongoing],
    by_pk: Mapping[int, og.Ongoing],
    keys: Mapping[int, str],
    pinned_out: set[tuple[int, int]],
    evaluate: Evaluate,
) -> bool:
    """Evaluate `order`'s criteria again for `contact` wherever the personas they
    read differ from those of the step's start, until the answers stop moving.
    Updates `contact.answers`; returns False when they did not settle."""
    base = held(Contact(contact.pk, contact.stored, contact.outside), by_pk, keys, pinned_out)
    # The personas (of those it reads) each answer was computed with: the first
    # evaluation saw the step's start.
    seen = {c.pk: base & c.personas for c in order}
    for _ in range(MAX_PASSES):
        moved = False
        now = held(contact, by_pk, keys, pinned_out)
        for crit in order:
            wanted = now & crit.personas
            if wanted == seen[crit.pk]:
                continue
            seen[crit.pk] = wanted
            answer = evaluate(crit, contact.pk, now)
            if answer is None:
                contact.answers.pop(crit.pk, None)
                continue
            if contact.answers.get(crit.pk) != answer:
                contact.answers[crit.pk] = answer
                now = held(contact, by_pk, keys, pinned_out)
                moved = True
        if not moved:
            return True
    return False


def contacts_of(
    holders: Holders, answers: Mapping[int, dict[int, bool]], covered: set[int]
) -> dict[int, dict[int, frozenset[int]]]:
    """contact pk -> persona pk -> stored sources, for the contacts answered."""
    out: dict[int, dict[int, frozenset[int]]] = {cpk: {} for cpk in answers}
    for (ppk, cpk), srcs in holders.sources.items():
        mine = out.get(cpk)
        if mine is not None and ppk in covered and srcs:
            mine[ppk] = frozenset(srcs)
    return out
