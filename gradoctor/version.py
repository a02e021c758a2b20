"""The package version, in the base layer (the run report records it)."""

__version__ = "0.1.0"
