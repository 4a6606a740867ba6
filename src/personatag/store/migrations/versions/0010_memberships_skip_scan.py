"""Memberships by contact on SQLite: skip-scan the primary key, no second b-tree.

The contact index held every membership a second time: on SQLite it doubled
the cost of a large tag. SQLite now finds a contact's memberships with one
primary-key seek per persona (skip-scan), planned from sampled statistics;
PostgreSQL (no skip-scan before version 18) keeps the index.

Revision ID: 0010_memberships_skip_scan
Revises: 0009_monitoring
"""

from alembic import op

revision = "0010_memberships_skip_scan"
down_revision = "0009_monitoring"
branch_labels = None
depends_on = None


def upgrade() -> None:
    if op.get_bind().dialect.name != "sqlite":
        return
    op.drop_index("ix_memberships_contact", table_name="memberships")
    op.execute("PRAGMA analysis_limit=1000")
    op.execute("ANALYZE memberships")


def downgrade() -> None:
    if op.get_bind().dialect.name != "sqlite":
        return
    op.create_index("ix_memberships_contact", "memberships", ["contact_pk"])
