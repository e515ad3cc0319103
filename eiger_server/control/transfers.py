"""FileWriter files on the DCU: files, filelist, transfer, delete, auto_delete.

The DCU keeps its HDF5 files in memory, so nothing may be deleted there until
a complete, verified copy exists here. A transfer therefore

0. waits until the files are finished: a real FileWriter creates the master
   at ``arm`` and goes on writing after the last image, so the files are
   taken only once the filewriter has left ``acquire`` and two looks
   (``HEAD /data/<name>``) half a second apart find the same files with the
   same sizes -- within ``transfer_wait`` seconds, else an error that says
   which file was still growing,
1. streams ``GET /data/<name>`` in 1 MiB chunks into a hidden temporary file
   beside the final name in data_directory (after checking the free space),
2. checks the byte count against Content-Length and opens the copy with h5py
   (a data file must hold ``/entry/data/data`` and its last image must
   decompress; a master must hold ``/entry``),
3. only then renames it to its final name, never over a different file
   (an identical file already there counts as transferred; a different one
   keeps its place and the copy gets the next free ``-img###`` name, with the
   master's links rewritten to match),
4. and, with auto_delete, deletes the DCU's files only once every file of the
   request is safely here and a last look finds each still of the size that
   was copied (a file that changed meanwhile is kept on the DCU).

Data files go before their master, so a master on disk always finds its data.
Any failure removes the temporary file and leaves the DCU untouched.

Listing: SIMPLON 1.8 reports the files as the filewriter status value
``files``; DECTRIS' own client lists them with ``GET
/filewriter/api/<version>/files``; and the DCU's web server serves an HTML
index at ``GET /data/`` whose links are the file names (the way on 1.6, which
has no ``files`` status). They are tried in that order on 1.7+ (status last
on 1.6), and the first that answers is remembered.
"""
from __future__ import annotations

import filecmp
import fnmatch
import logging
import os
import re
import shutil
import time
from typing import Any, Callable, Dict, List, Optional, Tuple
from urllib.parse import unquote

from eiger_server.components.binding import component
from eiger_server.components.protocols import DetectorConfig, FileSettings
from eiger_server.simplon.rest import SimplonClient
from eiger_server.storage import paths
from eiger_server.values import one_arg, parse_bool, parse_number
from eiger_server.errors import DataError, DetectorError, ParameterError

log = logging.getLogger(__name__)

CHUNK = 1 << 20
# A DCU file name: what the filewriter makes from name_pattern. Anything else
# (a '/', '..', a leading dot, odd characters) could address something other
# than a file in data_directory, so it is refused.
_SAFE_NAME = re.compile(r"[A-Za-z0-9_\-][A-Za-z0-9._\-]*\Z")
_SAFE_PATTERN = re.compile(r"[A-Za-z0-9._\-*?\[\]!]+\Z")
_SAFE_NAME_CHARS = "._-"
_SAFE_PATTERN_CHARS = "._-*?[]!"
_HREF = re.compile(r"""href=["']([^"'?#]+)["']""", re.IGNORECASE)
#: Seconds a transfer waits for the filewriter to finish its files (transfer_wait).
WAIT_LIMIT = 120.0
#: Seconds between two looks at the files: facility drivers wait half a second.
SETTLE = 0.5


def check_name(name: str) -> str:
    """``name`` if it is a plain DCU file name, else DataError."""
    if not _SAFE_NAME.match(name or "") or ".." in name:
        raise DataError(f"file name '{name}' is refused{_why(name, _SAFE_NAME_CHARS)}: DCU "
                        "file names are plain names of letters, digits, '.', '_' and '-' "
                        "(no '/', no '..')")
    return name


def check_pattern(pattern: str) -> str:
    """``pattern`` if it is a shell-style pattern over plain file names."""
    if not _SAFE_PATTERN.match(pattern or "") or ".." in pattern or pattern.startswith("."):
        raise DataError(f"file pattern '{pattern}' is refused{_why(pattern, _SAFE_PATTERN_CHARS)}"
                        ": use a file name or a shell pattern such as 'eiger_12_*' "
                        "(no '/', no '..')")
    return pattern


