"""The errors a user can act on. Each carries the exit code the command line ends with.

Every stage raises a subclass of `LensopsError`; `lensops.cli` turns any of them into a red
`error: ...` line and its exit code, in one place. Anything else is a bug and keeps its traceback.

| class | exit code | for |
| --- | --- | --- |
| `UsageError` | 2 | a bad setting, reference, path or argument: the user changes the command |
| `CheckFailed` | 1 | the data or a model failed a check, a run failed, a move was refused |
"""

from __future__ import annotations


class LensopsError(Exception):
    """Base of every error lensops reports to a user instead of a traceback."""

    exit_code = 2
    prefix = ""  # printed before the message, e.g. "refused: "

    def describe(self) -> str:
        return f"{self.prefix}{self}"


class UsageError(LensopsError, ValueError):
    """The command, a setting, a reference or a path cannot be used as given (exit 2)."""

    exit_code = 2


class CheckFailed(LensopsError, RuntimeError):
    """The data or a model failed a check, a run did not finish, or a move was refused (exit 1)."""

    exit_code = 1


class NotFound(UsageError, FileNotFoundError):
    """A file or folder the command needs does not exist; the message says how to make it (exit 2)."""
