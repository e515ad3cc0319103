"""The image_par table: every name spec can read or write, as data.

One row per name says where the value lives: a SIMPLON parameter or command
(``subsystem``/``task``/``key``, the key possibly different per API version)
or the component methods that serve it (``local=Local(read=..., write=...)``,
see components/binding.py: a wrong binding fails when this module is imported), its
access (R, RW, W or -- for commands), the SIMPLON versions that have it, and
how text from spec converts (``conv``).
"""
from __future__ import annotations

import difflib
import re
from dataclasses import dataclass
from typing import Dict, List, Mapping, Optional, Tuple, Union

from eiger_server.control.acquisition import Acquisition
from eiger_server.components.binding import BindingError, Local
from eiger_server.control.jobs import JobRunner
from eiger_server.control.monitor_images import MonitorImages
from eiger_server.control.pixel_masks import PixelMasks
from eiger_server.control.settings import ServerInfo, Settings
from eiger_server.control.transfers import FileTransfers
from eiger_server.simplon.rest import version_tuple
from eiger_server.stream.handler import StreamHandler

Key = Union[None, str, Mapping[str, Optional[str]]]


@dataclass(frozen=True)
class Param:
    name: str
    section: str
    access: str                     # "R", "RW", "W" or "--" (command)
    versions: str                   # as in the requirements: ALL, >1.6, >1.7, <1.7, 1.6, >1.8
    doc: str
    subsystem: Optional[str] = None  # detector, filewriter, stream, monitor, system
    task: Optional[str] = None       # config, status, command
    key: Key = None                  # SIMPLON name; a dict maps "1.6"/"1.8" to names (None: absent)
    local: Optional[Local] = None    # the component methods that serve it
    conv: str = "auto"               # auto, enabled, float, int, str, bool, darray
    background: bool = False         # run as a background command (jobs.py)
    unsupported: Optional[str] = None  # a deliberate "not supported" with this reason
    pattern: Optional[str] = None    # regex for names with a number in them (link/n)
    # A read-only name whose read takes an argument: spec's three-argument
    # image_par(unit, name, arg) arrives as "set name arg" and is read with arg.
    set_reads: bool = False

    def __post_init__(self) -> None:
        if self.local is not None:
            if self.subsystem is not None:
                raise BindingError(f"image_par row '{self.name}' names both a SIMPLON "
                                   "subsystem and local methods")
            self.local.check_access(self.name, self.access, self.set_reads)
        elif self.unsupported is None and (self.subsystem is None or self.task is None):
            raise BindingError(f"image_par row '{self.name}' names neither local methods "
                               "nor a SIMPLON subsystem and task")

    # -- derived --------------------------------------------------------
    @property
    def simplon_place(self) -> Tuple[str, str]:
        """(subsystem, task) of a SIMPLON row."""
        if self.subsystem is None or self.task is None:
            raise BindingError(f"image_par row '{self.name}' is not a SIMPLON row")
        return self.subsystem, self.task

    @property
    def readable(self) -> bool:
        return self.access in ("R", "RW", "--")

    @property
    def writable(self) -> bool:
        return self.access in ("W", "RW", "--")

    @property
    def is_command(self) -> bool:
        return self.access == "--"

    def min_max_version(self) -> Tuple[Tuple[int, int], Tuple[int, int]]:
        """The (lowest, highest) SIMPLON (major, minor) that has this name."""
        v = self.versions.strip()
        if v == "ALL":
            return (0, 0), (99, 99)
        if v.startswith(">"):
            major, minor = version_tuple(v[1:])[:2]
            # ">1.8" in the requirements means "from 1.8 on" (stream V2 exists on
            # 1.8); ">1.6" and ">1.7" mean the next version up (1.7, 1.8).
            return ((major, minor) if (major, minor) >= (1, 8) else (major, minor + 1)), (99, 99)
        if v.startswith("<"):
            major, minor = version_tuple(v[1:])[:2]
            return (0, 0), (major, minor - 1)
        major, minor = version_tuple(v)[:2]
        return (major, minor), (major, minor)

    def available_in(self, version: str) -> bool:
        low, high = self.min_max_version()
        return low <= version_tuple(version)[:2] <= high

    def version_text(self) -> str:
        low, high = self.min_max_version()
        if high == (99, 99):
            return "any SIMPLON version" if low == (0, 0) else f"SIMPLON {low[0]}.{low[1]} or later"
        if low == (0, 0):
            return f"SIMPLON {high[0]}.{high[1]} or earlier"
        return f"SIMPLON {low[0]}.{low[1]}"

    def simplon_key(self, version: str, number: Optional[str] = None) -> Optional[str]:
        """The SIMPLON name for this API version (None: this version lacks it)."""
        key = self.key
        if isinstance(key, Mapping):
            short = ".".join(str(n) for n in version_tuple(version)[:2])
            key = key.get(short, key.get("default"))
        elif key is None:
            key = self.name
        if key is not None and number is not None:
            key = key.replace("{n}", number)
        return key


