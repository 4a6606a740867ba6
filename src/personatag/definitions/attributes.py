"""Custom contact attributes: declared once, then usable in imports and criteria."""

from __future__ import annotations

from sqlalchemy import select

from personatag.criteria.ast import KEYWORDS
from personatag.domain import (
    CUSTOM_COLUMN_PREFIX,
    NAME_RE,
    STANDARD_CONTACT_FIELDS,
    FieldType,
    utcnow,
)
from personatag.errors import ConflictError, InputError
from personatag.store.db import Store
from personatag.store.schema import sql_type

# Words of the criteria language cannot name a field; `read`, `login` and `d`
# are only contextual there, but as attribute names they would read badly.
RESERVED = KEYWORDS | {"read", "login", "d"}


def add_attribute(
    store: Store,
    name: str,
    field_type: FieldType | str,
    *,
    description: str | None = None,
    actor: str | None = None,
) -> None:
    """Declare a custom attribute: adds a typed, nullable column to contacts."""
    try:
        ft = FieldType(field_type)
    except ValueError:
        valid = "|".join(t.value for t in FieldType)
        raise InputError(f"unknown attribute type {field_type!r}: use one of {valid}") from None
    if not NAME_RE.match(name):
        raise InputError(
            f"invalid attribute name {name!r}: use lower-case letters, digits and '_', "
            "starting with a letter (at most 60 characters)"
        )
    if name in STANDARD_CONTACT_FIELDS:
        raise ConflictError(f"{name!r} is a standard contact attribute already")
    if name in RESERVED:
        raise InputError(f"{name!r} is a word of the criteria language; choose another name")
    attrs = store.tables.attributes
    dialect = store.engine.dialect
    column = dialect.identifier_preparer.quote(CUSTOM_COLUMN_PREFIX + name)
    ddl_type = sql_type(ft).compile(dialect=dialect)
    with store.write() as conn:
        if conn.scalar(select(attrs.c.name).where(attrs.c.name == name)) is not None:
            raise ConflictError(f"attribute {name!r} is already declared")
        conn.exec_driver_sql(f"ALTER TABLE contacts ADD COLUMN {column} {ddl_type}")
        conn.execute(
            attrs.insert().values(
                name=name,
                type=ft.value,
                description=description,
                created_at=utcnow(),
                created_by=actor,
            )
        )
    store.refresh()


def list_attributes(store: Store) -> list[dict[str, str]]:
    """Standard and custom attributes with their types."""
    out = [
        {"name": n, "type": t.value, "kind": "standard"} for n, t in STANDARD_CONTACT_FIELDS.items()
    ]
    out += [{"name": n, "type": t.value, "kind": "custom"} for n, t in store.custom_attributes()]
    return out
