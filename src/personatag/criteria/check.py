"""Names and types: validate an AST against a Catalog, and list what it reads."""

from __future__ import annotations

import difflib
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

from personatag.criteria.ast import (
    And,
    Between,
    Boolean,
    Compare,
    Contains,
    Count,
    Field,
    In,
    IsNull,
    Node,
    Not,
    Number,
    Or,
    Persona,
    Pos,
    String,
    StringMatch,
    Timestamp,
    Value,
    Within,
)
from personatag.criteria.errors import CriteriaError
from personatag.criteria.limits import (
    INT64_MAX,
    LIST_PATH_HINT,
    MAX_CONDITIONS,
    MAX_DEPTH,
    MAX_LIST_VALUES,
    MAX_STRING_CHARS,
)
from personatag.criteria.text import value_text
from personatag.domain import Catalog, FieldType, parse_timestamp, surrogate_at, surrogate_message

# Which value kind each field type accepts in =, !=, <, ..., between and in.
_ACCEPTS: Mapping[FieldType, type] = {
    FieldType.STRING: String,
    FieldType.INT: Number,
    FieldType.FLOAT: Number,
    FieldType.BOOL: Boolean,
    FieldType.TIMESTAMP: Timestamp,
}
_KIND: Mapping[type, str] = {
    String: "a string",
    Number: "a number",
    Boolean: "a boolean",
    Timestamp: "a timestamp",
}
_NUMBER = re.compile(r"-?[0-9]+(\.[0-9]+)?([eE][+-]?[0-9]+)?")


def _a(field_type: FieldType) -> str:
    return f"an {field_type}" if field_type == FieldType.INT else f"a {field_type}"


def did_you_mean(name: str, candidates: Iterable[str]) -> str:
    """' (did you mean 'x'?)' for the closest candidate, or ''."""
    pool = sorted(candidates)
    if name.lower() in pool and name.lower() != name:
        return f" (did you mean '{name.lower()}'?)"
    close = difflib.get_close_matches(name, pool, n=1, cutoff=0.6)
    return f" (did you mean '{close[0]}'?)" if close else ""


def check(node: Node, catalog: Catalog, *, personas: bool = True) -> None:
    """Raise CriteriaError for the first unknown name or type mismatch in `node`.

    With personas=False, persona keys are not checked against the catalog (for
    evaluators that only test membership and never look a persona up).
    """
    check_limits(node)
    _Checker(catalog, personas).node(node, "$.expr", inside_count=False)


def check_limits(node: Node) -> None:
    """Raise CriteriaError when `node` exceeds a limit of `personatag.criteria.limits`.

    Iterative, so any tree the parsers built is walked without recursion.
    """
    conditions = 0
    todo: list[tuple[Node, str, int]] = [(node, "$.expr", 0)]  # depth: groups above
    while todo:
        n, path, depth = todo.pop()
        if depth > MAX_DEPTH:
            raise _Checker.error(
                f"the criterion nests more than {MAX_DEPTH} levels deep", n.pos, path
            )
        if isinstance(n, And | Or):
            todo.extend(
                (a, f"{path}.args[{i}]", depth + 1) for i, a in reversed(list(enumerate(n.args)))
            )
            continue
        if isinstance(n, Not):
            todo.append((n.arg, f"{path}.arg", depth + 1))
            continue
        conditions += 1
        if conditions > MAX_CONDITIONS:
            raise _Checker.error(
                f"the criterion has more than {MAX_CONDITIONS} conditions: combine values "
                f"with 'in' (up to {MAX_LIST_VALUES} a list), or {LIST_PATH_HINT}",
                n.pos,
                path,
            )
        if isinstance(n, Count) and n.where is not None:
            todo.append((n.where, f"{path}.where", depth + 1))
        if isinstance(n, In | Contains) and len(n.values) > MAX_LIST_VALUES:
            raise _Checker.error(
                f"a list has {len(n.values):,} values, over the limit of {MAX_LIST_VALUES:,}: "
                f"{LIST_PATH_HINT}",
                n.pos,
                f"{path}.values",
            )
        strings: list[tuple[str, Pos | None, str]] = []
        if isinstance(n, Contains) and n.op == "contains":  # one value, as "value" in JSON
            v0 = n.values[0]
            if isinstance(v0, String):
                strings.append((v0.value, v0.pos, f"{path}.value"))
        elif isinstance(n, In | Contains):
            strings += [
                (v.value, v.pos, f"{path}.values[{i}]")
                for i, v in enumerate(n.values)
                if isinstance(v, String)
            ]
        elif isinstance(n, StringMatch):
            strings.append((n.pattern.value, n.pattern.pos, f"{path}.value"))
        elif isinstance(n, Persona):
            strings.append((n.key, n.pos, f"{path}.key"))
        else:
            value = getattr(n, "value", None)
            if isinstance(value, String):
                strings.append((value.value, value.pos, f"{path}.value"))
            for end in ("low", "high"):
                v = getattr(n, end, None)
                if isinstance(v, String):
                    strings.append((v.value, v.pos, f"{path}.{end}"))
        for text, pos, spath in strings:
            if len(text) > MAX_STRING_CHARS:
                raise _Checker.error(
                    f"a string of {len(text):,} characters is over the limit of "
                    f"{MAX_STRING_CHARS:,}",
                    pos,
                    spath,
                )
            at = surrogate_at(text)
            if at is not None:
                raise _Checker.error(surrogate_message(text, at), pos, spath)
            if "\x00" in text:  # PostgreSQL refuses it; refused on every store alike
                raise _Checker.error(
                    f"a NUL character at character {text.index(chr(0)) + 1} of a string: "
                    "no store holds it",
                    pos,
                    spath,
                )


