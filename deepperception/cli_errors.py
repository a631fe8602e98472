"""The one error path of the ``deepperception`` command line.

Every command runs under :class:`ErrorHandlingGroup` (the top-level app and the ``eval`` sub-app
both use it), so an exception leaving any command is turned into the same thing:

* **bad input** (exit code 2): :class:`~deepperception.errors.PipelineError`, ``ValueError``
  (pydantic ``ValidationError`` included, one line per field), a missing/unreadable user-given
  path (``FileNotFoundError``, ``PermissionError``, ...), ``UnicodeDecodeError`` and YAML errors.
  One ``error: <what>, <where>`` line (plus field lines) on stderr.
* **anything else is a bug** (exit code 1): ``error: internal error: <type>: <msg> (rerun with
  --debug for the traceback)``.
* usage errors found by click/typer (unknown option, missing argument) keep click's own
  message and exit code 2; ``typer.Exit``/``SystemExit`` pass through untouched.

``--debug`` (``deepperception --debug ...``) or ``DP_DEBUG=1`` prints the traceback before the
error line; the exit code does not change, so scripts see the same result either way.

The handler sits in the click group (not only in ``main()``) so that in-process callers such as
``typer.testing.CliRunner`` get exactly what the console script gives. The exit it raises is a
:class:`CliExit`, a ``SystemExit`` whose ``str()`` is the rendered message, so such callers can
still read what went wrong from ``result.exception``.

>>> render_error(ValueError("bad --seed"))
('error: bad --seed', 2)
>>> render_error(FileNotFoundError(2, "No such file or directory", "x.jsonl"))
('error: No such file or directory: x.jsonl', 2)
>>> render_error(KeyError("k"))
("error: internal error: KeyError: 'k' (rerun with --debug for the traceback)", 1)
"""

from __future__ import annotations

import copy
import errno
import logging
import os
import sys
import traceback
from typing import Any

import typer
from typer.core import TyperGroup

from deepperception.errors import PipelineError

USER_ERROR = 2
INTERNAL_ERROR = 1
DEBUG_ENV = "DP_DEBUG"

# OSErrors that mean "the path you gave does not work", not "the program is broken".
# A full disk or quota (the store's filesystem), named with the file being written: the user's to fix.
_FULL_ERRNOS = (errno.ENOSPC, errno.EDQUOT)
_PATH_ERRORS = (FileNotFoundError, PermissionError, IsADirectoryError, NotADirectoryError, FileExistsError)


class CliExit(SystemExit):
    """Exit with ``code`` after the message was printed; ``str()`` is the message (for in-process callers)."""

    def __init__(self, code: int, message: str) -> None:
        super().__init__(code)
        self.message = message

    def __str__(self) -> str:
        return self.message


def debug_enabled(ctx: typer.Context | None = None) -> bool:
    """``--debug`` on the root command, or ``DP_DEBUG`` set to a true value."""
    if os.environ.get(DEBUG_ENV, "").strip().lower() in ("1", "true", "yes", "on"):
        return True
    while ctx is not None:
        if ctx.params.get("debug"):
            return True
        ctx = ctx.parent
    return False


def _yaml_error(exc: BaseException) -> str | None:
    yaml = sys.modules.get("yaml")
    if yaml is None or not isinstance(exc, yaml.YAMLError):
        return None
    mark = getattr(exc, "problem_mark", None)
    where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""
    name = getattr(mark, "name", None)
    src = f" in {name}" if name and not str(name).startswith("<") else ""
    problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
    return f"YAML does not parse{src}{where}: {problem}"


def _validation_error(exc: BaseException) -> str | None:
    try:
        from pydantic import ValidationError
    except ImportError:  # pragma: no cover - pydantic is a dependency
        return None
    if not isinstance(exc, ValidationError):
        return None
    from deepperception.config import validation_lines

    lines = validation_lines(exc)
    return f"invalid {exc.title}: {len(lines)} problem(s)\n" + "\n".join(f"  {line}" for line in lines)


