"""Requests, jobs, the applier and results."""
