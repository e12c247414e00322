"""Every error a person or an operator can cause, under one base: a sentence and an outcome label.

A catch site (the bot's runner, both command lines) catches `EaselError` once: `str(error)` is
the sentence to show and `error.outcome` the label for logs and metrics. Anything else is a bug
and gets an apology with a reference id instead.
"""

from __future__ import annotations

from typing import ClassVar


class EaselError(Exception):
    """Expected and explained: str(error) is one sentence meant for whoever caused it."""

    outcome: ClassVar[str] = "error"


class UserError(EaselError, ValueError):
    """Something the person asked for or sent is not acceptable."""

    outcome = "bad_input"


class UploadError(UserError):
    """An uploaded file could not be fetched, read or accepted."""

    outcome = "bad_upload"


class TooLargeError(UserError):
    """A result could not be encoded small enough for the upload limit."""

    outcome = "too_large"


class BusyError(EaselError):
    """The pool cannot take this job now (queue full, wait too long, shutting down); safe to retry later."""

    outcome = "busy"
    SHUTTING_DOWN: ClassVar[str] = "The bot is shutting down; please try again in a minute."
    QUEUE_FULL: ClassVar[str] = "I'm busy with a queue of requests right now; please try again in a moment."


class JobTimeout(EaselError):
    """The job did not finish within its deadline."""

    outcome = "timeout"

    @classmethod
    def after(cls, seconds: float) -> JobTimeout:
        return cls(f"That took longer than {seconds:.0f} seconds and was stopped.")


class Cancelled(EaselError):
    """The person who asked cancelled the job (queued: it left the queue; running: it stops at the next batch or tile)."""

    outcome = "cancelled"
    AS_ASKED: ClassVar[str] = "🛑 Cancelled, as you asked."


class ResourceError(EaselError):
    """The job needs more memory than the device has, even at the smallest batch and tile."""

    outcome = "out_of_memory"


class ConfigError(EaselError):
    """The installation is misconfigured: a bad setting, a missing device or missing weights."""

    outcome = "config"


class SettingsError(ConfigError):
    """A setting is missing or malformed; the message names the variable and what it should be."""


class DeviceError(ConfigError):
    """The configured device does not exist here; the message says what was asked and what is visible."""


class WeightsError(ConfigError):
    """Weights are missing or could not be fetched; the message says what to do."""


class TaskContractError(RuntimeError):
    """A task broke its contract with the pool (a bug, not the person's doing): logged, and an apology."""
