"""Feed: persona content rules (boosts, filters, pins with an expiry, caps per series).

Revision ID: 0006
Revises: 0005
"""

import sqlalchemy as sa
from alembic import op

revision = "0006"
down_revision = "0005"
branch_labels = None
depends_on = None

# Frozen copies of the column types as they were at this revision.
PK = sa.BigInteger().with_variant(sa.Integer(), "sqlite")
TS = sa.BigInteger()  # UTC microseconds since the epoch


def upgrade() -> None:
    op.create_table(
        "feed_rules",
        sa.Column("pk", PK, autoincrement=True, nullable=False),
        sa.Column("persona_pk", sa.BigInteger(), nullable=False),
        sa.Column("kind", sa.Text(), nullable=False),
        sa.Column("expr", sa.Text(), nullable=True),
        sa.Column("weight", sa.Float(), nullable=True),
        sa.Column("publication_pk", sa.BigInteger(), nullable=True),
        sa.Column("expires_at", TS, nullable=True),
        sa.Column("cap", sa.BigInteger(), nullable=True),
        sa.Column("created_at", TS, nullable=False),
        sa.Column("created_by", sa.Text(), nullable=True),
        sa.PrimaryKeyConstraint("pk"),
    )
    op.create_index("ix_feed_rules_persona", "feed_rules", ["persona_pk", "pk"])


def downgrade() -> None:
    op.drop_index("ix_feed_rules_persona", table_name="feed_rules")
    op.drop_table("feed_rules")
