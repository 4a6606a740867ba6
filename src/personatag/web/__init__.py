"""The REST API (`personatag serve`): a thin layer over the store and pipeline modules.

`create_app(settings, store)` builds the FastAPI application; see docs/api.md.
"""

from personatag.web.app import create_app

__all__ = ["create_app"]
