"""The exit codes of the `harden` commands and the exceptions that carry them (exit 1 and 3).

Apart from `harden/cli/__init__.py` so that a command module can raise them without importing
the command group back (no import in `cli/` runs up to its package).
"""

from __future__ import annotations

import click

EXIT_FAILED = 1
EXIT_BAD_INPUT = 2


class BadInput(click.ClickException):
    exit_code = EXIT_BAD_INPUT


class Failed(click.ClickException):
    exit_code = EXIT_FAILED


EXIT_INCONCLUSIVE = 3  # harden verify: no gate failed but one could not decide (fails closed)


class Inconclusive(click.ClickException):
    exit_code = EXIT_INCONCLUSIVE
