"""Evaluating ongoing criteria for a batch: per contact, set-based, and settled.

Per contact (the usual step): each changed contact's touched criteria run on
its loaded input (`evaluate_batch`); a criterion whose top-level guard fails
is answered "no match" without running (`prune`). Set-based (an import: many
changed contacts): each criterion runs once in the store (`evaluate_set_based`).
Then persona(...) criteria are settled in memory (`settle`, see cascade.py)
before anything is written.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Iterable, Sequence
from collections.abc import Set as AbstractSet
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import numpy as np
from sqlalchemy import Connection, select

from personatag.criteria.to_python import EvalInput
from personatag.criteria.to_sql import compile_sql
from personatag.definitions.personas import persona_pks
from personatag.domain import Catalog
from personatag.engines.local.stream import cascade, rechecks
from personatag.engines.local.stream import ongoing as og
from personatag.engines.local.stream.inputs import Needs, Publications, load_inputs
from personatag.memberships.log import fetch_ids
from personatag.memberships.rows import Holders
from personatag.store import Store
from personatag.store.transient import transient

log = logging.getLogger(__name__)


@dataclass
class Evaluated:
    """The answers of one batch: what was evaluated, what matched, re-check times."""

    inputs: dict[int, EvalInput]
    evaluated: list[tuple[int, int]]  # (contact pk, criterion pk)
    matched: set[tuple[int, int]]
    due: dict[tuple[int, int], datetime | None]  # (criterion pk, contact pk) -> next re-check
    errors: list[tuple[int, int, str]]  # (criterion pk, contact pk, message)
    # (contact pk, criterion pk) answered "no match" without evaluating (see prune)
    unmatched: list[tuple[int, int]] = field(default_factory=list)


def prune(
    work: dict[int, set[int]], inputs: dict[int, EvalInput], index: og.Index
) -> tuple[dict[int, set[int]], list[tuple[int, int]]]:
    """Split (contact, criterion) pairs into those to evaluate and those whose
    guard fails (`region = "EMEA" and ...` for an AMER contact): a failed top-level
    conjunct means the criterion is not true, so their answer is known without
    evaluating them. They are still answered (not matched): a membership held
    through such a criterion exits like any other non-match. Contacts without an
    input (deleted) are dropped."""
    out: dict[int, set[int]] = {}
    failed: list[tuple[int, int]] = []
    by_pk = index.by_pk
    for cpk, crits in work.items():
        inp = inputs.get(cpk)
        if inp is None:
            continue
        row = inp.contact
        keep = set()
        for pk in crits:
            guard = by_pk[pk].guard
            if guard is None or row.get(guard[0]) in guard[1]:
                keep.add(pk)
            else:
                failed.append((cpk, pk))
        if keep:
            out[cpk] = keep
    return out, failed


def evaluate_set(
    conn: Connection,
    store: Store,
    crit: og.Ongoing,
    catalog: Catalog,
    as_of: datetime,
    among: Sequence[int] | None = None,
) -> Any:
    """Every contact pk `crit` matches now (of `among`, when given: a few),
    evaluated set-based in the store."""
    c = store.tables.contacts
    cond = compile_sql(
        crit.node,
        tables=store.tables,
        catalog=catalog,
        persona_pks=persona_pks(conn, store),
        as_of=as_of,
        dialect=store.dialect,
    )
    q = select(c.c.pk).where(cond)
    if among is not None:
        q = q.where(c.c.pk.in_(among))
    return fetch_ids(conn, store, q)


def store_answers(
    store: Store, ev: Evaluated, index: og.Index, catalog: Catalog, as_of: datetime
) -> None:
    """Answer in the store the pairs `ev` failed to evaluate, in place: a
    value another program stored with another type (`abc` in an INT field,
    text in a TIMESTAMP one) fails the Python evaluator, where the store's
    SQL, which a full evaluation and reconciliation run, compares it by its
    own rules. Re-check times come from the contact's input (None where that
    fails too). Pairs the store also fails on (not on a lost connection,
    which fails the step) stay errors."""
    by_crit: dict[int, list[tuple[int, str]]] = {}
    for crit_pk, cpk, message in ev.errors:
        by_crit.setdefault(crit_pk, []).append((cpk, message))
    still: list[tuple[int, int, str]] = []
    answered: list[tuple[int, int, str]] = []
    for crit_pk, failed in by_crit.items():
        crit = index.by_pk.get(crit_pk)
        cpks = sorted({cpk for cpk, _ in failed})
        if crit is None or crit.personas:  # persona(...): settled in memory (cascade)
            still += [(crit_pk, cpk, message) for cpk, message in failed]
            continue
        try:
            with store.read() as conn:
                hits = set(evaluate_set(conn, store, crit, catalog, as_of, cpks).tolist())
        except Exception as exc:
            if transient(exc) is not None:
                raise
            still += [(crit_pk, cpk, message) for cpk, message in failed]
            continue
        answered += [(crit_pk, cpk, message) for cpk, message in failed]
        for cpk in cpks:
            hit = cpk in hits
            ev.evaluated.append((cpk, crit_pk))
            if hit:
                ev.matched.add((cpk, crit_pk))
            if crit.windows:
                inp = ev.inputs.get(cpk)
                try:
                    due = None if inp is None else crit.next_due(inp, hit)
                except Exception:  # the same odd value: time cannot move it
                    due = None
                ev.due[(crit_pk, cpk)] = due
    if answered:
        crit_pk, cpk, message = answered[0]
        log.info(
            "%d pair(s) the stream's evaluator failed on were answered by the store "
            "(criterion pk %d, contact pk %d: %s%s)",
            len(answered),
            crit_pk,
            cpk,
            message,
            ", ..." if len(answered) > 1 else "",
        )
    ev.errors = still


def needs(crits: Iterable[og.Ongoing], index: og.Index) -> Needs:
    """What evaluating `crits` reads (with the persona(...) criteria a settle may run)."""
    chosen = list(crits)
    if any(c.personas for c in index.criteria):
        chosen += [c for c in index.criteria if c.personas]
    return Needs(
        read_days=max((c.read_days for c in chosen), default=0),
        login_days=max((c.login_days for c in chosen), default=0),
        personas=any(c.personas for c in chosen),
    )


def evaluate_batch(
    work: dict[int, set[int]], inputs: dict[int, EvalInput], index: og.Index
) -> Evaluated:
    """Evaluate each contact's criteria on its loaded input, in process (contacts
    without an input are gone and skipped)."""
    out = Evaluated(inputs, [], set(), {}, [])
    for cpk, crits in work.items():
        inp = inputs.get(cpk)
        if inp is None:
            continue
        for crit_pk in crits:
            eval_one(index.by_pk[crit_pk], cpk, inp, out)
    return out


def eval_one(crit: og.Ongoing, cpk: int, inp: EvalInput, out: Evaluated) -> None:
    """Answer one (contact, criterion) pair into `out`; an exception becomes an error."""
    try:
        hit = crit.evaluate(inp) is True
        due = crit.next_due(inp, hit) if crit.windows else None
    except Exception as exc:  # one bad evaluation must not stop the stream
        out.errors.append((crit.pk, cpk, f"{type(exc).__name__}: {exc}"))
        return
    out.evaluated.append((cpk, crit.pk))
    if hit:
        out.matched.add((cpk, crit.pk))
    if crit.windows:
        out.due[(crit.pk, cpk)] = due


def _pair_by_pair(
    conn: Connection,
    store: Store,
    crit: og.Ongoing,
    cpks: Sequence[int],
    index: og.Index,
    now: datetime,
    pubs: Publications,
    out: Evaluated,
    failed: Exception,
) -> None:
    """`crit` for `cpks` on their loaded inputs, into `out` (an error for each
    contact it fails for), when the store could not run it set-based: one
    value the store cannot read (a list that is not JSON, written outside
    personatag) fails the whole statement, and the other contacts must still
    be answered, not left as they were."""
    log.warning(
        "criterion %s failed set-based (%s: %s); evaluating its %d contacts one by one",
        crit.label,
        type(failed).__name__,
        str(failed).split("\n", 1)[0],
        len(cpks),
    )
    keys = {pk: key for key, pk in persona_pks(conn, store).items()}
    inputs = load_inputs(conn, store, cpks, needs((crit,), index), now, pubs, keys)
    for cpk in cpks:
        inp = inputs.get(cpk)
        if inp is not None:
            eval_one(crit, cpk, inp, out)


def evaluate_set_based(
    store: Store, work: dict[int, set[int]], index: og.Index, now: datetime, pubs: Publications
) -> Evaluated:
    """Many contacts changed (an import): each criterion runs once in the store
    (pair by pair for the changed contacts when the store fails it)."""
    by_crit: dict[int, list[int]] = {}
    for cpk, crits in work.items():
        for p in crits:
            by_crit.setdefault(p, []).append(cpk)
    out = Evaluated({}, [], set(), {}, [])
    ahead: dict[str, set[int]] = {}  # event or field -> contacts with a moment after now
    with store.read() as conn:
        catalog = store.catalog(conn)
        for crit_pk, cpks in by_crit.items():
            crit = index.by_pk[crit_pk]
            try:
                hits = set(evaluate_set(conn, store, crit, catalog, now).tolist())
            except Exception as exc:
                _pair_by_pair(conn, store, crit, sorted(cpks), index, now, pubs, out, exc)
                continue
            future: set[int] = set()
            if crit.windows and crit.falls_only:
                for name, _ in crit.windows:
                    if name not in ahead:
                        ahead[name] = rechecks.moving(conn, store, catalog, name, now, sorted(work))
                    future |= ahead[name]
            for cpk in cpks:
                out.evaluated.append((cpk, crit_pk))
                if cpk in hits:
                    out.matched.add((cpk, crit_pk))
                    if crit.windows:
                        # The exact re-check time comes from a per-contact evaluation.
                        out.due[(crit_pk, cpk)] = now
                elif crit.windows and (not crit.falls_only or cpk in future):
                    out.due[(crit_pk, cpk)] = now
    return out


# What a step's changes name, grouped: (contact pks, the criteria they touch).
# A set-based step keeps the groups as they came (an import's one feed row
# names up to millions of contacts, all touching the same criteria) instead of
# a set of criteria per contact, which for 1M contacts and 1,000 criteria did
# not fit in 24 GB.
Groups = list[tuple[Sequence[int], AbstractSet[int]]]


@dataclass
class SetAnswers:
    """A set-based step's answers, one criterion at a time (sorted pk arrays)."""

    contacts: dict[int, np.ndarray]  # criterion pk -> the contacts evaluated
    hits: dict[int, np.ndarray]  # criterion pk -> those of them it matches
    due_now: dict[int, np.ndarray]  # window criterion pk -> contacts to re-check now
    errors: list[tuple[int, int, str]]  # (criterion pk, contact pk, message)
    evaluations: int = 0


