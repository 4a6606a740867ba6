"""Criteria AST -> a plan of vectorised numpy steps over a Frame.

`compile_columnar(node, catalog)` walks the tree once; the plan it returns is
called with a frame and an as-of time as often as needed and gives a bool mask
over the frame's contact rows, True exactly where the criterion is TRUE. The
logic is SQL's three values, as in the SQL and Python compilers: a NULL field
makes its predicate UNKNOWN, `not` keeps UNKNOWN, and only TRUE matches.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from typing import TypeAlias

import numpy as np
from pyroaring import BitMap

from personatag.criteria.ast import And, Count, Node, Not, Or, Persona
from personatag.criteria.check import check
from personatag.domain import Catalog, FieldType
from personatag.engines.columnar.compile_events import (
    PublicationFilter,
    count_leaf,
    persona_leaf,
    persona_set,
    pks_to_mask,
)
from personatag.engines.columnar.compile_values import (
    Ctx,
    Leaf,
    Masks,
    Tri,
    attribute_leaf,
    micros,
)
from personatag.engines.columnar.frame import ODD, Array, Frame

__all__ = ["ColumnarPlan", "compile_columnar", "evaluate", "frame_catalog"]


class ColumnarPlan:
    """A compiled criterion: `plan(frame, as_of)` -> bool mask over contact rows."""

    def __init__(self, node: Node, root: Leaf) -> None:
        self.node = node
        self._root = root
        self._masks = Masks()

    def truth(self, frame: Frame, as_of: datetime) -> Tri:
        """Where the criterion is TRUE and where FALSE (UNKNOWN: neither)."""
        if as_of.tzinfo is None:
            raise ValueError("as_of must be a timezone-aware datetime")
        ctx = Ctx(frame, frame.contacts, "contacts", micros(as_of), self._masks)
        return self._root(ctx)

    def __call__(self, frame: Frame, as_of: datetime) -> Array:
        return np.asarray(self.truth(frame, as_of).true(), dtype=bool)


def compile_columnar(node: Node, catalog: Catalog) -> ColumnarPlan:
    """Check `node` against `catalog` and compile it once for many evaluations.

    Persona keys are not looked up in the catalog: the frame's persona sets
    answer for them (an unknown key is held by nobody, as in the Python
    evaluator). Raises CriteriaError for unknown fields or type mismatches.
    """
    check(node, catalog, personas=False)
    compiler = _Compiler(catalog)
    return ColumnarPlan(node, compiler.node(node, dict(catalog.contact_fields)))


def evaluate(node: Node, frame: Frame, as_of: datetime, catalog: Catalog | None = None) -> Array:
    """The rows of `frame` where `node` is TRUE at `as_of`, as a bool mask.

    Without a catalog, the frame's own columns (names and kinds) are the catalog.
    """
    return compile_columnar(node, catalog or frame_catalog(frame))(frame, as_of)


def frame_catalog(frame: Frame) -> Catalog:
    """The fields a frame holds, as a Catalog to check criteria against."""
    return Catalog(
        contact_fields={k: c.kind for k, c in frame.contacts.columns.items() if k != ODD},
        publication_fields={k: c.kind for k, c in frame.publications.columns.items() if k != ODD},
    )


# ---- persona algebra -------------------------------------------------------------------
# A subtree of persona(...) joined by and / or / not is a set expression: it
# runs on the bitmaps and becomes a mask once. (set, complemented) stands for
# the set or for every contact outside it.

_SetExpr: TypeAlias = Callable[[Frame], tuple[BitMap, bool] | None]


def _persona_only(node: Node) -> bool:
    match node:
        case Persona():
            return True
        case And(args) | Or(args):
            return all(_persona_only(a) for a in args)
        case Not(arg):
            return _persona_only(arg)
    return False


def _group_personas(args: tuple[Node, ...], join: type[And] | type[Or]) -> list[Node]:
    """The args of an and / or with its persona-algebra args joined into one
    (and / or are associative and commutative in three-valued logic too), so
    they meet as bitmaps and become one mask."""
    sets = [a for a in args if _persona_only(a)]
    if len(sets) < 2:
        return list(args)
    return [join(tuple(sets)), *(a for a in args if not _persona_only(a))]


def _set_expr(node: Node) -> _SetExpr:
    """None at evaluation when a persona set is not a BitMap (masks then)."""
    match node:
        case Persona(key):

            def one(frame: Frame) -> tuple[BitMap, bool] | None:
                pks = persona_set(frame, key)
                return (pks, False) if isinstance(pks, BitMap) else None

            return one
        case Not(arg):
            inner = _set_expr(arg)

            def flip(frame: Frame) -> tuple[BitMap, bool] | None:
                got = inner(frame)
                return None if got is None else (got[0], not got[1])

            return flip
        case And(args) | Or(args):
            parts = [_set_expr(a) for a in args]
            union = isinstance(node, Or)

            def combine(frame: Frame) -> tuple[BitMap, bool] | None:
                acc: tuple[BitMap, bool] | None = None
                for part in parts:
                    got = part(frame)
                    if got is None:
                        return None
                    acc = got if acc is None else _combine(acc, got, union)
                return acc

            return combine
    raise TypeError(f"not persona algebra: {node!r}")  # pragma: no cover


def _combine(a: tuple[BitMap, bool], b: tuple[BitMap, bool], union: bool) -> tuple[BitMap, bool]:
    (x, x_out), (y, y_out) = a, b
    if union:  # or: complement both sides and intersect (De Morgan)
        inter = _combine((x, not x_out), (y, not y_out), union=False)
        return inter[0], not inter[1]
    if not x_out and not y_out:
        return x & y, False
    if x_out and y_out:
        return x | y, True
    return (y - x, False) if x_out else (x - y, False)


# ---- the compiler -------------------------------------------------------------------------


@dataclass(frozen=True)
class _Compiler:
    catalog: Catalog

    def node(self, node: Node, fields: dict[str, FieldType]) -> Leaf:
        if _persona_only(node) and not isinstance(node, Persona):
            return self.persona_algebra(node)
        match node:
            case And(args):
                return _and([self.node(a, fields) for a in _group_personas(args, And)])
            case Or(args):
                return _or([self.node(a, fields) for a in _group_personas(args, Or)])
            case Not(arg):
                return _negated(self.node(arg, fields))
            case Count(where=where):
                return count_leaf(node, None if where is None else self.where(where))
            case Persona(key):
                return persona_leaf(key)
        return attribute_leaf(node, fields[node.field.name])

    def where(self, where: Node) -> PublicationFilter:
        leaf = self.node(where, dict(self.catalog.publication_fields))

        def publications(ctx: Ctx) -> Array:
            inner = Ctx(ctx.frame, ctx.frame.publications, "publications", ctx.as_of, ctx.masks)
            return leaf(inner).true()

        return publications

    def persona_algebra(self, node: Node) -> Leaf:
        expr = _set_expr(node)
        fallback = self.general(node)

        def leaf(ctx: Ctx) -> Tri:
            got = expr(ctx.frame)
            if got is None:
                return fallback(ctx)
            mask = pks_to_mask(ctx.frame, got[0])
            return Tri(None, mask) if got[1] else Tri(mask, None)

        return leaf

    def general(self, node: Node) -> Leaf:
        """Persona algebra on masks, for frames whose sets are arrays."""
        match node:
            case And(args):
                return _and([self.general(a) for a in args])
            case Or(args):
                return _or([self.general(a) for a in args])
            case Not(arg):
                return _negated(self.general(arg))
            case Persona(key):
                return persona_leaf(key)
        raise TypeError(f"not persona algebra: {node!r}")  # pragma: no cover


def _and(parts: list[Leaf]) -> Leaf:
    def and_(ctx: Ctx) -> Tri:
        results = [part(ctx) for part in parts]
        t = np.logical_and(results[0].true(), results[1].true())
        for r in results[2:]:
            t &= r.true()
        if all(r.known for r in results):
            return Tri(t, None)

        def false() -> Array:
            f = np.logical_or(results[0].false(), results[1].false())
            for r in results[2:]:
                f |= r.false()
            return f

        return Tri(t, false)

    return and_


def _or(parts: list[Leaf]) -> Leaf:
    # a or b = not (not a and not b); negating a Tri only swaps its masks
    inner = _and([_negated(part) for part in parts])
    return lambda ctx: inner(ctx).negate()


def _negated(part: Leaf) -> Leaf:
    return lambda ctx: part(ctx).negate()