# Status names a DCU may lack, and the older name to read instead (an EIGER1
# running SIMPLON 1.8 may only serve the board_000 ones).
STATUS_FALLBACK: Dict[str, str] = {"temperature": "board_000/th0_temp",
                                   "humidity": "board_000/th0_humidity"}


def _p(name: str, section: str, access: str, versions: str, doc: str, **kw) -> Param:
    return Param(name, section, access, versions, doc, **kw)


DC, DS, DCMD = "DETECTOR CONFIGURATION", "DETECTOR STATUS", "DETECTOR COMMANDS"
FC, FS, FCMD = "FILEWRITER CONFIGURATION", "FILEWRITER STATUS", "FILEWRITER COMMANDS"
SC, SS, SCMD = "STREAM CONFIGURATION", "STREAM STATUS", "STREAM COMMANDS"
MS, MC, MCMD, MI = "MONITOR STATUS", "MONITOR CONFIGURATION", "MONITOR COMMANDS", "MONITOR IMAGES"
SYS, DM, CM = "SYSTEM COMMANDS", "DATA MANAGEMENT PARAMETERS", "COMMAND MANAGEMENT"
PX, COL, SRV = "PIXELMASK HANDLING", "COLLECTION HANDLING", "SERVER"


def _det(name: str, access: str, versions: str, doc: str, **kw) -> Param:
    """A detector configuration value that maps straight onto SIMPLON."""
    return _p(name, DC, access, versions, doc, subsystem="detector", task="config", **kw)


_COLLECTION = ("collection mode is not supported by this server; acquire point by "
               "point with the standard acquisition macros instead")

