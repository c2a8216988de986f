"""Output safety: one writer per directory, and no output that overwrites what harden did not
write for that purpose (issue "Hostile inputs and faults").

- `exclusive(directory, what)`: an advisory lock (fcntl) held for a command's whole run; a second
  process is refused at once, naming the holder's PID. The lock dies with its process, so a
  killed run never leaves a stale lock; the lock file itself is removed when the command ends.
- `report_file(path, schema, default_name)`: an output file may replace only a harden report of
  the same kind (its JSON `schema`), or a file of its default name; never a run's config,
  weights or anything else.
- `sweep_stale_staging(parent, name)`: export staging directories of processes that are gone.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import shutil
from collections.abc import Iterator
from pathlib import Path

from harden.errors import InputError

LOCK_FILE = ".harden.lock"
# what a run or export directory holds: never an output of another command
PROTECTED_NAMES = {"config.json", "model.safetensors", "state.safetensors", "metrics.jsonl", "manifest.json",
                   "parity.json", "verify.state"}  # fmt: skip
PROTECTED_SUFFIXES = {".safetensors", ".onnx", ".engine", ".plan", ".data"}


@contextlib.contextmanager
def exclusive(directory: Path, what: str) -> Iterator[None]:
    """Hold `directory`'s lock for the block; InputError (exit 2) if another process holds it.

    The lock file is removed when the block ends (while still locked), and a directory this call
    created is removed again when the block leaves it empty: a refused command leaves nothing new.
    A process that opened the file just before its removal finds, once it holds the lock, that the
    path no longer names its file, and takes the lock again on the new one.
    """
    directory = Path(directory)
    created = _make_directories(directory)
    try:
        fd = _lock(directory / LOCK_FILE, what)
        try:
            os.ftruncate(fd, 0)
            os.pwrite(fd, str(os.getpid()).encode(), 0)
            yield
        finally:
            (directory / LOCK_FILE).unlink(missing_ok=True)
            fcntl.flock(fd, fcntl.LOCK_UN)
            os.close(fd)
    finally:
        for made in created:  # deepest first
            with contextlib.suppress(OSError):
                made.rmdir()  # only when empty


def _lock(path: Path, what: str) -> int:
    while True:
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 32, 0).decode(errors="replace").strip() or "unknown"
            os.close(fd)
            raise InputError(
                f"{path.parent} is in use by another harden {what} (PID {holder}); wait for it to finish, stop it, "
                "or choose another output"
            ) from None
        try:
            same = os.path.samestat(os.fstat(fd), os.stat(path))
        except FileNotFoundError:
            same = False
        if same:
            return fd
        os.close(fd)  # the holder removed the file as we opened it: lock the new one


def _make_directories(directory: Path) -> list[Path]:
    """mkdir -p, returning the directories it created, deepest first."""
    missing = []
    for parent in (directory, *directory.parents):
        if parent.exists():
            break
        missing.append(parent)
    directory.mkdir(parents=True, exist_ok=True)
    return missing


def report_file(path: Path, schema: str, default_name: str) -> Path:
    """`path` if harden may write its `schema` report there; InputError naming it otherwise."""
    path = Path(path)
    if not path.exists():
        return path
    if path.is_dir():
        raise InputError(f"{path} is a directory; give a file name for the report")
    if path.name in PROTECTED_NAMES or path.suffix in PROTECTED_SUFFIXES:
        raise InputError(f"{path} is part of a harden run or export; refusing to overwrite it — choose another file")
    if path.name == default_name:
        return path
    try:
        existing = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError):
        existing = None
    if not isinstance(existing, dict) or existing.get("schema") != schema:
        raise InputError(
            f"{path} exists and is not a {schema} report harden wrote; refusing to overwrite it — choose another "
            "file or remove it"
        )
    return path


def figure_file(path: Path) -> Path:
    """`path` unless it would replace part of a run or export (a figure never overwrites weights)."""
    path = Path(path)
    if path.name in PROTECTED_NAMES or path.suffix in PROTECTED_SUFFIXES or path.is_dir():
        raise InputError(f"{path} is part of a harden run or export (or a directory); choose another file")
    return path


def check_run_directory(directory: Path, markers: set[str]) -> None:
    """A directory to write a run into must be new, empty, or hold `markers` (harden's own files)."""
    directory = Path(directory)
    if not directory.exists():
        return
    if not directory.is_dir():
        raise InputError(f"{directory} is a file; --out must be a directory")
    entries = {p.name for p in directory.iterdir() if not p.name.startswith(".")}
    if entries and not entries & markers:
        listed = ", ".join(sorted(entries)[:5])
        raise InputError(
            f"{directory} is not empty and is not a harden run (it holds {listed}{', …' if len(entries) > 5 else ''}); "
            "choose a new or empty --out"
        )


def staging_prefix(name: str) -> str:
    """The prefix of an export's staging directory: carries the PID, so a dead one can be swept."""
    return f".{name}.{os.getpid()}."


def sweep_stale_staging(parent: Path, name: str) -> list[Path]:
    """Remove `.NAME.PID.*.staging` directories in `parent` whose process is gone."""
    removed = []
    for staging in Path(parent).glob(f".{name}.*.staging"):
        pid_text = staging.name[len(name) + 2 :].split(".", 1)[0]
        if not pid_text.isdigit() or _alive(int(pid_text)):
            continue
        shutil.rmtree(staging, ignore_errors=True)
        removed.append(staging)
    return removed


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # someone else's live process
    return True
