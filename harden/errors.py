"""Errors that mean "the input is wrong", as opposed to a bug.

The CLI turns `InputError` into a one-line message and exit code 2 (STYLE.md: exit codes mean
something). Every message should say what was wrong, where, and how to fix it.
"""


class InputError(ValueError):
    """Bad user input: a missing or corrupt file, a wrong shape, a value out of range."""