TABLE: List[Param] = [
    _p("server_version", SRV, "R", "ALL", "server version and the Python running it",
       local=Local(read=ServerInfo.get_version)),
    _p("kill", SRV, "--", "ALL", "shut the server down (spec restarts it at reconfig)",
       local=Local(run=ServerInfo.do_kill)),

    # DETECTOR CONFIGURATION
    _det("beam_center_x", "RW", "ALL", "beam center, x (pixels)"),
    _det("beam_center_y", "RW", "ALL", "beam center, y (pixels)"),
    _det("bit_depth_image", "R", "ALL", "bits per pixel of the images"),
    _det("bit_depth_readout", "R", "ALL", "bits per pixel read from the chips"),
    _det("chi_increment", "RW", "ALL", "chi increment per image (deg)"),
    _det("chi_start", "RW", "ALL", "chi at the first image (deg)"),
    _det("compression", "RW", "ALL", "compression of images: lz4 or bslz4"),
    _det("count_time", "RW", "ALL", "exposure time per image (s); the DCU may adjust frame_time"),
    _det("counting_mode", "RW", ">1.7", "counting mode: normal or retrigger"),
    _det("countrate_correction_applied", "RW", "ALL", "count-rate correction on (1) or off (0)",
         conv="bool"),
    _det("countrate_correction_count_cutoff", "RW", "ALL", "counts above which pixels are flagged"),
    _det("data_collection_date", "R", "ALL", "date and time of the last arm"),
    _det("desc", "R", "ALL", "detector description", key="description", conv="str"),
    _det("detector_distance", "RW", "ALL", "sample to detector distance (m)"),
    _det("detector_number", "RW", "ALL", "detector serial number"),
    _det("detector_readout_time", "R", "ALL", "dead time between images (s)"),
    _det("element", "RW", "ALL", "element whose edge sets the photon energy"),
    _det("frame_time", "RW", "ALL", "time between image starts (s)"),
    _det("kappa_increment", "RW", "ALL", "kappa increment per image (deg)"),
    _det("kappa_start", "RW", "ALL", "kappa at the first image (deg)"),
    _det("nimages", "RW", "ALL", "images per trigger"),
    _p("preset", DC, "RW", "ALL", "program count_time/frame_time (ACCUM: nimages) for counts "
       "of this many seconds, without counting",
       local=Local(read=Acquisition.get_preset, write=Acquisition.set_preset)),
    _det("ntrigger", "RW", "ALL", "triggers per arm"),
    _p("max_trigger", DC, "R", "ALL", "largest ntrigger the detector accepts",
       local=Local(read=Acquisition.get_max_trigger)),
    _det("number_of_excluded_pixels", "RW", "ALL", "number of masked pixels"),
    _det("omega_increment", "RW", "ALL", "omega increment per image (deg)"),
    _det("omega_start", "RW", "ALL", "omega at the first image (deg)"),
    _det("phi_increment", "RW", "ALL", "phi increment per image (deg)"),
    _det("phi_start", "RW", "ALL", "phi at the first image (deg)"),
    _det("photon_energy", "RW", "ALL", "photon energy (eV); sets the thresholds to half"),
    _det("roi_mode", "RW", "ALL", "detector ROI mode (disabled or 4M on a 9M/16M)"),
    _det("sensor_material", "R", "ALL", "sensor material"),
    _det("sensor_thickness", "R", "ALL", "sensor thickness (m)"),
    _det("software_version", "R", "ALL", "DCU software version"),
    _det("threshold_energy", "RW", "ALL", "threshold energy (eV) of threshold 1"),
    _det("threshold_energy1", "RW", ">1.6", "energy of threshold 1 (eV)", key="threshold/1/energy"),
    _det("threshold_energy2", "RW", ">1.6", "energy of threshold 2 (eV)", key="threshold/2/energy"),
    _det("threshold/1/mode", "RW", ">1.6", "threshold 1 enabled (1) or disabled (0)", conv="enabled"),
    _det("threshold/2/mode", "RW", ">1.6", "threshold 2 enabled (1) or disabled (0)", conv="enabled"),
    _det("threshold/difference/mode", "RW", ">1.6",
         "difference image (threshold 1 - threshold 2) on (1) or off (0)", conv="enabled"),
    _det("threshold_difference", "RW", ">1.6", "threshold difference mode on (1) or off (0)",
         key="threshold/difference/mode", conv="enabled"),
    _det("threshold_diff_lower", "RW", ">1.6", "lower threshold of the difference mode",
         key="threshold/difference/lower_threshold"),
    _det("threshold_diff_upper", "RW", ">1.6", "upper threshold of the difference mode",
         key="threshold/difference/upper_threshold"),
    _det("trigger_mode", "RW", "ALL", "trigger mode: ints, inte, exts or exte"),
    _det("trigger_start_delay", "RW", ">1.6", "delay from trigger to exposure (s)"),
    _det("two_theta_increment", "RW", "ALL", "two-theta increment per image (deg)"),
    _det("two_theta_start", "RW", "ALL", "two-theta at the first image (deg)"),
    _det("wavelength", "RW", "ALL", "X-ray wavelength (Angstrom); sets photon_energy"),
    _det("x_pixel_size", "R", "ALL", "pixel width (m)"),
    _det("x_pixels_in_detector", "R", "ALL", "image width (pixels)"),
    _det("y_pixel_size", "R", "ALL", "pixel height (m)"),
    _det("y_pixels_in_detector", "R", "ALL", "image height (pixels)"),

    # DETECTOR STATUS
    _p("state", DS, "R", "ALL", "detector state: na, idle, ready, acquire, configure, initialize, error",
       subsystem="detector", task="status", key="state", conv="str"),
    _p("status", DS, "R", "ALL", "same as state", subsystem="detector", task="status",
       key="state", conv="str"),
    _p("detector_status", DS, "R", "ALL", "same as state", subsystem="detector",
       task="status", key="state", conv="str"),
    _p("simplon_version", DS, "R", "ALL", "SIMPLON API version of the DCU",
       local=Local(read=ServerInfo.get_simplon_version)),
    _p("seqid", DS, "R", "ALL", "sequence id returned by the last arm",
       local=Local(read=Acquisition.get_seqid)),
    _p("error", DS, "R", "ALL", "detector error list", subsystem="detector", task="status"),
    _p("time", DS, "R", "ALL", "detector clock", subsystem="detector", task="status"),
    _p("humidity", DS, "R", "ALL", "humidity (%)", subsystem="detector", task="status",
       key={"1.6": "board_000/th0_humidity", "default": "humidity"}),
    _p("temperature", DS, "R", "ALL", "temperature (C)", subsystem="detector", task="status",
       key={"1.6": "board_000/th0_temp", "default": "temperature"}),
    _p("buffer_free", DS, "R", "<1.7", "free DCU buffer (a percentage)", subsystem="detector",
       task="status", key="builder/dcu_buffer_free"),
    # a real 1.6.6 DCU serves link_0 too: the DCU decides, not the version
    _p("link/n", DS, "R", "ALL", "state of data link n (up/down)",
       subsystem="detector", task="status", key="link_{n}",
       pattern=r"link/(\d+)", conv="str"),

    # DETECTOR COMMANDS
    _p("initialize", DCMD, "--", "ALL", "initialize the detector (background command)",
       subsystem="detector", task="command", background=True),
    _p("arm", DCMD, "--", "ALL", "arm the detector for a series",
       local=Local(run=Acquisition.do_arm)),
    _p("disarm", DCMD, "--", "ALL", "end the series (closes the files)",
       local=Local(run=Acquisition.do_disarm)),
    _p("trigger", DCMD, "--", "ALL", "software trigger (arms first if needed)",
       local=Local(run=Acquisition.do_trigger)),
    _p("cancel", DCMD, "--", "ALL", "stop after the current image",
       local=Local(run=Acquisition.do_cancel)),
    _p("abort", DCMD, "--", "ALL", "stop at once", local=Local(run=Acquisition.do_abort)),
    _p("check_connections", DCMD, "--", ">1.7", "check the detector's data links",
       subsystem="detector", task="command"),

    # FILEWRITER
    _p("writer_mode", FC, "RW", "ALL", "filewriter enabled (1) or disabled (0)",
       subsystem="filewriter", task="config", key="mode", conv="enabled"),
    _p("nimages_per_file", FC, "RW", "ALL", "images per HDF5 data file (0: all in the master)",
       subsystem="filewriter", task="config"),
    _p("image_nr_start", FC, "RW", "ALL", "number of the first image in the files",
       subsystem="filewriter", task="config"),
    _p("name_pattern", FC, "RW", "ALL", "file name pattern ($id = series id); same as prefix",
       local=Local(read=Settings.get_prefix, write=Settings.set_prefix)),
    _p("compression_enabled", FC, "RW", "ALL", "HDF5 compression on (1) or off (0)",
       subsystem="filewriter", task="config", conv="bool"),
    _p("files", FC, "R", "ALL", "the files on the DCU", local=Local(read=FileTransfers.get_files)),
    _p("filelist", FC, "R", "ALL", "the files on the DCU matching a pattern",
       local=Local(read=FileTransfers.get_filelist), set_reads=True),
    _p("transfer", FC, "--", "ALL", "copy files (name or pattern) to data_directory",
       local=Local(run=FileTransfers.do_transfer), background=True),
    _p("delete", FC, "--", "ALL", "delete files (name or pattern) from the DCU",
       local=Local(run=FileTransfers.do_delete), background=True),
    _p("auto_delete", FC, "RW", "ALL", "delete files from the DCU after a verified transfer",
       local=Local(read=FileTransfers.get_auto_delete, write=FileTransfers.set_auto_delete)),
    _p("transfer_wait", FC, "RW", "ALL", "seconds a transfer waits for the filewriter to finish",
       local=Local(read=FileTransfers.get_transfer_wait, write=FileTransfers.set_transfer_wait)),
    _p("writer_error", FS, "R", "ALL", "filewriter errors", subsystem="filewriter",
       task="status", key="error"),
    _p("writer_state", FS, "R", "ALL", "filewriter state", subsystem="filewriter",
       task="status", key="state", conv="str"),
    _p("writer_time", FS, "R", "1.6", "filewriter clock", subsystem="filewriter",
       task="status", key="time"),
    _p("writer_buffer_free", FS, "R", "ALL", "free filewriter buffer (bytes)",
       subsystem="filewriter", task="status", key="buffer_free"),
    _p("writer_files", FS, "R", ">1.7", "files listed by the filewriter status",
       subsystem="filewriter", task="status", key="files"),
    _p("writer_clear", FCMD, "--", "ALL", "delete every file on the DCU",
       subsystem="filewriter", task="command", key="clear"),
    _p("writer_initialize", FCMD, "--", "ALL", "initialize the filewriter",
       subsystem="filewriter", task="command", key="initialize"),

    # STREAM
    _p("stream_mode", SC, "RW", "ALL", "stream enabled (1) or disabled (0)",
       local=Local(read=StreamHandler.get_mode, write=StreamHandler.set_mode)),
    _p("stream_version", SC, "RW", ">1.8", "stream format: V1 (legacy JSON) or V2 (CBOR)",
       local=Local(read=StreamHandler.get_version, write=StreamHandler.set_version)),
    _p("stream_autosave", SC, "RW", "ALL", "save every streamed image as TIFF (1/0)",
       local=Local(read=StreamHandler.get_autosave, write=StreamHandler.set_autosave)),
    _p("stream_save_mode", SC, "RW", "ALL",
       "what autosave writes: TIFF (decoded images) or HDF5RAW (compressed frames as "
       "HDF5 chunks, no decoding)",
       local=Local(read=StreamHandler.get_save_mode, write=StreamHandler.set_save_mode)),
    _p("stream_latest_file", SC, "R", "ALL", "last TIFF file written",
       local=Local(read=StreamHandler.get_latest_file)),
    _p("header_detail", SC, "RW", "ALL", "stream header detail: all, basic or none",
       subsystem="stream", task="config", conv="str"),
    _p("header_appendix", SC, "RW", "ALL", "text the stream adds to the series header",
       subsystem="stream", task="config", conv="str"),
    _p("image_appendix", SC, "RW", "ALL", "text the stream adds to every image",
       subsystem="stream", task="config", conv="str"),
    _p("save", SC, "--", "ALL", "save the latest image as TIFF to the given file",
       local=Local(run=StreamHandler.do_save)),
    _p("overwrite_images", SC, "RW", "ALL", "overwrite existing TIFF files (1) or add -img### (0)",

       local=Local(read=StreamHandler.get_overwrite_images,
                   write=StreamHandler.set_overwrite_images)),
    _p("stream_state", SS, "R", "ALL", "stream state", subsystem="stream", task="status",
       key="state", conv="str"),
    _p("stream_error", SS, "R", "ALL", "stream errors (DCU and receiver)",
       local=Local(read=StreamHandler.get_error)),
    _p("is_waiting_data", SS, "R", "ALL", "1 while images of the count are still expected",
       local=Local(read=StreamHandler.get_is_waiting_data)),
    _p("images_collected", SS, "R", "ALL", "images received in the current acquisition",
       local=Local(read=StreamHandler.get_images_collected)),
    _p("dropped", SS, "R", "ALL", "images lost (DCU count plus frames the receiver missed)",
       local=Local(read=StreamHandler.get_dropped)),
    _p("stream_initialize", SCMD, "--", "ALL", "initialize the stream subsystem",
       subsystem="stream", task="command", key="initialize"),

    # MONITOR
    # The requirements say >1.7, but SIMPLON 1.6 has the monitor too
    # (SIMPLON.md): the DCU decides, as for link/n.
    _p("monitor_state", MS, "R", "ALL", "monitor state", subsystem="monitor",
       task="status", key="state", conv="str"),
    _p("monitor_error", MS, "R", "ALL", "monitor errors", subsystem="monitor",
       task="status", key="error"),
    _p("monitor_dropped", MS, "R", "ALL", "images the monitor dropped", subsystem="monitor",
       task="status", key="dropped"),
    _p("buffer_fill_level", MS, "R", "ALL", "monitor buffer fill level", subsystem="monitor",
       task="status"),
    _p("monitor_mode", MC, "RW", "ALL", "monitor enabled (1) or disabled (0)",
       subsystem="monitor", task="config", key="mode", conv="enabled"),
    _p("discard_new", MC, "RW", "ALL", "when full, drop new images (1) or old ones (0)",
       subsystem="monitor", task="config", conv="bool"),
    _p("buffer_size", MC, "RW", "ALL", "images the monitor keeps", subsystem="monitor",
       task="config"),
    _p("monitor_clear", MCMD, "--", "ALL", "empty the monitor buffer", subsystem="monitor",
       task="command", key="clear"),
    _p("monitor_initialize", MCMD, "--", "ALL", "initialize the monitor",
       subsystem="monitor", task="command", key="initialize"),
    _p("monitor_images", MI, "--", "ALL", "images in the monitor: [[series, [ids]], ...]",
       local=Local(run=MonitorImages.do_images)),
    _p("monitor_save", MI, "--", "ALL", "save a monitor image: [series id [threshold]]",
       local=Local(run=MonitorImages.do_save)),
    _p("monitor_save_threshold", MI, "--", "ALL", "save the latest image of threshold N",
       local=Local(run=MonitorImages.do_save_threshold)),
    _p("monitor_pop", MI, "--", "ALL", "save and remove the oldest monitor image",
       local=Local(run=MonitorImages.do_pop)),

    # SYSTEM
    _p("restart", SYS, "--", "ALL", "restart the SIMPLON API service (background command)",
       subsystem="system", task="command", background=True),
    _p("reboot", SYS, "--", ">1.7", "reboot the DCU (background command)",
       subsystem="system", task="command", background=True),
    _p("shutdown", SYS, "--", ">1.7", "shut the DCU down", subsystem="system", task="command"),
    _p("delete_logs", SYS, "--", ">1.7", "delete the DCU's logs", subsystem="system",
       task="command"),

    # DATA MANAGEMENT
    _p("prefix", DM, "RW", "ALL", "file name prefix, shared with the filewriter name_pattern",
       local=Local(read=Settings.get_prefix, write=Settings.set_prefix)),
    _p("stream_prefix", DM, "RW", "ALL", "file name (prefix) of TIFF files from the stream",
       local=Local(read=StreamHandler.get_prefix, write=StreamHandler.set_prefix)),
    _p("stream_autoindex", DM, "RW", "ALL", "add an index to TIFF names (1/0)",
       local=Local(read=StreamHandler.get_autoindex, write=StreamHandler.set_autoindex)),
    _p("data_directory", DM, "RW", "ALL", "local directory for TIFF and HDF5 files",
       local=Local(read=Settings.get_data_directory, write=Settings.set_data_directory)),
    _p("low_filter", DM, "RW", "ALL", "pixels below this read as 0 (stream images)",
       local=Local(read=StreamHandler.get_low_filter, write=StreamHandler.set_low_filter)),
    _p("high_filter", DM, "RW", "ALL", "pixels above this read as 0 (stream images)",
       local=Local(read=StreamHandler.get_high_filter, write=StreamHandler.set_high_filter)),
    _p("roival", DM, "R", "ALL", "sums of the ROIs set with set_roi, on the latest image",
       local=Local(read=StreamHandler.get_roival)),
    _p("roisum", DM, "R", "ALL", "sum over row_beg col_beg row_end col_end of the latest image",
       local=Local(read=StreamHandler.get_roisum)),
    _p("sum", DM, "R", "ALL", "sum of the latest image (masked pixels excluded)",
       local=Local(read=StreamHandler.get_sum)),
    _p("maxval", DM, "R", "ALL", "largest pixel of the latest image (masked pixels excluded)",
       local=Local(read=StreamHandler.get_maxval)),
    _p("acq_mode", DM, "RW", "ALL", "SINGLE or ACCUM (sum several images per count)",
       local=Local(read=Acquisition.get_acq_mode, write=Acquisition.set_acq_mode)),
    _p("acc_maxtime", DM, "RW", "ALL", "longest exposure per image in ACCUM mode (s)",
       local=Local(read=Acquisition.get_acc_maxtime, write=Acquisition.set_acc_maxtime)),
    _p("acc_nimages", DM, "RW", "ALL", "images summed per count in ACCUM mode",
       local=Local(read=Acquisition.get_acc_nimages, write=Acquisition.set_acc_nimages)),

    # COMMAND MANAGEMENT
    _p("get_command", CM, "R", "ALL", "the latest background command",
       local=Local(read=JobRunner.get_command)),
    _p("cmd_executing", CM, "R", "ALL", "1 while a background command runs",
       local=Local(read=JobRunner.get_executing)),
    _p("get_answer", CM, "R", "ALL", "what the latest background command returned",
       local=Local(read=JobRunner.get_answer)),

    # PIXEL MASK
    _p("pixel_mask_applied", PX, "RW", "ALL", "apply the pixel mask on the DCU (1/0)",
       subsystem="detector", task="config", conv="bool"),
    _p("pixelmask_save", PX, "--", "ALL", "save the pixel mask to a .npy file",
       local=Local(run=PixelMasks.do_pixelmask_save)),
    _p("pixelmask_load", PX, "--", "ALL", "load a pixel mask from a .npy file",
       local=Local(run=PixelMasks.do_pixelmask_load)),
    _p("pixelmask_calibrate", PX, "--", "ALL", "mask the non-zero pixels of the latest dark image",
       local=Local(run=PixelMasks.do_pixelmask_calibrate), background=True),
    _p("flatfield_correction_applied", PX, "RW", "ALL", "apply the flatfield on the DCU (1/0)",
       subsystem="detector", task="config", conv="bool"),
    _p("flatfield_save", PX, "--", "ALL", "save the flatfield to a .npy file",
       local=Local(run=PixelMasks.do_flatfield_save)),

    # COLLECTION (deliberately unsupported, as the requirements allow)
    _p("collection_start", COL, "--", "ALL", "collection mode (not supported)", unsupported=_COLLECTION),
    _p("collection_end", COL, "--", "ALL", "collection mode (not supported)", unsupported=_COLLECTION),
    _p("collection_add_roi", COL, "W", "ALL", "collection mode (not supported)", unsupported=_COLLECTION),
    _p("collection_roi", COL, "R", "ALL", "collection mode (not supported)", unsupported=_COLLECTION),
    _p("collection_roi_list", COL, "R", "ALL", "collection mode (not supported)", unsupported=_COLLECTION),
    _p("collection_reset", COL, "--", "ALL", "collection mode (not supported)", unsupported=_COLLECTION),
    _p("collection_get", COL, "--", "ALL", "collection mode (not supported)", unsupported=_COLLECTION),
    _p("collection_npoints", COL, "R", "ALL", "collection mode (not supported)", unsupported=_COLLECTION),
    _p("is_collecting", COL, "R", "ALL", "collection mode (not supported)", unsupported=_COLLECTION),
]

