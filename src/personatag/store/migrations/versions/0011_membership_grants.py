"""Memberships as key rows and grants; `memberships` becomes a view.

A membership row carried when and by what it was given (since, request,
criterion) beside its key: 21 bytes a row against 8 for the bare pairs, and a
large tag wrote each of them 10M times. Now a row is its key and a reference
to a grant, one per ad hoc request, pin-in or stream flush; an ongoing
criterion's rows take their criterion from their source. The view
`memberships` has the old table's columns, so SQL readers are unchanged, and
INSTEAD OF triggers keep SQL writers working too (row by row; the product
writes the tables themselves, in personatag.memberships).

Revision ID: 0011_membership_grants
Revises: 0010_memberships_skip_scan
"""

import sqlalchemy as sa
from alembic import op

revision = "0011_membership_grants"
down_revision = "0010_memberships_skip_scan"
branch_labels = None
depends_on = None

PK = sa.BigInteger().with_variant(sa.Integer(), "sqlite")
TS = sa.BigInteger()  # UTC microseconds since the epoch

VIEW = """
CREATE VIEW memberships AS
SELECT r.persona_pk AS persona_pk, r.contact_pk AS contact_pk, r.source AS source,
       g.since AS since, g.request_pk AS request_pk,
       CASE WHEN r.source > 0 THEN r.source ELSE g.criterion_pk END AS criterion_pk
FROM membership_rows r LEFT JOIN membership_grants g ON g.pk = r.grant_pk
"""

# The old rows, each with the grant of its (since, request, criterion), compared
# NULL-safely.
SPLIT_SQLITE = """
INSERT INTO membership_rows (persona_pk, contact_pk, source, grant_pk)
SELECT m.persona_pk, m.contact_pk, m.source, g.pk FROM memberships m
JOIN membership_grants g ON g.since = m.since
 AND g.request_pk IS m.request_pk AND g.criterion_pk IS m.criterion_pk
"""
SPLIT_POSTGRESQL = """
INSERT INTO membership_rows (persona_pk, contact_pk, source, grant_pk)
SELECT m.persona_pk, m.contact_pk, m.source, g.pk FROM memberships m
JOIN membership_grants g ON g.since = m.since
 AND g.request_pk IS NOT DISTINCT FROM m.request_pk
 AND g.criterion_pk IS NOT DISTINCT FROM m.criterion_pk
"""

# Row by row, one grant per row written: for scripts and hand repairs.
SQLITE_TRIGGERS = [
    """
CREATE TRIGGER memberships_insert INSTEAD OF INSERT ON memberships BEGIN
  INSERT INTO membership_grants (since, request_pk, criterion_pk)
  VALUES (NEW.since, NEW.request_pk, NEW.criterion_pk);
  INSERT INTO membership_rows (persona_pk, contact_pk, source, grant_pk)
  VALUES (NEW.persona_pk, NEW.contact_pk, NEW.source, last_insert_rowid());
END
""",
    """
CREATE TRIGGER memberships_update INSTEAD OF UPDATE ON memberships BEGIN
  INSERT INTO membership_grants (since, request_pk, criterion_pk)
  VALUES (NEW.since, NEW.request_pk, NEW.criterion_pk);
  UPDATE membership_rows SET persona_pk = NEW.persona_pk, contact_pk = NEW.contact_pk,
         source = NEW.source, grant_pk = last_insert_rowid()
  WHERE persona_pk = OLD.persona_pk AND contact_pk = OLD.contact_pk AND source = OLD.source;
END
""",
    """
CREATE TRIGGER memberships_delete INSTEAD OF DELETE ON memberships BEGIN
  DELETE FROM membership_rows
  WHERE persona_pk = OLD.persona_pk AND contact_pk = OLD.contact_pk AND source = OLD.source;
END
""",
]

