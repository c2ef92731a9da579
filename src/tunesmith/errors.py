"""User-facing errors: what went wrong, where (file, row, key), and how to fix it.

The CLI turns any TunesmithError into one message and exit status 2. Everything else
is a bug in tunesmith and keeps its traceback.
"""
from __future__ import annotations


class TunesmithError(Exception):
    """A problem the user can fix. `str(err)` is the whole message."""

    def __init__(self, message: str, hint: str | None = None):
        self.message = message
        self.hint = hint
        super().__init__(message, hint)  # both in args, so the error pickles across processes

    def __str__(self) -> str:
        return f"{self.message}\n  hint: {self.hint}" if self.hint else self.message


class ConfigError(TunesmithError):
    """A config key is unknown, missing or of the wrong type."""


class DataError(TunesmithError):
    """A data file is missing or unreadable, or a row is malformed."""


class ModelError(TunesmithError):
    """A model or tokenizer cannot be loaded or does not fit the prepared data."""


class OutputError(TunesmithError):
    """An output (prepared data, checkpoint, final model) could not be written: disk full, permissions."""


def row_error(row: int, message: str, hint: str | None = None) -> DataError:
    return DataError(f"row {row}: {message}", hint)
