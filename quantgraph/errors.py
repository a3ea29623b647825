"""User-facing errors: each names the problem and the fix in one line.

Exit codes of the CLI: 2 for bad input (``InputError`` and friends), 1 for a failure of the environment
(``EnvironmentFailure``: disk full, permissions, a read-only folder), 3 for a bug in quantgraph itself.
"""

from __future__ import annotations

import contextlib
import errno
import logging
import os
from collections.abc import Iterator

#: exit status of the CLI for each kind of failure
EXIT_INPUT = 2
EXIT_ENVIRONMENT = 1
EXIT_INTERNAL = 3


class QuantGraphError(Exception):
    """An error caused by user input; the CLI prints it as one line and exits non-zero."""

    exit_code = EXIT_INPUT

    def __init__(self, problem: str, fix: str = "") -> None:
        self.problem = problem.rstrip(".")
        self.fix = fix.rstrip(".")
        super().__init__(self.one_line())

    def one_line(self) -> str:
        text = f"{self.problem}. {self.fix}." if self.fix else f"{self.problem}."
        return " ".join(text.split())


class InputError(QuantGraphError):
    """Bad data, bad model file or bad option."""


class UnsupportedOpError(QuantGraphError):
    """The compiler met an operation it cannot lower or export."""


class PassError(QuantGraphError):
    """A pass in a pipeline failed; the message names the pass and the one before it."""


class EnvironmentFailure(QuantGraphError):
    """The machine, not the input, is at fault: a full disk, missing permissions, a read-only folder."""

    exit_code = EXIT_ENVIRONMENT


def first_line(exc: BaseException, limit: int = 160) -> str:
    """``Type: message`` of an exception on one line, cut to ``limit`` characters."""
    text = " ".join(str(exc).split()) or "no message"
    text = f"{type(exc).__name__}: {text}"
    return text if len(text) <= limit else text[: limit - 3] + "..."


_OS_FIXES = {
    errno.ENOSPC: "free disk space or write to another disk",
    errno.EDQUOT: "free space in your quota or write elsewhere",
    errno.EACCES: "check the permissions or choose a folder you can write to",
    errno.EPERM: "check the permissions or choose a folder you can write to",
    errno.EROFS: "the file system is read-only; choose a writable folder",
    errno.EISDIR: "give a file name, not a folder",
    errno.ENOTDIR: "a part of the path is a file, not a folder; fix the path",
    errno.ENOENT: "check the path",
    errno.ENAMETOOLONG: "use a shorter path",
    errno.EMFILE: "raise the open-file limit (ulimit -n)",
    errno.ENOMEM: "free memory or use a smaller input",
}


def os_error(exc: OSError) -> EnvironmentFailure:
    """The one-line ``EnvironmentFailure`` for an ``OSError`` (names the file and what to do)."""
    reason = exc.strerror or first_line(exc)
    where = f" {exc.filename}" if exc.filename else ""
    if exc.filename2:
        where += f" -> {exc.filename2}"
    fix = _OS_FIXES.get(exc.errno or -1, "check the path, free space and permissions")
    return EnvironmentFailure(f"cannot access{where}: {reason}", fix)


@contextlib.contextmanager
def reading(path: str | os.PathLike[str], what: str, fix: str) -> Iterator[None]:
    """Turn any unexpected failure while parsing the user's file ``path`` into one ``InputError``.

    ``QuantGraphError`` and ``OSError`` (an environment failure) pass through; ``MemoryError`` becomes an
    input error (the file asks for more memory than it should). Library loggers (torch.export logs whole
    tracebacks before raising) are silenced meanwhile.
    """
    previous = logging.root.manager.disable
    logging.disable(logging.CRITICAL)
    try:
        yield
    except (QuantGraphError, OSError, KeyboardInterrupt):
        raise
    except MemoryError as exc:
        raise InputError(f"{path} needs more memory than is available to load as {what}", fix) from exc
    except RecursionError as exc:
        raise InputError(f"{path} is nested too deeply to load as {what}", fix) from exc
    except Exception as exc:  # a malformed file can make any parser raise anything
        raise InputError(f"{path} is not a valid {what} ({first_line(exc)})", fix) from exc
    finally:
        logging.disable(previous)


def describe_failure(exc: BaseException) -> tuple[int, str]:
    """The CLI's exit status and one-line message for any exception a command raised."""
    if isinstance(exc, QuantGraphError):
        return exc.exit_code, exc.one_line()
    if isinstance(exc, OSError):
        failure = os_error(exc)
        return failure.exit_code, failure.one_line()
    if isinstance(exc, MemoryError):
        return EXIT_ENVIRONMENT, "out of memory. Free memory or use a smaller input."
    return (
        EXIT_INTERNAL,
        f"internal error ({first_line(exc)}). This is a bug in quantgraph: rerun with --debug for the "
        "traceback and report it.",
    )
