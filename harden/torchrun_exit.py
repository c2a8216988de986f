"""How a process that is one rank of a torchrun job ends: without Python's interpreter shutdown.

Standard library only, so that `harden.cli.main` can ask on every exit without importing torch.
"""

from __future__ import annotations

import contextlib
import os
import sys
from typing import NoReturn


def is_torchrun_rank() -> bool:
    """Whether this process is one rank of a torchrun job of several processes."""
    return "LOCAL_RANK" in os.environ and os.environ.get("WORLD_SIZE", "1") not in ("", "1")


def leave_rank(code: int) -> NoReturn:
    """End a torchrun rank with `code` without Python's interpreter shutdown.

    gloo's worker thread frees a finished collective's tensors after `wait()` has returned, and
    freeing a tensor that Python saw needs the GIL. A rank that ends straight after its last
    gather could reach interpreter shutdown first; the thread then cannot take the GIL and the
    process aborts with SIGABRT, after all its work was done (5 of 173 two-process trainings
    here; a barrier before leaving only moved the release, still 1 in 28). Skipping the
    shutdown removes the race. Every file harden writes is already complete (atomic writes);
    only the standard streams need flushing.
    """
    for stream in (sys.stdout, sys.stderr):
        with contextlib.suppress(OSError, ValueError):  # a closed pipe or stream: nothing more to say
            stream.flush()
    os._exit(code)