def evaluate_groups(
    store: Store, groups: Groups, index: og.Index, now: datetime, pubs: Publications
) -> SetAnswers:
    """Many contacts changed (an import): each criterion touched runs once in the
    store, and only its answers for the contacts that changed are kept (pair
    by pair for them when the store fails it: _pair_by_pair). A
    window criterion's contacts are re-checked now (the exact next moment comes
    from a per-contact evaluation) when it matches them, or, for one that only
    falls with time, when it does not but they have a moment after now."""
    parts: dict[int, list[Sequence[int]]] = {}
    for pks, crits in groups:
        for crit_pk in crits:
            parts.setdefault(crit_pk, []).append(pks)
    made: dict[tuple[int, ...], np.ndarray] = {}  # the same groups: one array
    out = SetAnswers({}, {}, {}, [])
    everyone: list[int] | None = None
    ahead: dict[str, np.ndarray] = {}  # event or field -> contacts with a moment after now
    with store.read() as conn:
        catalog = store.catalog(conn)
        for crit_pk, lists in parts.items():
            key = tuple(id(x) for x in lists)
            contacts = made.get(key)
            if contacts is None:
                contacts = np.unique(np.concatenate([np.asarray(x, dtype=np.int64) for x in lists]))
                made[key] = contacts
            crit = index.by_pk[crit_pk]
            try:
                found = np.asarray(evaluate_set(conn, store, crit, catalog, now), dtype=np.int64)
            except Exception as exc:
                one = Evaluated({}, [], set(), {}, [])
                _pair_by_pair(conn, store, crit, contacts.tolist(), index, now, pubs, one, exc)
                out.errors += one.errors
                answered = np.array(sorted(c for c, _ in one.evaluated), dtype=np.int64)
                out.contacts[crit_pk] = answered
                out.hits[crit_pk] = np.array(sorted(c for c, _ in one.matched), dtype=np.int64)
                out.evaluations += len(answered)
                if crit.windows:  # their exact next moments: per contact, now
                    out.due_now[crit_pk] = answered
                continue
            hits = np.intersect1d(found, contacts)
            out.contacts[crit_pk], out.hits[crit_pk] = contacts, hits
            out.evaluations += len(contacts)
            if not crit.windows:
                continue
            if not crit.falls_only:
                out.due_now[crit_pk] = contacts
                continue
            due = hits
            for name, _ in crit.windows:
                if name not in ahead:
                    if everyone is None:
                        everyone = np.unique(
                            np.concatenate([np.asarray(x, dtype=np.int64) for x, _ in groups])
                        ).tolist()
                    moving = rechecks.moving(conn, store, catalog, name, now, everyone)
                    ahead[name] = np.array(sorted(moving), dtype=np.int64)
                due = np.union1d(due, np.intersect1d(ahead[name], contacts))
            out.due_now[crit_pk] = due
    return out


