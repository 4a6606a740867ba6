"""The contacts of the stream's compact log entries, by contact.

A stream step logs the enters (or exits) of one persona through one criterion
as one bulk entry when there are many (PERSONATAG_STREAM_LOG_COMPACT), instead
of a log row each. Such an entry's contacts are scattered over the pk range,
so `contact show` could not prune it by its pk range as it does an ad hoc
request's: it finds the entries of a contact in this table, one narrow row
per (contact, entry) in a b-tree keyed by contact. And the bulk entries that
do have a pk range get an index of their own, so the range search does not
walk the many compact ones.

Revision ID: 0013_membership_log_members
Revises: 0012_contacts_pk_index
"""

import sqlalchemy as sa
from alembic import op

revision = "0013_membership_log_members"
down_revision = "0012_contacts_pk_index"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "membership_log_members",
        sa.Column("contact_pk", sa.BigInteger(), primary_key=True),
        sa.Column("seq", sa.BigInteger(), primary_key=True),
        sqlite_with_rowid=False,
    )
    op.create_index(
        "ix_membership_log_ranged",
        "membership_log",
        ["seq"],
        sqlite_where=sa.text("bulk_min IS NOT NULL"),
        postgresql_where=sa.text("bulk_min IS NOT NULL"),
    )


def downgrade() -> None:
    op.drop_index("ix_membership_log_ranged", table_name="membership_log")
    op.drop_table("membership_log_members")
