"""The contact store: schema, migrations, queries and bulk paths."""

from personatag.store.db import Store, open_store

__all__ = ["Store", "open_store"]
