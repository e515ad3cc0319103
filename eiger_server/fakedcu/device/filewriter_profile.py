"""How the fake DCU's FileWriter and its restart/initialize behave: switches, with presets.

The default (``FileWriterProfile()``, preset ``"simple"``) is the fake as it
always was: a file appears only once complete, the series counter runs on
across ``initialize``, ``initialize`` ends in ``idle`` and only ``reboot``
resets the settings. The other presets behave like real DCUs do
(SIMPLON.md, "How real DCUs behave"):

* the master file exists from ``arm`` and files are listed while they are
  written, with their current size (``HEAD /data/<name>`` shows them grow);
* the FileWriter lags behind the detector by ``write_behind`` seconds, so its
  state stays ``acquire`` and the files grow after the last image;
* ``initialize`` restarts the sequence id (``$id`` names repeat);
* some DCUs report ``ready`` after ``initialize``;
* a ``restart`` of the SIMPLON service brings every setting back to its default.
"""
from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Dict

__all__ = ["FileWriterProfile", "PRESETS", "profile"]


@dataclass(frozen=True)
class FileWriterProfile:
    """The switches (see the module docstring)."""

    open_files_listed: bool = False           # master from arm, data files while written
    write_behind: float = 0.0                 # s the FileWriter lags behind the images
    initialize_restarts_sequence: bool = False
    ready_after_initialize: bool = False
    restart_resets_settings: bool = False


PRESETS: Dict[str, FileWriterProfile] = {
    "simple": FileWriterProfile(),
    # A DCU as the references describe it.
    "dectris": FileWriterProfile(open_files_listed=True, write_behind=1.0,
                                 initialize_restarts_sequence=True,
                                 restart_resets_settings=True),
    # The same, with a DCU that reports ready after initialize.
    "dectris-ready": FileWriterProfile(open_files_listed=True, write_behind=1.0,
                                       initialize_restarts_sequence=True,
                                       ready_after_initialize=True,
                                       restart_resets_settings=True),
}


def profile(name: str, **changes: object) -> FileWriterProfile:
    """The preset ``name``, with ``changes`` applied (``profile("dectris", write_behind=2)``)."""
    try:
        base = PRESETS[name]
    except KeyError:
        raise ValueError(f"unknown file writer profile {name!r}; choose one of "
                         f"{', '.join(PRESETS)}") from None
    return replace(base, **changes)  # type: ignore[arg-type]
