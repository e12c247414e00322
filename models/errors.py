"""Errors that cross the pool boundary as plain sentences."""

from __future__ import annotations


class UserError(ValueError):
    """Something the person asked for or sent is not acceptable; str(error) is one sentence for them."""


class BusyError(RuntimeError):
    """The pool cannot take this job now (queue full, or shutting down); safe to retry later."""


class JobTimeout(TimeoutError):
    """The job did not finish within its deadline."""


class ResourceError(RuntimeError):
    """The job needs more memory than the device has, even at the smallest batch and tile."""


class DeviceError(RuntimeError):
    """The configured device does not exist here; the message says what was asked and what is visible."""
