"""TRL's in-memory training datasets, built without a bytecode dump in the run log.

Why this exists: ``datasets.Dataset.from_dict`` fingerprints the new dataset by pickling it with
``dill``, and dill's ``detect.nestedglobals`` finds a function's global names by capturing the
output of ``dis.dis`` from a redirected ``sys.stdout``. Prefect's ``log_prints=True`` (the
reproduction's flows) replaces ``builtins.print`` for the run with a function that sends every
print to ``sys.stdout`` into the run log, redirected or not; so each SFT and GRPO run log carried
a disassembly (``RESUME``, ``LOAD_GLOBAL (pa)``, ...) and dill read no names back.

:func:`prints_follow_redirects` restores Python's own rule inside a block: a print aimed at stdout
while ``sys.stdout`` is no longer the stream it was when the block began goes to the current
``sys.stdout`` (the redirect), written as the builtin writes it; every other print goes to the
``print`` installed outside (the run log under Prefect, the terminal otherwise), so the trainer's
loss lines still reach the run log. Nothing here imports Prefect.
"""

from __future__ import annotations

import builtins
import sys
from contextlib import contextmanager
from typing import Any, Iterator


@contextmanager
def prints_follow_redirects() -> Iterator[None]:
    """Inside the block, ``print()`` honours a ``sys.stdout`` redirected after the block began.

    >>> import contextlib, io
    >>> logged = []
    >>> def run_log_print(*args, **kw):  # what Prefect's log_prints installs: stdout goes to the log
    ...     logged.append(" ".join(map(str, args)))
    >>> real, builtins.print = builtins.print, run_log_print
    >>> try:
    ...     with prints_follow_redirects():
    ...         buf = io.StringIO()
    ...         with contextlib.redirect_stdout(buf):
    ...             print("captured", 1)
    ...         print("for the log")
    ... finally:
    ...     builtins.print = real
    >>> buf.getvalue(), logged
    ('captured 1\\n', ['for the log'])
    """
    outer = builtins.print
    stdout_at_entry = sys.stdout

    def follow(*args: Any, sep: str | None = " ", end: str | None = "\n", file: Any = None, flush: bool = False) -> None:
        target = sys.stdout
        if (file is None or file is target) and target is not stdout_at_entry and target is not None:
            target.write((" " if sep is None else sep).join(map(str, args)) + ("\n" if end is None else end))
            if flush:
                target.flush()
            return
        outer(*args, sep=sep, end=end, file=file, flush=flush)

    builtins.print = follow
    try:
        yield
    finally:
        if builtins.print is follow:  # another patch installed meanwhile stays in place
            builtins.print = outer


def in_memory_dataset(columns: dict[str, list]):
    """``datasets.Dataset.from_dict(columns)`` under :func:`prints_follow_redirects` (same
    dataset, same features; its fingerprint is now what it is outside Prefect too)."""
    from datasets import Dataset

    with prints_follow_redirects():
        return Dataset.from_dict(columns)
