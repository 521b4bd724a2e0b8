"""Errors that reach the user as one line (the CLI prints them and exits non-zero)."""


class GradscopeError(Exception):
    """A problem with the user's input: a missing script, a bad record, a bad option."""


class RecordError(GradscopeError):
    """A file that cannot be read as a gradscope record."""