POSTGRESQL_TRIGGERS = [
    """
CREATE FUNCTION memberships_write() RETURNS trigger LANGUAGE plpgsql AS $$
DECLARE
  g bigint;
BEGIN
  IF TG_OP IN ('INSERT', 'UPDATE') THEN
    INSERT INTO membership_grants (since, request_pk, criterion_pk)
    VALUES (NEW.since, NEW.request_pk, NEW.criterion_pk) RETURNING pk INTO g;
  END IF;
  IF TG_OP = 'INSERT' THEN
    INSERT INTO membership_rows (persona_pk, contact_pk, source, grant_pk)
    VALUES (NEW.persona_pk, NEW.contact_pk, NEW.source, g);
    RETURN NEW;
  ELSIF TG_OP = 'UPDATE' THEN
    UPDATE membership_rows SET persona_pk = NEW.persona_pk, contact_pk = NEW.contact_pk,
           source = NEW.source, grant_pk = g
    WHERE persona_pk = OLD.persona_pk AND contact_pk = OLD.contact_pk AND source = OLD.source;
    RETURN NEW;
  END IF;
  DELETE FROM membership_rows
  WHERE persona_pk = OLD.persona_pk AND contact_pk = OLD.contact_pk AND source = OLD.source;
  RETURN OLD;
END
$$
""",
    """
CREATE TRIGGER memberships_write INSTEAD OF INSERT OR UPDATE OR DELETE ON memberships
FOR EACH ROW EXECUTE FUNCTION memberships_write()
""",
]


def upgrade() -> None:
    sqlite = op.get_bind().dialect.name == "sqlite"
    op.create_table(
        "membership_grants",
        sa.Column("pk", PK, autoincrement=True, nullable=False),
        sa.Column("since", TS, nullable=False),
        sa.Column("request_pk", sa.BigInteger(), nullable=True),
        sa.Column("criterion_pk", sa.BigInteger(), nullable=True),
        sa.PrimaryKeyConstraint("pk"),
    )
    op.create_table(
        "membership_rows",
        sa.Column("persona_pk", sa.BigInteger(), nullable=False),
        sa.Column("contact_pk", sa.BigInteger(), nullable=False),
        sa.Column("source", sa.BigInteger(), nullable=False),
        sa.Column("grant_pk", sa.BigInteger(), nullable=False),
        sa.PrimaryKeyConstraint("persona_pk", "contact_pk", "source"),
        sqlite_with_rowid=False,
    )
    if not sqlite:
        op.create_index("ix_membership_rows_contact", "membership_rows", ["contact_pk"])
    # One grant per distinct (since, request, criterion) of the rows there are.
    op.execute(
        "INSERT INTO membership_grants (since, request_pk, criterion_pk) "
        "SELECT DISTINCT since, request_pk, criterion_pk FROM memberships"
    )
    op.execute("CREATE INDEX pt_grants_by_value ON membership_grants (since, request_pk)")
    op.execute(SPLIT_SQLITE if sqlite else SPLIT_POSTGRESQL)
    op.execute("DROP INDEX pt_grants_by_value")
    op.drop_table("memberships")
    op.execute(VIEW)
    for statement in SQLITE_TRIGGERS if sqlite else POSTGRESQL_TRIGGERS:
        op.execute(statement)
    if sqlite:
        op.execute("PRAGMA analysis_limit=1000")
        op.execute("ANALYZE membership_rows")


def downgrade() -> None:
    sqlite = op.get_bind().dialect.name == "sqlite"
    if sqlite:
        for name in ("memberships_insert", "memberships_update", "memberships_delete"):
            op.execute(f"DROP TRIGGER {name}")
    op.execute("DROP VIEW memberships")  # drops the PostgreSQL trigger with it
    if not sqlite:
        op.execute("DROP FUNCTION memberships_write()")
    op.create_table(
        "memberships",
        sa.Column("persona_pk", sa.BigInteger(), nullable=False),
        sa.Column("contact_pk", sa.BigInteger(), nullable=False),
        sa.Column("source", sa.BigInteger(), nullable=False),
        sa.Column("since", TS, nullable=False),
        sa.Column("request_pk", sa.BigInteger(), nullable=True),
        sa.Column("criterion_pk", sa.BigInteger(), nullable=True),
        sa.PrimaryKeyConstraint("persona_pk", "contact_pk", "source"),
        sqlite_with_rowid=False,
    )
    if not sqlite:
        op.create_index("ix_memberships_contact", "memberships", ["contact_pk"])
    op.execute(
        "INSERT INTO memberships (persona_pk, contact_pk, source, since, request_pk, "
        "criterion_pk) SELECT r.persona_pk, r.contact_pk, r.source, g.since, g.request_pk, "
        "CASE WHEN r.source > 0 THEN r.source ELSE g.criterion_pk END "
        "FROM membership_rows r JOIN membership_grants g ON g.pk = r.grant_pk"
    )
    op.drop_table("membership_rows")
    op.drop_table("membership_grants")