def _why(text: str, allowed: str) -> str:
    """' (it contains ':')' for the first character outside ``allowed``."""
    for char in text or "":
        if not (char.isascii() and (char.isalnum() or char in allowed)):
            return f" (it contains {char!r})"
    return ""


def is_master(name: str) -> bool:
    return name.endswith("_master.h5")


_DATA_FILE = re.compile(r"_data_\d{6}\.h5$")


def is_data(name: str) -> bool:
    # by the FileWriter's numbered suffix: a master named scan_data_7_master.h5 is no data file
    return bool(_DATA_FILE.search(name)) and not is_master(name)


@component
class FileTransfers:
    """The filewriter's files as spec sees them.

    ``stopping`` is true once the server shuts down (the job runner's flag).
    """

    def __init__(self, detector: DetectorConfig, simplon: SimplonClient,
                 settings: FileSettings, stopping: Callable[[], bool]) -> None:
        self.detector = detector
        self.simplon = simplon
        self.settings = settings
        self._stopping_flag = stopping
        self.auto_delete = False
        self.wait_limit = WAIT_LIMIT
        self._list_via: Optional[str] = None       # "status" or "files", once known

    # -- auto_delete -----------------------------------------------------
    def get_auto_delete(self) -> bool:
        return self.auto_delete

    def set_auto_delete(self, *args: str) -> bool:
        self.auto_delete = parse_bool(one_arg(args, "auto_delete"), "auto_delete")
        return self.auto_delete

    def get_transfer_wait(self) -> float:
        return self.wait_limit

    def set_transfer_wait(self, *args: str) -> float:
        value = parse_number(one_arg(args, "transfer_wait"), "transfer_wait")
        if not value >= 0 or value > 86400:
            raise ParameterError("transfer_wait: give the seconds a transfer waits for the "
                                 "filewriter to finish its files (0 to 86400)")
        self.wait_limit = value
        return value

    # -- listing ---------------------------------------------------------
    def get_files(self) -> List[str]:
        """Names of the files on the DCU, as the DCU lists them."""
        order = (["status", "files", "index"] if self.detector.version_at_least(1, 7)
                 else ["files", "index", "status"])
        if self._list_via:
            order.remove(self._list_via)
            order.insert(0, self._list_via)
        failures = []
        for via in order:
            try:
                value = self._list(via)
            except DetectorError as exc:
                if exc.status is None:               # the DCU is not answering at all
                    raise
                failures.append(str(exc))
                continue
            if not isinstance(value, list):
                failures.append(f"{via}: unexpected answer {value!r:.100}")
                continue
            self._list_via = via
            return [str(name) for name in value]
        raise DetectorError("cannot list the files on the DCU: " + "; ".join(failures))

    def _list(self, via: str) -> Any:
        """One way of listing the files (see the module docstring)."""
        simplon = self.simplon
        if via == "status":
            value = simplon.get_value("filewriter", "status", "files")
            return [] if value is None else value
        if via == "files":
            url = simplon.url("filewriter", "files")
            value = simplon._json(simplon.request("GET", url, what="list the DCU's files"), url)
            return value.get("value") if isinstance(value, dict) else value
        # The web server's index of /data/: the links are the file names.
        response = simplon.request("GET", simplon.data_url(""), what="index of /data/")
        if "html" not in response.headers.get("Content-Type", "html"):
            return None
        names = []
        for link in _HREF.findall(response.text):
            name = unquote(link).rsplit("/", 1)[-1]
            if _SAFE_NAME.match(name) and ".." not in name and name not in names:
                names.append(name)
        return names

    def get_filelist(self, *args: str) -> List[str]:
        """The DCU's files matching a shell pattern (all without one)."""
        pattern = " ".join(args).strip() or "*"
        check_pattern(pattern)
        return [name for name in self.get_files() if fnmatch.fnmatchcase(name, pattern)]

    def default_pattern(self) -> str:
        """Files of the current prefix (any series id): ``<prefix with $id -> *>_*``."""
        return paths.expand_id(self.settings.prefix, "*") + "_*"

    def _select(self, pattern: str, what: str) -> List[str]:
        """Names on the DCU matching ``pattern``; an error when there are none."""
        names, available = self._match(pattern)
        wild = any(ch in pattern for ch in "*?[")
        if not names:
            if wild:
                raise DataError(f"{what}: no file on the DCU matches '{pattern}' "
                                f"({len(available)} files there; 'files' lists them)")
            raise DataError(f"{what}: '{pattern}' is not on the DCU; 'files' lists "
                            "what is there")
        return names

    def _match(self, pattern: str) -> Tuple[List[str], List[str]]:
        """(names matching ``pattern``, data files before masters; all names listed)."""
        check_pattern(pattern)
        if not any(ch in pattern for ch in "*?["):
            check_name(pattern)
        available = self.get_files()
        names = [name for name in available if fnmatch.fnmatchcase(name, pattern)]
        for name in names:
            check_name(name)
        # Data files before masters: a master copied here always finds its data.
        return sorted(names, key=lambda n: (is_master(n), n)), available

    def clashes(self, prefixes: List[str]) -> List[str]:
        """The DCU's files a series written as one of ``prefixes`` would overwrite."""
        files = self.get_files()
        return [name for name in files for prefix in prefixes
                if name == f"{prefix}_master.h5"
                or fnmatch.fnmatchcase(name, f"{prefix}_data_*.h5")]

    # -- finished files ----------------------------------------------------
    def _size(self, name: str) -> Optional[int]:
        """The size the DCU gives for ``name`` (HEAD /data/<name>); None if it is gone."""
        try:
            response = self.simplon.request("HEAD", self.simplon.data_url(name),
                                            what=f"size of '{name}'")
        except DetectorError as exc:
            if exc.status == 404:
                return None
            raise
        response.close()
        length = response.headers.get("Content-Length", "")
        return int(length) if length.isdigit() else None

    def _writer_state(self) -> str:
        try:
            return str(self.simplon.get_value("filewriter", "status", "state"))
        except DetectorError as exc:
            if exc.status is None:
                raise
            return "unknown"                     # a DCU without the value: sizes decide

    def _wait_finished(self, pattern: str, what: str) -> Tuple[List[str], Dict[str, int]]:
        """The files matching ``pattern`` once finished, with their sizes.

        Finished: the filewriter is not in ``acquire`` and two looks SETTLE
        seconds apart find the same names with the same sizes.
        """
        deadline = time.monotonic() + self.wait_limit
        before: Optional[Dict[str, Optional[int]]] = None
        while True:
            self._check_stop(f"{what} stopped while waiting for the filewriter")
            # _match refuses a bad pattern before the DCU is asked, and unsafe names it lists.
            names, _ = self._match(pattern)
            state = self._writer_state()
            if not names and state != "acquire":
                return self._select(pattern, what), {}      # the error: nothing matches
            sizes = {name: self._size(name) for name in names}
            if state != "acquire" and sizes == before and None not in sizes.values():
                return names, {name: int(size) for name, size in sizes.items()
                               if size is not None}
            if before is not None and time.monotonic() + SETTLE > deadline:
                raise DataError(self._still_writing(what, state, before, sizes))
            before = sizes
            time.sleep(SETTLE)

    def _still_writing(self, what: str, state: str, before: Optional[Dict[str, Optional[int]]],
                       sizes: Dict[str, Optional[int]]) -> str:
        """Why the files are not finished, for the error."""
        why = []
        if state == "acquire":
            why.append("the filewriter is still in state 'acquire'")
        if before is not None:
            for name, size in sizes.items():
                old = before.get(name)
                if name not in before:
                    why.append(f"'{name}' appeared")
                elif size is None:
                    why.append(f"'{name}' gives no size")
                elif old != size:
                    why.append(f"'{name}' grew from {old} to {size} bytes")
            why += [f"'{name}' vanished" for name in before if name not in sizes]
        return (f"{what}: the files are not finished after {self.wait_limit:g} s ("
                + ("; ".join(why[:4]) or "they are still changing")
                + "); nothing was transferred or deleted. Transfer again once the series "
                "is written, or set transfer_wait higher")

    # -- delete ----------------------------------------------------------
    def do_delete(self, *args: str) -> str:
        """Delete the DCU files matching a name or pattern."""
        pattern = " ".join(args).strip()
        if not pattern:
            raise ParameterError("delete needs a file name or pattern; 'files' lists the "
                                 "files on the DCU")
        names = self._select(pattern, "delete")
        for count, name in enumerate(names):
            self._check_stop(f"delete stopped after {count} of {len(names)} files")
            self.simplon.delete_data(name)
        log.info("deleted %d files from the DCU: %s", len(names), ", ".join(names))
        return f"{len(names)} file{'s' if len(names) != 1 else ''} deleted from the DCU"

    # -- transfer --------------------------------------------------------
    def _stopping(self) -> bool:
        """The server is shutting down: a running transfer gives up at its next chunk."""
        return bool(self._stopping_flag())

    def _check_stop(self, message: str) -> None:
        if self._stopping():
            raise DataError(message + "; the server is stopping")

    def do_transfer(self, *args: str) -> str:
        """Copy the DCU files matching a name or pattern into data_directory.

        Without one, the files of the current prefix. Returns a summary.
        """
        pattern = " ".join(args).strip() or self.default_pattern()
        names, sizes = self._wait_finished(pattern, "transfer")
        directory = self.settings.data_directory
        renamed: Dict[str, str] = {}                 # DCU name -> local name, when they differ
        done: List[Tuple[str, str, int, str]] = []   # (name, local path, bytes, how)
        for name in names:
            try:
                try:
                    done.append(self._transfer_one(name, directory, renamed,
                                                   sizes.get(name)))
                except OSError as exc:           # rename/stat/compare in data_directory
                    raise paths.disk_error(exc, os.path.join(directory, name),
                                           "placing the transferred file") from None
            except DataError as exc:
                kept = (f"; {len(done)} of {len(names)} files were transferred before it"
                        if done else "")
                raise DataError(f"transfer of '{name}' failed: {exc}{kept}; nothing was "
                                "deleted from the DCU") from None
        try:
            # The renames must be on disk before the DCU may forget its copies.
            paths.fsync_dir(directory)
        except OSError as exc:
            raise DataError(f"{len(done)} files transferred to {directory}, but "
                            f"{paths.disk_error(exc, directory, 'syncing the directory')}; "
                            "nothing was deleted from the DCU") from None
        total = sum(size for _, _, size, _ in done)
        notes = []
        present = [name for name, _, _, how in done if how == "present"]
        if present:
            notes.append(f"{len(present)} already there, identical")
        for name, path, _, how in done:
            if how == "renamed":
                notes.append(f"'{name}' saved as '{os.path.basename(path)}' (a different "
                             "file had its name)")
        if self.auto_delete:
            # Every file of the request is verified here; one that changed on the DCU
            # since it was copied is not what was verified, and stays there.
            changed = [name for name, _, size, _ in done if self._size(name) != size]
            if changed:
                raise DataError(f"{len(done)} files transferred to {directory}, but "
                                f"{', '.join(changed)} changed on the DCU after the copy; "
                                "nothing was deleted from the DCU: transfer again once "
                                "the filewriter is done")
            for count, (name, _, _, _) in enumerate(done):
                try:
                    self.simplon.delete_data(name)
                except DetectorError as exc:
                    raise DataError(f"{len(done)} files transferred to {directory}, but "
                                    f"deleting '{name}' from the DCU failed ({exc}) after "
                                    f"{count} deletions; the copies here are complete: "
                                    "delete the rest with 'delete'") from None
            notes.append("deleted from the DCU")
        summary = (f"{len(done)} file{'s' if len(done) != 1 else ''} transferred "
                   f"({total} bytes) to {directory}")
        if notes:
            summary += "; " + "; ".join(notes)
        log.info("%s", summary)
        return summary

    def _transfer_one(self, name: str, directory: str, renamed: Dict[str, str],
                      size: Optional[int] = None) -> Tuple[str, str, int, str]:
        """Fetch, verify and place one file of finished ``size``; (name, path, bytes, how)."""
        target = paths.safe_join(directory, name, allow_subdirs=False)
        tmp = paths.temp_name(target)
        try:
            written = self._download(name, directory, tmp)
            if size is not None and written != size:
                raise DataError(f"it changed on the DCU while it was copied ({size} bytes "
                                f"when finished, {written} copied)")
            self._verify(tmp, name, written)
            if is_master(name) and renamed:
                self._relink(tmp, name, renamed)
            final, how = target, "new"
            if os.path.exists(target):
                if filecmp.cmp(tmp, target, shallow=False):
                    os.unlink(tmp)
                    log.info("'%s' is already in %s, identical", name, directory)
                    return name, target, written, "present"
                final, how = paths.unique_path(target), "renamed"
                renamed[name] = os.path.basename(final)
                log.warning("'%s' exists and differs: saving the DCU's file as '%s'",
                            target, final)
            os.replace(tmp, final)
        except BaseException:
            # Nothing half-written may remain, under any name.
            try:
                os.unlink(tmp)
            except OSError:
                pass
            raise
        log.info("transferred '%s' (%d bytes) to %s", name, written, final)
        return name, final, written, how

    def _download(self, name: str, directory: str, tmp: str) -> int:
        """Stream ``/data/<name>`` into ``tmp``; the number of bytes, checked."""
        simplon = self.simplon
        try:
            response = simplon.open_data(name)
        except DetectorError as exc:
            raise DataError(str(exc)) from None
        try:
            length = response.headers.get("Content-Length")
            expected = int(length) if length and length.isdigit() else None
            if expected is not None:
                free = shutil.disk_usage(directory).free
                if expected > free:
                    raise DataError(f"'{name}' needs {expected} bytes but only {free} are "
                                    f"free in '{directory}'; the disk is full: free space "
                                    "or change data_directory")
            written = 0
            try:
                with open(tmp, "wb") as out:
                    for chunk in simplon.iter_content(response, CHUNK):
                        if self._stopping():
                            raise DataError(f"stopped after {written} bytes because the "
                                            "server is shutting down")
                        out.write(chunk)
                        written += len(chunk)
                    out.flush()
                    os.fsync(out.fileno())
            except OSError as exc:
                raise paths.disk_error(exc, os.path.join(directory, name),
                                       "writing the transferred file") from None
            except DetectorError as exc:
                raise DataError(f"the download broke off after {written} bytes "
                                f"({exc})") from None
        finally:
            response.close()
        if expected is None:
            log.warning("'%s': the DCU sent no Content-Length; the size cannot be checked",
                        name)
        elif written != expected:
            raise DataError(f"received {written} of {expected} bytes; the connection "
                            "to the DCU broke off")
        return written

    @staticmethod
    def _verify(tmp: str, name: str, size: int) -> None:
        """An HDF5 file must open and hold what its kind needs."""
        if not name.endswith(".h5"):
            return
        import h5py
        import hdf5plugin  # noqa: F401  registers the bitshuffle/LZ4 filters
        try:
            with h5py.File(tmp, "r") as h5:
                if is_data(name):
                    dset = h5.get("/entry/data/data")
                    if not isinstance(dset, h5py.Dataset):
                        raise DataError("it has no /entry/data/data dataset")
                    if dset.shape and dset.shape[0] > 0:
                        dset[dset.shape[0] - 1]      # the filter must decode it
                elif "entry" not in h5:
                    raise DataError("it has no /entry group")
        except DataError as exc:
            raise DataError(f"the copy ({size} bytes) is not a valid DCU HDF5 file: "
                            f"{exc}") from None
        except Exception as exc:                     # h5py raises OSError/KeyError/...
            raise DataError(f"the copy ({size} bytes) does not open as HDF5: "
                            f"{exc}") from None

    @staticmethod
    def _relink(tmp: str, name: str, renamed: Dict[str, str]) -> None:
        """Point a master's external links at data files saved under new names."""
        import h5py
        try:
            with h5py.File(tmp, "r+") as h5:
                group = h5.get("/entry/data")
                if group is None:
                    return
                for key in list(group.keys()):
                    link = group.get(key, getlink=True)
                    if isinstance(link, h5py.ExternalLink) and link.filename in renamed:
                        new = h5py.ExternalLink(renamed[link.filename], link.path)
                        del group[key]
                        group[key] = new
        except Exception as exc:
            raise DataError(f"cannot update the links of '{name}' to the renamed data "
                            f"files: {exc}") from None

