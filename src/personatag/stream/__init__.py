"""Ongoing criteria: the change feed and the processor that keeps personas true."""
