"""Membership changes for other systems: a JSON-lines export of the membership
log and signed webhooks (see docs/events.md)."""
