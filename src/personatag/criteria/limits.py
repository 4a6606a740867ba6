"""How big a criterion may be: every limit in one place (documented in docs/criteria.md).

The limits keep one request's parsing, checking and SQL inside a bounded amount
of time and memory, and inside what every store accepts (SQLite refuses an
expression tree more than 1,000 deep, which a 1,000-term `or` already is). Long
lists of contacts belong in a contact list (`tag --contacts FILE`, a request's
`contacts`), not in an expression.

The parser checks what it must before it builds anything (text length, nesting,
literal sizes); the checker (`check`) checks the tree as a whole, from text or JSON.
"""

from __future__ import annotations

MAX_TEXT_CHARS = 20_000  # criterion text
# Nesting: open parentheses, `not`s and `count(... where` around a condition in the
# text; and / or / not / where nodes above it in the JSON form. SQLite's parser
# overflows its stack at about 30 (`(a or (b and (c or ...`).
MAX_DEPTH = 20
MAX_CONDITIONS = 500  # comparisons, in, like, count(...), persona(...) ... in one criterion
MAX_LIST_VALUES = 1_000  # values in one in / not in / contains_any / contains_all list
MAX_STRING_CHARS = 1_000  # one string: a value, a like pattern, a persona key
INT64_MAX = 2**63 - 1  # whole numbers lie within +/- this (they are bound as BIGINT)
MAX_NUMBER_CHARS = 100  # one number as written (1.5e3, 42, ...)
# Lone surrogates (U+D800-U+DFFF) are refused in every string: see domain.surrogate_at.

LIST_PATH_HINT = (
    "for long lists of contacts use a contact list (`personatag tag --contacts FILE`, "
    'or a request file with "contacts")'
)


def short(text: str, keep: int = 40) -> str:
    """`text` cut to `keep` characters for an error message."""
    return text if len(text) <= keep else f"{text[:keep]}... ({len(text):,} characters)"
