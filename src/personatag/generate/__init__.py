"""A synthetic population for a research division: contacts, publications, reads, logins."""

from personatag.generate.run import GenerateResult, default_end, generate

__all__ = ["GenerateResult", "default_end", "generate"]
