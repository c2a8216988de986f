"""Atomic file writes: a crash never leaves a half-written checkpoint, report or plot.

Each writer writes to a temporary file in the destination's directory, flushes and fsyncs it,
then renames it over the destination (`os.replace` is atomic on POSIX when both paths are on
the same filesystem, which a sibling temporary file guarantees).
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import IO, Any


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike[str]) -> Iterator[Path]:
    """Yield a temporary path beside `path`; on success rename it to `path`, else delete it.

    For writers that insist on a file name (safetensors, matplotlib).
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    tmp = Path(tmp_name)
    os.chmod(tmp, 0o666 & ~_umask())  # mkstemp makes 0600; give the file the usual permissions
    try:
        yield tmp
        with open(tmp, "rb+") as f:
            os.fsync(f.fileno())
        os.replace(tmp, path)
        _fsync_dir(path.parent)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


@contextlib.contextmanager
def atomic_open(path: str | os.PathLike[str], mode: str = "w") -> Iterator[IO[Any]]:
    """`open()` for writing, made atomic: readers see the old file or the whole new one."""
    if mode not in ("w", "wb"):
        raise ValueError(f"atomic_open writes whole files; mode must be 'w' or 'wb', not {mode!r}")
    with atomic_path(path) as tmp, open(tmp, mode) as f:
        yield f


def safetensors_bytes(tensors: dict[str, Any], metadata: dict[str, str]) -> bytes:
    """A safetensors file's bytes. Serialised in memory and written with `atomic_open`, a full disk
    raises Python's own OSError (ENOSPC), which the CLI reports as exit 2; safetensors' `save_file`
    wraps it in an error of its own that names no errno."""
    from safetensors.torch import save

    return save(tensors, metadata=metadata)


def write_json(path: str | os.PathLike[str], obj: Any) -> None:
    """Write `obj` as indented, standard JSON, atomically. A NaN or infinite float (an IoU ratio
    when clean mIoU is 0, a score of no image) is written as null: Python's NaN token is not JSON,
    and browsers and most JSON tools refuse it."""
    with atomic_open(path) as f:
        json.dump(_finite_or_null(obj), f, indent=2, sort_keys=False, allow_nan=False)
        f.write("\n")


def _finite_or_null(obj: Any) -> Any:
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, dict):
        return {k: _finite_or_null(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_finite_or_null(v) for v in obj]
    return obj


def remove_stale_temporaries(directory: str | os.PathLike[str]) -> list[Path]:
    """Delete temporaries left by writers that were killed mid-write (SIGKILL cannot be caught).

    Call it only where no other process is writing into `directory`. Returns what it removed.
    """
    removed = []
    for tmp in Path(directory).glob(".*.tmp"):
        tmp.unlink(missing_ok=True)
        removed.append(tmp)
    return removed


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def _fsync_dir(directory: Path) -> None:
    # Makes the rename itself durable; not all filesystems allow opening a directory.
    with contextlib.suppress(OSError):
        fd = os.open(directory, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
