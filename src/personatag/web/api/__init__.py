"""The routers of the REST API, one module per resource (mounted by `web.app`)."""
