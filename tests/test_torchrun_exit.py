"""A torchrun rank ends without the interpreter's shutdown (harden.torchrun_exit), keeping its
exit code and everything it printed; other processes end as usual."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from harden.torchrun_exit import is_torchrun_rank

RANK_ENV = {"LOCAL_RANK": "1", "RANK": "1", "WORLD_SIZE": "2"}


def _python(code: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    base = {k: v for k, v in os.environ.items() if k not in ("LOCAL_RANK", "RANK", "WORLD_SIZE")}
    return subprocess.run([sys.executable, "-c", code], env={**base, **env}, capture_output=True, text=True,
                          timeout=120)  # fmt: skip


@pytest.mark.parametrize(
    ("env", "expected"),
    [(RANK_ENV, True), ({"LOCAL_RANK": "0", "WORLD_SIZE": "1"}, False), ({"WORLD_SIZE": "2"}, False), ({}, False)],
)
def test_a_rank_is_a_process_torchrun_started_among_several(monkeypatch, env, expected):
    for name in ("LOCAL_RANK", "RANK", "WORLD_SIZE"):
        monkeypatch.delenv(name, raising=False)
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    assert is_torchrun_rank() is expected


# An atexit handler runs in the interpreter's shutdown: a rank skips it, a plain process runs it.
ENDING = """
import atexit, sys
from harden.cli import main
atexit.register(lambda: print("shutdown ran", flush=True))
sys.argv = ["harden", *sys.argv[1:]] if len(sys.argv) > 1 else ["harden", "--version"]
print("unflushed output", end="")
main()
"""


def test_a_rank_ends_with_its_code_and_output_but_without_the_shutdown():
    rank = _python(ENDING, RANK_ENV)
    assert rank.returncode == 0, rank.stderr
    assert "unflushed output" in rank.stdout and "harden" in rank.stdout
    assert "shutdown ran" not in rank.stdout
    plain = _python(ENDING, {})
    assert plain.returncode == 0 and "shutdown ran" in plain.stdout


def test_a_rank_keeps_a_usage_error_exit_code():
    rank = _python(ENDING.replace('["harden", "--version"]', '["harden", "no-such-command"]'), RANK_ENV)
    assert rank.returncode == 2 and "No such command" in rank.stderr
    assert "shutdown ran" not in rank.stdout
