"""The one exception family users see. Each error names the thing that is wrong and the fix.

The CLI prints ``RsvlmError`` as one line (no traceback) and exits with code 2.
"""

from __future__ import annotations


class RsvlmError(Exception):
    """Base class: a user-facing error with a message and an optional fix."""

    def __init__(self, message: str, fix: str | None = None) -> None:
        self.message = message
        self.fix = fix
        super().__init__(message if fix is None else f"{message}\n  fix: {fix}")


class CheckpointError(RsvlmError):
    """A checkpoint is missing, truncated, corrupt, or has a key layout we do not know."""


class BundleError(RsvlmError):
    """A bundle is missing files, fails its sha256 checks, or was written by a newer format."""


class InputError(RsvlmError):
    """A user input (image, label list, batch, option) cannot be used."""


class BackendError(RsvlmError):
    """A requested backend is not available on this machine or build."""
