"""SQLite: an index of the contacts' pks alone, in pk order.

A tag of many contacts inserts one membership row per matched pk, read by pk
range. From the table itself that read walks every wide contact row (3.4 GB
at 10M contacts: ~1.1 s); from this index (118 MiB at 10M), ~0.65 s.
`personatag tag` of all 10M went from 1.74x to 1.5-1.7x the bare INSERT ...
SELECT (bench/tag_write.py, docs/performance.md). New contacts take the next
pks, so the index grows at its end. PostgreSQL's primary key index already
answers such a read (an index-only scan).

Revision ID: 0012_contacts_pk_index
Revises: 0011_membership_grants
"""

from alembic import op

revision = "0012_contacts_pk_index"
down_revision = "0011_membership_grants"
branch_labels = None
depends_on = None


def upgrade() -> None:
    if op.get_bind().dialect.name != "sqlite":
        return
    op.create_index("ix_contacts_pk", "contacts", ["pk"])


def downgrade() -> None:
    if op.get_bind().dialect.name != "sqlite":
        return
    op.drop_index("ix_contacts_pk", table_name="contacts")
