"""The one way tests run the `harden` command line: in process through click's CliRunner, with
exceptions propagating (so a traceback fails the test instead of hiding in the output)."""

from __future__ import annotations

from click.testing import CliRunner, Result

from harden.cli import cli


def run_cli(*args: object) -> Result:
    """`harden ARGS...` (paths and numbers are turned into strings)."""
    return CliRunner().invoke(cli, [str(a) for a in args], catch_exceptions=False)


def assert_refused(result: Result, *words: str) -> None:
    """Bad input: exit 2, no traceback, and every one of `words` in the message."""
    assert result.exit_code == 2, result.output
    assert "Traceback" not in result.output
    for word in words:
        assert word in result.output, (word, result.output)