def settle(
    conn: Connection,
    store: Store,
    pubs: Publications,
    index: og.Index,
    holders: Holders,
    answers: dict[int, dict[int, bool]],
    covered: set[int],
    ev: Evaluated,
    keys: dict[int, str],
    now: datetime,
) -> None:
    """Bring each contact's persona(...) answers to where a full evaluation of
    the same data would be (see cascade.py), before anything is written."""
    order = index.persona_order
    covered_keys = {keys[p] for p in covered if p in keys}
    stored = cascade.contacts_of(holders, answers, covered)
    # Personas no criterion reads can move without anything to settle (a bulk
    # tag moving s0 enters many contacts into s3, which nobody reads).
    read: frozenset[str] = frozenset().union(*(c.personas for c in order))
    contacts: dict[int, cascade.Contact] = {}
    lacking: list[int] = []
    for cpk, mine in answers.items():
        inp = ev.inputs.get(cpk)
        outside = frozenset() if inp is None else inp.personas - covered_keys
        c = cascade.Contact(cpk, stored[cpk], outside, mine)
        start = cascade.held(cascade.Contact(cpk, c.stored, outside), index.by_pk, keys, set())
        if (cascade.held(c, index.by_pk, keys, holders.pinned_out) ^ start) & read:
            contacts[cpk] = c  # personas it moves in this step are read
            if inp is None:
                lacking.append(cpk)
    if not contacts:
        return
    if lacking:  # evaluated set-based: load what the persona criteria read
        loaded = load_inputs(conn, store, sorted(lacking), needs(order, index), now, pubs, keys)
        ev.inputs.update(loaded)
        for cpk in lacking:
            inp = loaded.get(cpk)
            if inp is None:
                contacts.pop(cpk)
            else:
                contacts[cpk].outside = inp.personas - covered_keys

    def evaluate(crit: og.Ongoing, cpk: int, personas: frozenset[str]) -> bool | None:
        inp = dataclasses.replace(ev.inputs[cpk], personas=personas, memo={})
        sub = Evaluated({}, [], set(), {}, [])
        eval_one(crit, cpk, inp, sub)
        ev.errors.extend(sub.errors)
        ev.due.update(sub.due)
        ev.evaluated.extend(sub.evaluated)
        return bool(sub.matched) if sub.evaluated else None

    circle = "persona(...) criteria read each other in a circle that never settles"
    for cpk, c in contacts.items():
        if not cascade.settle(c, order, index.by_pk, keys, holders.pinned_out, evaluate):
            first = next((x.pk for x in order if x.pk in c.answers), order[0].pk)
            ev.errors.append((first, cpk, circle))
