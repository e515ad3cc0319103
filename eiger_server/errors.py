"""Errors that reach spec as error replies.

Each message says what was asked, what went wrong and what to do about it;
the protocol server sends ``str(error)`` to spec.
"""
from __future__ import annotations


class EigerError(Exception):
    """Base class of every error eiger_server reports to spec."""


class UnknownParameter(EigerError):
    """A name that is neither in the image_par table nor on the detector."""


class ParameterError(EigerError):
    """A known name used the wrong way: bad value, read-only, wrong version."""


class NotSupported(EigerError):
    """A name the requirements list but this server deliberately does not run."""


class DetectorError(EigerError):
    """The DCU refused a request or could not be reached."""

    def __init__(self, message: str, *, url: str = "", status: int | None = None,
                 text: str = "") -> None:
        super().__init__(message)
        self.url = url
        self.status = status
        self.text = text


class DataError(EigerError):
    """No image yet, a failed save, a failed transfer."""


class Busy(EigerError):
    """A long command is already running in the background."""