def render_error(exc: BaseException) -> tuple[str, int]:
    """``(text to print on stderr, exit code)`` for an exception that left a command."""
    if isinstance(exc, UnicodeDecodeError):
        # Raw decode errors come from code that did not know the file; say what we can.
        return (f"error: input is not valid {exc.encoding}: byte {exc.object[exc.start:exc.start + 1]!r} "
                f"at offset {exc.start} ({exc.reason})"), USER_ERROR
    for special in (_yaml_error, _validation_error):
        msg = special(exc)
        if msg is not None:
            return f"error: {msg}", USER_ERROR
    if isinstance(exc, OSError) and exc.errno in _FULL_ERRNOS:  # a full disk is the store's, not a bug
        # pyarrow sets errno but words strerror its own way ("Error writing bytes to file. Detail: ...")
        where = f": {exc.filename}" if exc.filename is not None else f" ({' '.join(str(exc).split())})"
        return f"error: {os.strerror(exc.errno)}{where}", USER_ERROR
    full = [c for c in _FULL_ERRNOS if isinstance(exc, OSError) and f"[errno {c}]" in str(exc)]
    if full:  # pyarrow's wording of the same ("Error writing bytes to file. Detail: [errno 28] ...")
        return f"error: {os.strerror(full[0])} ({str(exc).strip().splitlines()[0]})", USER_ERROR
    if isinstance(exc, (PipelineError, ValueError)):
        code = getattr(exc, "exit_code", USER_ERROR)
        return f"error: {str(exc).strip() or type(exc).__name__}", code if isinstance(code, int) else USER_ERROR
    if isinstance(exc, OSError) and "AWS Error NETWORK_CONNECTION" in str(exc):  # store down after its retries
        return f"error: S3 store unreachable (DP_STORE_S3_ENDPOINT_URL): {' '.join(str(exc).split())}", USER_ERROR
    if isinstance(exc, _PATH_ERRORS) and exc.filename is not None:
        return f"error: {exc.strerror or exc}: {exc.filename}", USER_ERROR
    text = str(exc).strip().splitlines()
    detail = f": {text[0]}" if text else ""
    return (f"error: internal error: {type(exc).__name__}{detail} "
            "(rerun with --debug for the traceback)"), INTERNAL_ERROR


def handle(exc: BaseException, ctx: typer.Context | None = None) -> CliExit:
    """Print the error (and, with ``--debug``, the traceback) and return the exit to raise."""
    if debug_enabled(ctx):
        traceback.print_exception(type(exc), exc, exc.__traceback__, file=sys.stderr)
    message, code = render_error(exc)
    typer.echo(message, err=True)
    return CliExit(code, message)


class _WithoutTraceback(logging.Formatter):
    """Formats a copy of the record without its exception, so only this handler loses it."""

    def __init__(self, inner: logging.Formatter) -> None:
        super().__init__()
        self.inner = inner

    def format(self, record: logging.LogRecord) -> str:
        if record.exc_info or record.exc_text or record.stack_info:
            record = copy.copy(record)
            record.exc_info = record.exc_text = record.stack_info = None
        return self.inner.format(record)


def hide_console_tracebacks() -> int:
    """Keep tracebacks off the terminal for libraries that log them (Prefect logs every failed
    flow run's traceback): console handlers print the message only; other handlers (Prefect's
    API log, hence the UI) keep the full record. Call after the library set up its logging;
    returns how many handlers were changed. ``--debug`` skips this."""
    loggers = [logging.getLogger()] + [lg for lg in logging.Logger.manager.loggerDict.values()
                                       if isinstance(lg, logging.Logger)]
    changed = 0
    for lg in loggers:
        for h in lg.handlers:
            is_console = type(h) is logging.StreamHandler or type(h).__name__ == "PrefectConsoleHandler"
            if is_console and not isinstance(h.formatter, _WithoutTraceback):
                h.setFormatter(_WithoutTraceback(h.formatter or logging.Formatter()))
                changed += 1
    return changed


class ErrorHandlingGroup(TyperGroup):
    """A typer group whose sub-commands all share :func:`render_error`."""

    def invoke(self, ctx: typer.Context) -> Any:
        try:
            return super().invoke(ctx)
        except (typer.Exit, typer.Abort, typer.TyperException, SystemExit, KeyboardInterrupt):
            # click's own exits and usage errors (typer vendors click: these are its classes)
            # already carry their message and exit code.
            raise
        except Exception as exc:  # noqa: BLE001 - this *is* the one place errors are rendered
            raise handle(exc, ctx) from exc
