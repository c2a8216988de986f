"""The `harden` command line: a click group of thin commands over library functions.

This package is the only place allowed to compose `harden`, `export` and `runtime` (docs/design.md
§1); commands import heavy or optional modules inside the command function, so `harden --help`
stays fast and a missing optional backend only affects the command that needs it.

Exit codes: 0 success; 1 a gate, check or run failed; 2 bad input or usage.
"""

from __future__ import annotations

import errno
import signal
import threading
from typing import Any

import click

from harden import __version__
from harden.cli._exits import (
    EXIT_BAD_INPUT,
    EXIT_FAILED,
    EXIT_INCONCLUSIVE,
    BadInput,
    Failed,
    Inconclusive,
)
from harden.errors import InputError
from harden.torchrun_exit import is_torchrun_rank, leave_rank

__all__ = ["EXIT_BAD_INPUT", "EXIT_FAILED", "EXIT_INCONCLUSIVE", "BadInput", "Failed", "Inconclusive", "cli", "main"]

EXIT_INTERRUPTED = 130  # Ctrl-C, as shells report it
EXIT_TERMINATED = 143  # SIGTERM
# the machine's refusals of a write or read, which mean "fix the path, the disk or its permissions"
_OS_INPUT_ERRORS = {errno.EROFS, errno.ENOSPC, errno.EACCES, errno.EPERM, errno.EDQUOT, errno.ENOENT, errno.EISDIR,
                    errno.EEXIST, errno.ENOTDIR, errno.EFBIG}  # fmt: skip


class _HardenGroup(click.Group):
    """Turns every way a command can end into its exit code and one line, never a traceback:
    bad input → 2; a full disk, a read-only file system or a denied path → 2 naming the path
    (atomic writes leave every earlier file intact); Ctrl-C → 130, SIGTERM → 143."""

    def invoke(self, ctx: click.Context) -> Any:
        previous = signal.signal(signal.SIGTERM, _terminate) if _main_thread() else None
        try:
            return super().invoke(ctx)
        except InputError as err:
            raise BadInput(str(err)) from err
        except OSError as err:
            if err.errno not in _OS_INPUT_ERRORS:
                raise
            raise BadInput(f"{err.filename or 'a file'}: {err.strerror or err}; {_os_hint(err.errno)}") from err
        except Exception as err:  # torch.onnx re-raises a Ctrl-C inside its own error
            code = _interruption(err)
            if code is None:
                raise
            raise _Interrupted(code) from err
        except KeyboardInterrupt as err:
            raise _Interrupted(EXIT_INTERRUPTED) from err
        except _Terminated as err:
            raise _Interrupted(EXIT_TERMINATED) from err
        finally:
            if previous is not None:
                signal.signal(signal.SIGTERM, previous)


class _Terminated(BaseException):
    """SIGTERM, raised in the main thread so every `finally` and atomic write cleans up."""


class _Interrupted(click.exceptions.Exit):
    def __init__(self, code: int) -> None:
        click.echo(f"interrupted ({'Ctrl-C' if code == EXIT_INTERRUPTED else 'SIGTERM'}): stopped; files written "
                   "before stay intact, and a resumable run continues with --resume", err=True)  # fmt: skip
        super().__init__(code)


def _terminate(signum: int, frame: Any) -> None:
    raise _Terminated


def _main_thread() -> bool:
    return threading.current_thread() is threading.main_thread()


def _interruption(err: BaseException | None) -> int | None:
    """The exit code of a Ctrl-C or SIGTERM somewhere in `err`'s chain of causes, else None."""
    for _ in range(20):
        if err is None:
            return None
        if isinstance(err, KeyboardInterrupt):
            return EXIT_INTERRUPTED
        if isinstance(err, _Terminated):
            return EXIT_TERMINATED
        err = err.__cause__ or err.__context__
    return None


def _os_hint(code: int | None) -> str:
    if code == errno.ENOSPC or code == errno.EDQUOT or code == errno.EFBIG:
        return "the disk is full: free space or write elsewhere (earlier files are intact)"
    if code == errno.EROFS:
        return "the file system is read-only: write elsewhere (--out)"
    if code in (errno.EACCES, errno.EPERM):
        return "permission denied: write elsewhere or fix the permissions"
    return "check the path"


@click.group(cls=_HardenGroup, context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.version_option(__version__, prog_name="harden")
def cli() -> None:
    """Harden semantic-segmentation models against adversarial attacks, and prove the hardening
    survives deployment.

    \b
    Start here:
      harden demo                         # train with RAM → export fp32 + int8 → verify, ~5 min
      harden train --model segformer_tiny --data synthetic --epochs 30 --out runs/demo
      harden eval runs/demo --data synthetic
      harden attack runs/demo --attack sea --eps 4/255,8/255
      harden export runs/demo --out exports/demo
      harden verify exports/demo --twin graph --twin runs/demo
      harden replay exports/demo/verify exports/demo   # re-judge a rebuild on verify's evidence
      harden study crf runs/demo          # experiments from the papers
      harden models                       # what can be trained

    Exit codes: 0 success, 1 a check or run failed, 2 bad input.
    """


def _register() -> None:
    from harden.cli import attack, attention_map, demo, erf, evaluate, export, models, replay, study, train, verify

    cli.add_command(train.train_command)
    cli.add_command(evaluate.eval_command)
    cli.add_command(models.models_command)
    cli.add_command(attention_map.attention_map_command)
    cli.add_command(attack.attack_command)
    cli.add_command(export.export_command)
    cli.add_command(verify.verify_command)
    cli.add_command(replay.replay_command)
    cli.add_command(demo.demo_command)
    cli.add_command(erf.erf_command)
    cli.add_command(study.study_group)


_register()


def main() -> None:
    try:
        cli()
    except SystemExit as done:  # click ends every command with one, holding the exit code
        if is_torchrun_rank():  # see leave_rank: a rank must not run the interpreter's shutdown
            leave_rank(done.code if isinstance(done.code, int) else 0 if done.code is None else EXIT_FAILED)
        raise
