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


# Gate values that every estimated gate clears by construction: each interval lies inside its
# figure's range (an agreement, a survival ratio ≥ 0; an mIoU difference ≤ 1), so a threshold at
# the range's edge passes whatever images the run draws. Tests whose subject is not the verdict on
# a sampled figure (reports, audits, checks, resume, CLI plumbing) pass these, so that no test's
# outcome is decided by sampling noise on a few images (issue 45; docs/verdicts.md §5). The exact
# gates (data, audits, engine arithmetic, sanity checks) still decide.
DECIDED_BY_CONSTRUCTION = ("--gate", "clean_agreement=0", "--gate", "clean_miou_delta=1",
                           "--gate", "adversarial_agreement=0", "--gate", "survival=0")  # fmt: skip
