"""Criterion text -> AST: a lazy tokenizer and a recursive-descent parser.

Precedence, loosest first: `or`, `and`, `not`. Chains of the same operator
become one n-ary node (`a and b and c` is And(a, b, c)); parentheses keep the
nesting they spell, so `to_text` can print the tree back exactly.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass

from personatag.criteria.ast import (
    COMPARE_OPS,
    IDENT_RE,
    KEYWORDS,
    MAX_DAYS,
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
    MAX_DEPTH,
    MAX_NUMBER_CHARS,
    MAX_STRING_CHARS,
    MAX_TEXT_CHARS,
    short,
)
from personatag.criteria.text import quote
from personatag.domain import TimestampRangeError, parse_timestamp

# token kinds
IDENT = "ident"  # a field name or a keyword (keywords have kind == their text)
NUMBER = "number"
STRING = "string"
PUNCT = "punct"
END = "end"

_NUMBER_RE = re.compile(r"-?[0-9]+(\.[0-9]+)?([eE][+-]?[0-9]+)?")
_DIGITS = "0123456789"
_DIGITS_NONEMPTY = tuple(_DIGITS)
_PUNCT = ("<=", ">=", "!=", "=", "<", ">", "(", ")", ",")
# contextual words (valid field names elsewhere) that still must be lower case
_EVENT_WORDS = ("read", "login")
_EXAMPLE = 'region = "EMEA"'


@dataclass(frozen=True, slots=True)
class Token:
    kind: str
    text: str  # the source text (for strings: the unescaped value)
    line: int
    col: int
    value: int | float | str | None = None

    @property
    def pos(self) -> Pos:
        return Pos(self.line, self.col)

    def describe(self) -> str:
        if self.kind == END:
            return "end of input"
        if self.kind == STRING:
            return f"the string {quote(self.text)}"
        return f"'{self.text}'"


class Tokenizer:
    """Produces tokens on demand, so the first error reported is the leftmost one."""

    def __init__(self, text: str) -> None:
        self.text = text
        self.i = 0
        # Lines are counted as the tokens move on (positions only grow), so
        # tokenizing stays linear: (line, start of that line, counted up to).
        self._line, self._line_start, self._counted = 1, 0, 0

    def _where(self, i: int) -> tuple[int, int]:
        """1-based (line, column) of text[i]."""
        text = self.text
        if i < self._counted:  # pragma: no cover - tokens only move forward
            return text.count("\n", 0, i) + 1, i - (text.rfind("\n", 0, i) + 1) + 1
        newlines = text.count("\n", self._counted, i)
        if newlines:
            self._line += newlines
            self._line_start = text.rfind("\n", self._counted, i) + 1
        self._counted = i
        return self._line, i - self._line_start + 1

    def _error(self, message: str, i: int) -> CriteriaError:
        line, col = self._where(i)
        return CriteriaError(message, line=line, col=col)

    def next(self) -> Token:
        text = self.text
        while self.i < len(text) and text[self.i].isspace():
            self.i += 1
        i = self.i
        line, col = self._where(i)
        if i >= len(text):
            return Token(END, "", line, col)
        ch = text[i]
        if ch == '"':
            value = self._string()
            return Token(STRING, value, line, col, value)
        if ch in _DIGITS or (ch == "-" and text[i + 1 : i + 2] in _DIGITS_NONEMPTY):
            m = _NUMBER_RE.match(text, i)
            assert m is not None  # noqa: S101 - guarded by the digit check above
            self.i = m.end()
            raw = m.group()
            whole = not (m.group(1) or m.group(2))
            if len(raw) > MAX_NUMBER_CHARS:  # before int(): it refuses over 4,300 digits
                raise self._error(
                    f"number {short(raw)} is too long: a number is at most "
                    f"{MAX_NUMBER_CHARS} characters (whole numbers lie within +/-{INT64_MAX})",
                    i,
                )
            number: int | float = int(raw) if whole else float(raw)
            if isinstance(number, float) and math.isinf(number):
                raise self._error(f"number {raw} is too large", i)
            return Token(NUMBER, raw, line, col, number)
        m = IDENT_RE.match(text, i)
        if m:
            self.i = m.end()
            word = m.group()
            lower = word.lower()
            if word != lower and (lower in KEYWORDS or lower in _EVENT_WORDS):
                raise self._error(f"keywords are lower case: write '{lower}', not '{word}'", i)
            return Token(word if word in KEYWORDS else IDENT, word, line, col)
        if text.startswith("==", i):
            raise self._error("use '=' to compare, not '=='", i)
        for p in _PUNCT:
            if text.startswith(p, i):
                self.i = i + len(p)
                return Token(PUNCT, p, line, col)
        if ch == "'":
            raise self._error("strings use double quotes: write \"text\", not 'text'", i)
        raise self._error(f"unexpected character {ch!r}", i)

    def _string(self) -> str:
        text, start = self.text, self.i
        out: list[str] = []
        i = start + 1
        while i < len(text):
            ch = text[i]
            if ch == '"':
                self.i = i + 1
                if len(out) > MAX_STRING_CHARS:
                    raise self._error(
                        f"a string of {len(out):,} characters is over the limit of "
                        f"{MAX_STRING_CHARS:,}",
                        start,
                    )
                return "".join(out)
            if "\ud800" <= ch <= "\udfff":
                raise self._error(
                    f"invalid character U+{ord(ch):04X} (a lone surrogate) in a string: "
                    "it is not valid Unicode text",
                    i,
                )
            if ch == "\\":
                nxt = text[i + 1 : i + 2]
                if not nxt:
                    break
                if nxt not in ('"', "\\"):
                    shown = "\\" + nxt
                    raise self._error(
                        f"unknown escape '{shown}' in a string: only \\\" and \\\\ are allowed", i
                    )
                out.append(nxt)
                i += 2
                continue
            out.append(ch)
            i += 1
        raise self._error('unterminated string: add the closing "', start)


def parse(text: str) -> Node:
    """Parse criterion text into an AST (names are not checked: see `check`).

    Text over MAX_TEXT_CHARS and nesting over MAX_DEPTH are refused here, before
    anything is built; the other limits are the checker's.
    """
    if len(text) > MAX_TEXT_CHARS:
        raise CriteriaError(
            f"the criterion is {len(text):,} characters long, over the limit of "
            f"{MAX_TEXT_CHARS:,}: {LIST_PATH_HINT}",
            line=1,
            col=1,
        )
    return _Parser(text).parse()


class _Parser:
    def __init__(self, text: str) -> None:
        self.tokens = Tokenizer(text)
        self.tok = self.tokens.next()
        self.depth = 0  # open parentheses, nots and count(... where ...) around self.tok

    def deeper(self, opening: Token) -> None:
        self.depth += 1
        if self.depth > MAX_DEPTH:
            raise self.error(f"the criterion nests more than {MAX_DEPTH} levels deep", opening)

    # ---- helpers ----

    def advance(self) -> Token:
        tok = self.tok
        self.tok = self.tokens.next()
        return tok

    def at(self, kind: str, text: str | None = None) -> bool:
        return self.tok.kind == kind and (text is None or self.tok.text == text)

    def at_punct(self, text: str) -> bool:
        return self.at(PUNCT, text)

    def error(self, message: str, tok: Token | None = None) -> CriteriaError:
        tok = tok or self.tok
        return CriteriaError(message, line=tok.line, col=tok.col)

    def expect_punct(self, text: str, context: str) -> Token:
        if not self.at_punct(text):
            raise self.error(f"expected '{text}' {context}, found {self.tok.describe()}")
        return self.advance()

    # ---- expressions ----

    def parse(self) -> Node:
        if self.at(END):
            raise self.error(f"empty criterion: write a condition such as {_EXAMPLE}")
        node = self.parse_or()
        if not self.at(END):
            hint = ""
            if self.tok.kind in (IDENT, STRING, NUMBER) or self.at_punct("("):
                hint = " (missing 'and' or 'or'?)"
            elif self.at_punct(")"):
                hint = " (no '(' to close)"
            raise self.error(f"unexpected {self.tok.describe()} after a complete condition{hint}")
        return node

    def parse_or(self) -> Node:
        first = self.tok.pos
        args = [self.parse_and()]
        while self.at("or"):
            self.advance()
            args.append(self.parse_and())
        return args[0] if len(args) == 1 else Or(tuple(args), pos=first)

    def parse_and(self) -> Node:
        first = self.tok.pos
        args = [self.parse_not()]
        while self.at("and"):
            self.advance()
            args.append(self.parse_not())
        return args[0] if len(args) == 1 else And(tuple(args), pos=first)

    def parse_not(self) -> Node:
        if self.at("not"):
            tok = self.advance()
            self.deeper(tok)
            node = Not(self.parse_not(), pos=tok.pos)
            self.depth -= 1
            return node
        return self.parse_primary()

    def parse_primary(self) -> Node:
        if self.at_punct("("):
            opening = self.advance()
            self.deeper(opening)
            node = self.parse_or()
            self.depth -= 1
            if not self.at_punct(")"):
                raise self.error(
                    f"expected ')' to close the '(' at line {opening.line}, col {opening.col}, "
                    f"found {self.tok.describe()}"
                )
            self.advance()
            return node
        if self.at("count"):
            return self.parse_count()
        if self.at("persona"):
            return self.parse_persona()
        if self.at(IDENT):
            return self.parse_predicate()
        if self.tok.kind in (STRING, NUMBER) or self.tok.kind in ("true", "false", "date"):
            shown = quote(self.tok.text) if self.tok.kind == STRING else self.tok.text
            raise self.error(
                f"a condition starts with a field name, not with the value {shown} "
                '(write field = value, e.g. region = "EMEA")'
            )
        raise self.error(f"expected a condition such as {_EXAMPLE}, found {self.tok.describe()}")

    # ---- predicates ----

    def parse_predicate(self) -> Node:
        name = self.advance()
        f = Field(name.text, pos=name.pos)
        pos = name.pos
        tok = self.tok
        if tok.kind == PUNCT and tok.text in COMPARE_OPS:
            self.advance()
            if self.at("null"):
                fix = "is not null" if tok.text == "!=" else "is null"
                raise self.error(
                    f"use '{name.text} {fix}' instead of '{name.text} {tok.text} null' "
                    "(a comparison with null is never true)",
                    tok,
                )
            return Compare(f, tok.text, self.parse_value(), pos=pos)
        if tok.kind == "between":
            self.advance()
            low = self.parse_value()
            if not self.at("and"):
                raise self.error(
                    f"expected 'and' in '{name.text} between LOW and HIGH', "
                    f"found {self.tok.describe()}"
                )
            self.advance()
            return Between(f, low, self.parse_value(), pos=pos)
        if tok.kind == "not":
            self.advance()
            if not self.at("in"):
                raise self.error(
                    f"expected 'in' after '{name.text} not', found {self.tok.describe()} "
                    "(to negate a condition, write 'not' before it)"
                )
            self.advance()
            return In(f, self.parse_list("not in"), negated=True, pos=pos)
        if tok.kind == "in":
            self.advance()
            return In(f, self.parse_list("in"), pos=pos)
        if tok.kind == "contains":
            self.advance()
            return Contains(f, "contains", (self.parse_value(),), pos=pos)
        if tok.kind in ("contains_any", "contains_all"):
            self.advance()
            return Contains(f, tok.kind, self.parse_list(tok.kind), pos=pos)
        if tok.kind in ("starts_with", "ends_with", "like", "ilike"):
            self.advance()
            if not self.at(STRING):
                raise self.error(f"'{tok.kind}' needs a \"string\", found {self.tok.describe()}")
            s = self.advance()
            return StringMatch(f, tok.kind, String(s.text, pos=s.pos), pos=pos)
        if tok.kind == "is":
            self.advance()
            negated = False
            if self.at("not"):
                self.advance()
                negated = True
            if not self.at("null"):
                raise self.error(
                    f"expected 'null' after 'is{' not' if negated else ''}', "
                    f"found {self.tok.describe()}"
                )
            self.advance()
            return IsNull(f, negated, pos=pos)
        if tok.kind == "within":
            self.advance()
            return Within(f, self.parse_days("within"), pos=pos)
        raise self.error(
            f"expected an operator after '{name.text}' (=, !=, <, <=, >, >=, between, in, "
            "not in, contains, contains_any, contains_all, starts_with, ends_with, like, "
            f"ilike, is null, within), found {tok.describe()}"
        )

    def parse_days(self, context: str) -> int:
        """INT "d" (a window length in days)."""
        tok = self.tok
        if not self.at(NUMBER) or not isinstance(tok.value, int) or tok.text.startswith("-"):
            raise self.error(
                f"expected a whole number of days after '{context}' (e.g. 90d), "
                f"found {tok.describe()}"
            )
        self.advance()
        assert isinstance(tok.value, int)  # noqa: S101 - checked above
        if not self.at(IDENT, "d"):
            raise self.error(
                f"missing 'd' after {tok.text}: windows are in days, write {tok.text}d", tok
            )
        self.advance()
        if not 1 <= tok.value <= MAX_DAYS:
            raise self.error(f"a window must be from 1 to {MAX_DAYS} days", tok)
        return tok.value

    def parse_list(self, context: str) -> tuple[Value, ...]:
        opening = self.tok
        if not self.at_punct("("):
            raise self.error(
                f"expected '(' after '{context}', found {self.tok.describe()} "
                f'(write {context} ("a", "b"))'
            )
        self.advance()
        if self.at_punct(")"):
            raise self.error(f"empty list after '{context}': give at least one value", opening)
        values = [self.parse_value()]
        while self.at_punct(","):
            self.advance()
            values.append(self.parse_value())
        if not self.at_punct(")"):
            raise self.error(f"expected ',' or ')' in the list, found {self.tok.describe()}")
        self.advance()
        return tuple(values)

    def parse_value(self) -> Value:
        tok = self.tok
        if tok.kind == STRING:
            self.advance()
            return String(tok.text, pos=tok.pos)
        if tok.kind == NUMBER:
            self.advance()
            assert isinstance(tok.value, int | float)  # noqa: S101 - numbers carry one
            return Number(tok.value, pos=tok.pos)
        if tok.kind in ("true", "false"):
            self.advance()
            return Boolean(tok.kind == "true", pos=tok.pos)
        if tok.kind == "date":
            self.advance()
            self.expect_punct("(", "after 'date'")
            s = self.tok
            if s.kind != STRING:
                raise self.error(
                    f'date(...) needs a string like date("2026-06-30"), found {s.describe()}'
                )
            self.advance()
            try:
                when = parse_timestamp(s.text)
            except ValueError as exc:
                reason = (
                    str(exc)
                    if isinstance(exc, TimestampRangeError)
                    else 'expected ISO-8601 like "2026-06-30" or "2026-06-30T12:00:00Z"'
                )
                raise self.error(f"invalid date {quote(short(s.text))}: {reason}", s) from None
            self.expect_punct(")", "to close 'date('")
            return Timestamp(when, pos=tok.pos)
        if tok.kind == "null":
            raise self.error("null is not a value: test for a missing value with 'is null'")
        if tok.kind == IDENT:
            raise self.error(
                f"expected a value, found the name '{tok.text}' (strings need double quotes: "
                f'"{tok.text}")'
            )
        raise self.error(
            'expected a value (a "string", a number, true, false or date("...")), '
            f"found {tok.describe()}"
        )

    def parse_count(self) -> Node:
        start = self.advance()
        self.expect_punct("(", "after 'count'")
        ev = self.tok
        if not (self.at(IDENT, "read") or self.at(IDENT, "login")):
            raise self.error(f"expected 'read' or 'login' after 'count(', found {ev.describe()}")
        self.advance()
        where: Node | None = None
        if self.at("where"):
            self.deeper(self.advance())
            where = self.parse_or()
            self.depth -= 1
        if not self.at_punct(","):
            raise self.error(
                f"expected ',' and a window in count({ev.text}, 90d), found {self.tok.describe()}"
            )
        self.advance()
        days = self.parse_days(",")
        self.expect_punct(")", "to close 'count('")
        op = self.tok
        if not (op.kind == PUNCT and op.text in COMPARE_OPS):
            raise self.error(
                f"expected a comparison after count(...) such as '>= 3', found {op.describe()}"
            )
        self.advance()
        k = self.tok
        if not self.at(NUMBER) or not isinstance(k.value, int) or k.text.startswith("-"):
            raise self.error(f"count(...) compares with a whole number >= 0, found {k.describe()}")
        self.advance()
        assert isinstance(k.value, int)  # noqa: S101 - checked above
        return Count(ev.text, where, days, op.text, k.value, pos=start.pos)

    def parse_persona(self) -> Node:
        start = self.advance()
        self.expect_punct("(", "after 'persona'")
        key = self.tok
        if key.kind != STRING:
            raise self.error(
                f'persona(...) needs a string key like persona("cio"), found {key.describe()}'
            )
        self.advance()
        self.expect_punct(")", "to close 'persona('")
        return Persona(key.text, pos=start.pos)