@dataclass(frozen=True)
class _Scope:
    fields: Mapping[str, FieldType]
    label: str  # "field" or "publication field"


class _Checker:
    def __init__(self, catalog: Catalog, personas: bool) -> None:
        self.catalog = catalog
        self.check_personas = personas
        self.contacts = _Scope(catalog.contact_fields, "field")
        self.publications = _Scope(catalog.publication_fields, "publication field")

    @staticmethod
    def error(message: str, pos: Pos | None, path: str) -> CriteriaError:
        if pos is not None:
            return CriteriaError(message, line=pos.line, col=pos.col)
        return CriteriaError(message, path=path)

    def node(self, node: Node, path: str, *, inside_count: bool) -> None:
        scope = self.publications if inside_count else self.contacts
        match node:
            case And(args) | Or(args):
                for i, arg in enumerate(args):
                    self.node(arg, f"{path}.args[{i}]", inside_count=inside_count)
            case Not(arg):
                self.node(arg, f"{path}.arg", inside_count=inside_count)
            case Count(event, where, value=k, pos=pos):
                if not _in_range(k):
                    raise self.error(
                        f"count(...) compares with a whole number up to {INT64_MAX}",
                        pos,
                        f"{path}.value",
                    )
                if inside_count:
                    raise self.error(
                        "count(...) cannot be used inside count(read where ...)", pos, path
                    )
                if where is not None:
                    if event == "login":
                        raise self.error(
                            "count(login ...) cannot have a 'where': logins have no fields "
                            "(use count(read where ...) to filter by publication)",
                            where.pos,
                            f"{path}.where",
                        )
                    self.node(where, f"{path}.where", inside_count=True)
            case Persona(key, pos=pos):
                if inside_count:
                    raise self.error(
                        "persona(...) cannot be used inside count(read where ...)", pos, path
                    )
                if self.check_personas and key not in self.catalog.personas:
                    hint = did_you_mean(key, self.catalog.personas) or (
                        " (it does not exist or is archived)"
                    )
                    raise self.error(f"unknown persona '{key}'{hint}", pos, f"{path}.key")
            case _:
                self.predicate(node, scope, path)

    def field_type(self, f: Field, scope: _Scope, path: str) -> FieldType:
        found = scope.fields.get(f.name)
        if found is not None:
            return found
        if scope is self.publications and f.name in self.contacts.fields:
            names = ", ".join(sorted(scope.fields))
            raise self.error(
                f"'{f.name}' is a contact field; inside count(read where ...) names are "
                f"publication fields: {names}",
                f.pos,
                f"{path}.field",
            )
        hint = did_you_mean(f.name, scope.fields)
        raise self.error(f"unknown {scope.label} '{f.name}'{hint}", f.pos, f"{path}.field")

    def predicate(self, node: Node, scope: _Scope, path: str) -> None:
        match node:
            case Compare(f, op, value):
                ft = self.field_type(f, scope, path)
                self.not_list(f, ft, op, path)
                if op not in ("=", "!=") and ft == FieldType.BOOL:
                    raise self.bool_only(f, op, path)
                self.value(f, ft, value, f"{path}.value")
            case Between(f, low, high):
                ft = self.field_type(f, scope, path)
                self.not_list(f, ft, "between", path)
                if ft == FieldType.BOOL:
                    raise self.bool_only(f, "between", path)
                self.value(f, ft, low, f"{path}.low")
                self.value(f, ft, high, f"{path}.high")
            case In(f, values, negated):
                ft = self.field_type(f, scope, path)
                self.not_list(f, ft, "not in" if negated else "in", path)
                for i, v in enumerate(values):
                    self.value(f, ft, v, f"{path}.values[{i}]")
            case Contains(f, op, values):
                ft = self.field_type(f, scope, path)
                if ft != FieldType.LIST:
                    raise self.error(
                        f"'{op}' needs a list field, but {f.name} is {_a(ft)} field (use = or in)",
                        f.pos,
                        f"{path}.field",
                    )
                for i, v in enumerate(values):
                    vpath = f"{path}.value" if op == "contains" else f"{path}.values[{i}]"
                    if not isinstance(v, String):
                        raise self.error(
                            f"type mismatch: {f.name} holds strings, but {value_text(v)} is "
                            f"{_KIND[type(v)]}",
                            v.pos,
                            vpath,
                        )
            case StringMatch(f, op, _):
                ft = self.field_type(f, scope, path)
                if ft != FieldType.STRING:
                    raise self.error(
                        f"'{op}' needs a string field, but {f.name} is {_a(ft)} field",
                        f.pos,
                        f"{path}.field",
                    )
            case IsNull(f):
                self.field_type(f, scope, path)
            case Within(f):
                ft = self.field_type(f, scope, path)
                if ft != FieldType.TIMESTAMP:
                    raise self.error(
                        f"'within' needs a timestamp field, but {f.name} is {_a(ft)} field",
                        f.pos,
                        f"{path}.field",
                    )
            case _:  # pragma: no cover - every node kind is handled above
                raise TypeError(f"not a criteria node: {node!r}")

    def not_list(self, f: Field, ft: FieldType, op: str, path: str) -> None:
        if ft == FieldType.LIST:
            raise self.error(
                f"{f.name} is a list field: use contains, contains_any or contains_all "
                f"instead of '{op}'",
                f.pos,
                f"{path}.field",
            )

    def bool_only(self, f: Field, op: str, path: str) -> CriteriaError:
        return self.error(
            f"'{op}' does not apply to the bool field {f.name}: use =, != or in",
            f.pos,
            f"{path}.field",
        )

    def value(self, f: Field, ft: FieldType, value: Value, path: str) -> None:
        if isinstance(value, _ACCEPTS[ft]):
            if isinstance(value, Number) and not _in_range(value.value):
                raise self.error(
                    f"number {value.value} is out of range: whole numbers must lie within "
                    f"+/-{INT64_MAX}",
                    value.pos,
                    path,
                )
            return
        shown = value_text(value)
        hint = ""
        if ft == FieldType.TIMESTAMP and isinstance(value, String):
            try:
                parse_timestamp(value.value)
                hint = f" (write date({shown}))"
            except ValueError:
                pass
        elif ft == FieldType.STRING and isinstance(value, Number | Boolean):
            hint = f' (write "{shown}" for text)'
        elif isinstance(value, String) and _unquoted(ft, value.value):
            hint = f" (write {value.value} without quotes)"
        raise self.error(
            f"type mismatch: {f.name} is {_a(ft)} field, but {shown} is {_KIND[type(value)]}{hint}",
            value.pos,
            path,
        )


