"""Errors a user can read and act on.

Every failure caused by the user's input or environment (a bad file, a missing column, an
unreachable endpoint) is raised as an `EAError` subclass whose message says what is wrong and
how to fix it. The CLI prints the message and exits 2; the UI shows it. Anything else is a bug.
"""

from __future__ import annotations


class EAError(Exception):
    """Base class of user-facing errors: the message is meant for the person at the keyboard."""


class DataError(EAError):
    """The dataset cannot be used as given (file, format, columns, labels, splits)."""


class ConfigError(EAError):
    """A setting, model spec or option is invalid."""


class ModelError(EAError):
    """A small model cannot be built, loaded or trained."""


class LMError(EAError):
    """The large model cannot be reached or used (endpoint, key, model name)."""


class RunBusy(ConfigError):
    """Another process is writing the same run folder."""


class Cancelled(EAError):
    """The user cancelled a long-running stage."""

    def __init__(self, message: str = "Cancelled by the user.") -> None:
        super().__init__(message)
