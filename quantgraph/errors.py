"""User-facing errors: each names the problem and the fix in one line."""

from __future__ import annotations


class QuantGraphError(Exception):
    """An error caused by user input; the CLI prints it as one line and exits non-zero."""

    def __init__(self, problem: str, fix: str = "") -> None:
        self.problem = problem.rstrip(".")
        self.fix = fix.rstrip(".")
        super().__init__(self.one_line())

    def one_line(self) -> str:
        return f"{self.problem}. {self.fix}." if self.fix else f"{self.problem}."


class InputError(QuantGraphError):
    """Bad data, bad model file or bad option."""


class UnsupportedOpError(QuantGraphError):
    """The compiler met an operation it cannot lower or export."""


class PassError(QuantGraphError):
    """A pass in a pipeline failed; the message names the pass and the one before it."""