def _in_range(n: int | float) -> bool:
    # Whole numbers are bound as BIGINT; floats are any finite double.
    return isinstance(n, float) or -INT64_MAX <= n <= INT64_MAX


def _unquoted(ft: FieldType, text: str) -> bool:
    """Whether `text` would be a valid value for `ft` written without quotes."""
    if ft == FieldType.BOOL:
        return text in ("true", "false")
    if ft in (FieldType.INT, FieldType.FLOAT):
        return _NUMBER.fullmatch(text) is not None
    return False


# ---- references -------------------------------------------------------------


@dataclass(frozen=True)
class References:
    """What a criterion reads; used to run ongoing criteria only on relevant changes."""

    contact_fields: frozenset[str]
    publication_fields: frozenset[str]
    events: frozenset[str]  # "read" and/or "login"
    personas: frozenset[str]
    time_windows: bool  # whether the result can change with as_of alone (within, count)


def references(node: Node) -> References:
    contact: set[str] = set()
    publication: set[str] = set()
    events: set[str] = set()
    personas: set[str] = set()
    windows = False

    def walk(n: Node, fields: set[str]) -> None:
        nonlocal windows
        match n:
            case And(args) | Or(args):
                for a in args:
                    walk(a, fields)
            case Not(arg):
                walk(arg, fields)
            case Count(event, where):
                events.add(event)
                windows = True
                if where is not None:
                    walk(where, publication)
            case Persona(key):
                personas.add(key)
            case Within(f):
                windows = True
                fields.add(f.name)
            case Compare(f) | Between(f) | In(f) | Contains(f) | StringMatch(f) | IsNull(f):
                fields.add(f.name)

    walk(node, contact)
    return References(
        contact_fields=frozenset(contact),
        publication_fields=frozenset(publication),
        events=frozenset(events),
        personas=frozenset(personas),
        time_windows=windows,
    )
