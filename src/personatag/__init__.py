"""personatag: tag research readers with personas."""

__version__ = "0.1.0"
