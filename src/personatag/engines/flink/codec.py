"""JSON lines between the Flink stream engine and its streaming job.

Three kinds of line, all plain JSON (ASCII-escaped, so no character in a
contact can break a line or a charset):

- rules (``stream/rules/rules-<gen>.jsonl``): a header line
  ``{"gen": G, "kind": "generation", "criteria": N, "catalog": {...}}`` and one
  line per ongoing criterion ``{"gen": G, "kind": "criterion", "pk", "name",
  "version", "persona_pk", "persona", "exit", "status", "ast"}``;
- work (``stream/changes/batch-<offset>-<n>.jsonl``): one line per contact
  ``{"batch", "gen", "contact", "criteria": [pks], "input": EvalInput}``;
- results (``stream/results/res-*.jsonl``, written by the job): one line per
  (contact, criterion) ``{"batch", "contact", "criterion", "match", "due",
  "error", "retry"}``, and ``{"ack": G, "subtask": i}`` when a subtask holds
  generation G.

Timestamps are integers: microseconds since the Unix epoch, UTC, the store's
own representation, so they survive exactly (no text format, no float).

This module imports only the standard library and personatag modules the
job can import on the cluster.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from personatag.criteria.to_python import EvalInput
from personatag.domain import PUBLICATION_FIELDS, Catalog, FieldType
from personatag.store.types import NotAString

FORMAT = 1
EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_US = timedelta(microseconds=1)
_TS = "t"  # a timestamp value inside a field dict is {"t": microseconds}
# A list item that is not a string (store.types.NotAString: [1, true] written
# outside personatag) is {"s": its text}: as a plain string the job's
# evaluator would match `contains "1"` where the embedded one does not.
_NOT_A_STRING = "s"


class CodecError(ValueError):
    """A line that is not what the other side of the stream writes."""


def micros(at: datetime) -> int:
    """Microseconds since the epoch; a naive datetime is taken as UTC (the store's zone)."""
    if at.tzinfo is None:
        at = at.replace(tzinfo=UTC)
    return (at - EPOCH) // _US


def from_micros(us: int) -> datetime:
    return EPOCH + timedelta(microseconds=us)


def _value(v: Any) -> Any:
    if isinstance(v, datetime):
        return {_TS: micros(v)}
    if isinstance(v, list | tuple):
        return [{_NOT_A_STRING: str(x)} if isinstance(x, NotAString) else x for x in v]
    return v


def _unvalue(v: Any) -> Any:
    if isinstance(v, dict):
        if set(v) != {_TS} or not isinstance(v[_TS], int):
            raise CodecError(f"not an encoded value: {v!r}")
        return from_micros(v[_TS])
    if isinstance(v, list):
        return [_unitem(x) for x in v]
    return v


def _unitem(x: Any) -> Any:
    if isinstance(x, dict):
        if set(x) != {_NOT_A_STRING} or not isinstance(x[_NOT_A_STRING], str):
            raise CodecError(f"not an encoded list item: {x!r}")
        return NotAString(x[_NOT_A_STRING])
    return x


def encode_fields(row: Mapping[str, Any]) -> dict[str, Any]:
    """A contact or publication field dict as JSON values (timestamps tagged)."""
    return {k: _value(v) for k, v in row.items()}


def decode_fields(row: Mapping[str, Any]) -> dict[str, Any]:
    return {k: _unvalue(v) for k, v in row.items()}


def encode_input(inp: EvalInput) -> dict[str, Any]:
    """An EvalInput as a JSON object. Publications shared by several reads are
    written once (`pubs`), reads refer to them by index."""
    pubs: list[dict[str, Any]] = []
    seen: dict[int, int] = {}
    reads = []
    for pub, at in inp.reads:
        i = seen.get(id(pub))
        if i is None:
            i = seen[id(pub)] = len(pubs)
            pubs.append(encode_fields(pub))
        reads.append([i, micros(at)])
    return {
        "contact": encode_fields(inp.contact),
        "pubs": pubs,
        "reads": reads,
        "logins": [micros(at) for at in inp.logins],
        "personas": sorted(inp.personas),
        "as_of": micros(inp.as_of),
    }


def decode_input(data: Mapping[str, Any]) -> EvalInput:
    try:
        pubs = [decode_fields(p) for p in data["pubs"]]
        return EvalInput(
            contact=decode_fields(data["contact"]),
            reads=[(pubs[i], from_micros(at)) for i, at in data["reads"]],
            logins=[from_micros(at) for at in data["logins"]],
            personas=frozenset(data["personas"]),
            as_of=from_micros(data["as_of"]),
        )
    except (KeyError, IndexError, TypeError, ValueError) as exc:
        raise CodecError(f"not an encoded EvalInput: {exc}") from None


def dumps(obj: Any) -> str:
    """One JSON line (no newline): ASCII-escaped, compact, NaN kept as Python does."""
    return json.dumps(obj, separators=(",", ":"), ensure_ascii=True)


# ---- rules ---------------------------------------------------------------------------


def encode_catalog(catalog: Catalog) -> dict[str, Any]:
    return {
        "contact_fields": {k: str(v) for k, v in catalog.contact_fields.items()},
        "publication_fields": {k: str(v) for k, v in catalog.publication_fields.items()},
        "personas": sorted(catalog.personas),
    }


def decode_catalog(data: Mapping[str, Any]) -> Catalog:
    return Catalog(
        contact_fields={k: FieldType(v) for k, v in data["contact_fields"].items()},
        publication_fields={
            k: FieldType(v) for k, v in data.get("publication_fields", PUBLICATION_FIELDS).items()
        },
        personas=frozenset(data.get("personas", ())),
    )


@dataclass(frozen=True)
class Rule:
    """One ongoing criterion as a rules line carries it (enough to rebuild `Ongoing`)."""

    pk: int
    name: str
    version: int
    persona_pk: int
    persona: str
    exit: str
    status: str
    ast: Mapping[str, Any]


def rules_lines(gen: int, catalog: Catalog, rules: Sequence[Rule]) -> list[str]:
    """The lines of one rules generation: a header, then a line per criterion."""
    head = {
        "format": FORMAT,
        "gen": gen,
        "kind": "generation",
        "criteria": len(rules),
        "catalog": encode_catalog(catalog),
    }
    lines = [dumps(head)]
    for r in rules:
        lines.append(
            dumps(
                {
                    "gen": gen,
                    "kind": "criterion",
                    "pk": r.pk,
                    "name": r.name,
                    "version": r.version,
                    "persona_pk": r.persona_pk,
                    "persona": r.persona,
                    "exit": r.exit,
                    "status": r.status,
                    "ast": r.ast,
                }
            )
        )
    return lines


# ---- work and results ---------------------------------------------------------------


def work_line(batch: str, gen: int, contact: int, criteria: Sequence[int], inp: EvalInput) -> str:
    return dumps(
        {
            "batch": batch,
            "gen": gen,
            "contact": contact,
            "criteria": sorted(criteria),
            "input": encode_input(inp),
        }
    )


@dataclass(frozen=True)
class Result:
    """The answer for one (contact, criterion) of a batch."""

    batch: str
    contact: int
    criterion: int
    match: bool
    due: datetime | None
    error: str | None = None
    retry: bool = False  # the job did not hold the work's rules generation yet

    def line(self) -> str:
        return dumps(
            {
                "batch": self.batch,
                "contact": self.contact,
                "criterion": self.criterion,
                "match": self.match,
                "due": None if self.due is None else micros(self.due),
                "error": self.error,
                "retry": self.retry,
            }
        )


def parse_result(data: Mapping[str, Any]) -> Result:
    try:
        due = data["due"]
        return Result(
            batch=str(data["batch"]),
            contact=int(data["contact"]),
            criterion=int(data["criterion"]),
            match=bool(data["match"]),
            due=None if due is None else from_micros(int(due)),
            error=data.get("error"),
            retry=bool(data.get("retry", False)),
        )
    except (KeyError, TypeError, ValueError) as exc:
        raise CodecError(f"not a result line: {exc}") from None