BY_NAME: Dict[str, Param] = {row.name: row for row in TABLE}
_PATTERNS: List[Tuple[re.Pattern, Param]] = [
    (re.compile(row.pattern + r"\Z"), row) for row in TABLE if row.pattern]

# Names the requirements give a second spelling for.
ALIASES: Dict[str, str] = {}

# A name from the wire must look like a SIMPLON name: nothing that could walk
# out of the API's URL space.
VALID_NAME = re.compile(r"[A-Za-z][A-Za-z0-9_]*(/[A-Za-z0-9_]+)*\Z")


def lookup(name: str) -> Optional[Param]:
    """The row for ``name``, resolving aliases and numbered names (link/0)."""
    name = ALIASES.get(name, name)
    row = BY_NAME.get(name)
    if row is not None:
        return row
    for regex, row in _PATTERNS:
        if regex.match(name):
            return row
    return None


def pattern_number(row: Param, name: str) -> Optional[str]:
    """The number in a numbered name (``link/2`` -> ``"2"``)."""
    if not row.pattern:
        return None
    match = re.match(row.pattern + r"\Z", name)
    return match.group(1) if match else None


def closest(name: str) -> Optional[str]:
    """The known name most like ``name`` (for 'did you mean')."""
    matches = difflib.get_close_matches(name, list(BY_NAME), n=1, cutoff=0.5)
    return matches[0] if matches else None


def names() -> List[str]:
    return [row.name for row in TABLE]
