"""Contact search: indexes on the folded id, first and last name, email and firm.

Revision ID: 0009_contacts
Revises: 0008
"""

from alembic import op
from sqlalchemy import column

from personatag.store.backends import get_backend
from personatag.store.backends.base import search_key

revision = "0009_contacts"
down_revision = "0009_requests"
branch_labels = None
depends_on = None

FIELDS = ("id", "first_name", "last_name", "email", "firm")


def upgrade() -> None:
    get_backend(op.get_bind().dialect.name)  # loads how this database spells search_key
    for field in FIELDS:
        op.create_index(
            f"ix_contacts_search_{field}", "contacts", [search_key(column(field)), column("pk")]
        )


def downgrade() -> None:
    for field in FIELDS:
        op.drop_index(f"ix_contacts_search_{field}", table_name="contacts")
