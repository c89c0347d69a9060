"""Errors that reach the user as one clear paragraph, each with the exit code the CLI returns."""

from __future__ import annotations


class DwcError(Exception):
    """Base class: a problem the user can fix. ``exit_code`` is what the CLI exits with."""

    exit_code = 2

    def __init__(self, message: str):
        super().__init__(message)
        self.message = message

    def __str__(self) -> str:
        return self.message


class ConfigError(DwcError):
    """experiments.yaml, --set overrides or a frozen config are invalid."""


class DataError(DwcError):
    """A dataset on disk is missing, incomplete or malformed."""


class RegistryError(DwcError):
    """The run registry cannot be opened or a run does not exist."""

    exit_code = 3


class UsageError(DwcError):
    """A command was called with arguments that cannot work."""


class TrainingError(DwcError):
    """Training stopped for a reason the user should read (NaN loss, out of memory, ...)."""

    exit_code = 1


class RunNotFound(UsageError):
    """A command named a run id that the registry does not hold (exit 2: the argument is wrong)."""


class RunLocked(UsageError):
    """A run's training process is alive (its run lock is held): it cannot be resumed, claimed or trained twice."""


class DiskFull(TrainingError):
    """A write failed (or would fail) for lack of space: names the path and the space left."""
