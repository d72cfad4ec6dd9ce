"""The package's version, in a module of its own: the server reads it without importing
the package root, whose names are the DB-API client's (docs/architecture.md)."""

__version__ = "0.1.0"
