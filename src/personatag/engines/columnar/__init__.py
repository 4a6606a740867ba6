"""The columnar engine: criteria evaluated over a columnar copy of contacts,
reads and logins (see frame.py for the arrays it works on)."""
