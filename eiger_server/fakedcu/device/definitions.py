"""SIMPLON parameter definitions of the fake DCU, as data.

One :class:`ParamDef` per name, grouped by subsystem and task, for API
versions "1.6.0" and "1.8.0". Limits that depend on the detector model
(frame rate, image size) are filled in by :func:`parameter_table`.
"""
from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any, Dict, List, Optional, Tuple

from eiger_server.fakedcu.device.states import State

API_VERSIONS = ("1.6.0", "1.8.0")
SUBSYSTEMS = ("detector", "filewriter", "stream", "monitor", "system")
TASKS = ("config", "status", "command")

# model -> (width, height, maximum frame rate in Hz), EIGER2 X geometry
MODELS: Dict[str, Tuple[int, int, float]] = {
    "500K": (1030, 514, 2000.0),
    "1M": (1028, 1062, 2200.0),
    "4M": (2068, 2162, 560.0),
    "9M": (3108, 3262, 240.0),
    "16M": (4148, 4362, 133.0),
}

# module grid of each model: (columns, rows); modules are 1028 x 512 pixels
# separated by 12 (x) and 38 (y) gap pixels. The 500K is one 1030 x 514 module.
MODULE_GRID: Dict[str, Tuple[int, int]] = {
    "500K": (1, 1), "1M": (1, 2), "4M": (2, 4), "9M": (3, 6), "16M": (4, 8),
}
MODULE_SIZE = (1028, 512)
MODULE_GAP = (12, 38)

HC_KEV_ANGSTROM = 12.3984198   # E[keV] * lambda[A]
HC_EV_ANGSTROM = 12398.4198    # E[eV] * lambda[A]
READOUT_TIME = 1e-7            # s, EIGER2 dead time between frames
# EIGER2 (SIMPLON 1.8) picks bit_depth_image from the count time: one
# detector gives 8 bits at 10 ms, 16 at 20 ms, 32 at 100 ms. (count time
# below which, bits)
BIT_DEPTH_BY_COUNT_TIME: Tuple[Tuple[float, int], ...] = ((0.015, 8), (0.06, 16))
PIXEL_SIZE = 75e-6             # m
PHOTON_ENERGY_RANGE = (2000.0, 100000.0)   # eV
THRESHOLD_RANGE = (1000.0, 100000.0)       # eV

# characteristic K-alpha lines a user may select with "element"
ELEMENT_ENERGY: Dict[str, float] = {
    "Cr": 5414.8, "Fe": 6403.8, "Co": 6930.3, "Cu": 8047.8, "Ga": 9251.7,
    "Mo": 17479.3, "Ag": 22162.9, "In": 24209.7,
}

DEFAULT_PHOTON_ENERGY = 8047.8

STATES = [s.value for s in State]


@dataclass(frozen=True)
class ParamDef:
    """One SIMPLON value: its type, access and limits."""

    name: str
    value_type: str                 # float int uint bool string date string[] ...
    access_mode: str = "rw"         # r, w, rw
    default: Any = None
    min: Any = None
    max: Any = None
    unit: Optional[str] = None
    allowed_values: Optional[Tuple[Any, ...]] = None
    versions: Tuple[str, ...] = API_VERSIONS
    darray: Optional[str] = None    # numpy type string of an array value ("<u4", "<f4")


def _p(name: str, value_type: str, access: str = "rw", default: Any = None, *,
       min: Any = None, max: Any = None, unit: Optional[str] = None,
       allowed: Optional[List[Any]] = None, versions: Tuple[str, ...] = API_VERSIONS,
       darray: Optional[str] = None) -> ParamDef:
    return ParamDef(name, value_type, access, default, min, max, unit,
                    tuple(allowed) if allowed is not None else None, versions, darray)


V16 = ("1.6.0",)
V18 = ("1.8.0",)
ENABLED = ["enabled", "disabled"]


def _angles() -> List[ParamDef]:
    out = []
    for axis in ("chi", "kappa", "omega", "phi", "two_theta"):
        out.append(_p(f"{axis}_increment", "float", "rw", 0.0, unit="degree"))
        out.append(_p(f"{axis}_start", "float", "rw", 0.0, unit="degree"))
    return out


# name lists per (subsystem, task); the detector-model dependent values are
# placeholders replaced in parameter_table()
_DEFINITIONS: Dict[Tuple[str, str], List[ParamDef]] = {
    ("detector", "config"): [
        _p("beam_center_x", "float", "rw", 0.0, unit="pixel"),
        _p("beam_center_y", "float", "rw", 0.0, unit="pixel"),
        _p("bit_depth_image", "uint", "r", 16, unit="bit", allowed=[8, 16, 32]),
        _p("bit_depth_readout", "uint", "r", 16, unit="bit", allowed=[8, 16, 32]),
        _p("compression", "string", "rw", "bslz4", allowed=["lz4", "bslz4"]),
        _p("count_time", "float", "rw", 0.5, min=0.0, max=3600.0, unit="s"),
        _p("counting_mode", "string", "rw", "normal", allowed=["normal", "retrigger"],
           versions=V18),
        _p("countrate_correction_applied", "bool", "rw", True),
        _p("countrate_correction_count_cutoff", "uint", "r", 65000, min=0,
           max=4294967294, unit="counts"),
        _p("countrate_correction_table", "float", "r", None, darray="<f4"),
        _p("data_collection_date", "date", "r", ""),
        _p("description", "string", "r", ""),
        _p("detector_distance", "float", "rw", 0.1, min=0.0, max=100.0, unit="m"),
        _p("detector_number", "string", "r", "E-32-0000"),
        _p("detector_readout_time", "float", "r", READOUT_TIME, unit="s"),
        _p("element", "string", "rw", "", allowed=[""] + sorted(ELEMENT_ENERGY)),
        _p("flatfield", "float", "rw", None, darray="<f4"),
        _p("flatfield_correction_applied", "bool", "rw", True),
        _p("frame_time", "float", "rw", 0.5 + READOUT_TIME, min=0.0, max=3600.0, unit="s"),
        _p("nframes_sum", "uint", "r", 1),
        _p("nimages", "uint", "rw", 1, min=1, max=2000000000),
        _p("ntrigger", "uint", "rw", 1, min=1, max=1000000),
        _p("number_of_excluded_pixels", "uint", "r", 0, min=0),
        _p("photon_energy", "float", "rw", DEFAULT_PHOTON_ENERGY,
           min=PHOTON_ENERGY_RANGE[0], max=PHOTON_ENERGY_RANGE[1], unit="eV"),
        _p("pixel_mask", "uint", "rw", None, darray="<u4"),
        _p("pixel_mask_applied", "bool", "rw", True),
        _p("roi_mode", "string", "rw", "disabled", allowed=["disabled"]),
        _p("sensor_material", "string", "r", "Si"),
        _p("sensor_thickness", "float", "r", 0.00045, unit="m"),
        _p("software_version", "string", "r", ""),
        _p("threshold_energy", "float", "rw", DEFAULT_PHOTON_ENERGY / 2,
           min=THRESHOLD_RANGE[0], max=THRESHOLD_RANGE[1], unit="eV"),
        _p("threshold/1/energy", "float", "rw", DEFAULT_PHOTON_ENERGY / 2,
           min=THRESHOLD_RANGE[0], max=THRESHOLD_RANGE[1], unit="eV", versions=V18),
        _p("threshold/1/mode", "string", "rw", "enabled", allowed=ENABLED, versions=V18),
        _p("threshold/1/pixel_mask", "uint", "rw", None, darray="<u4", versions=V18),
        _p("threshold/2/energy", "float", "rw", DEFAULT_PHOTON_ENERGY * 0.75,
           min=THRESHOLD_RANGE[0], max=THRESHOLD_RANGE[1], unit="eV", versions=V18),
        _p("threshold/2/mode", "string", "rw", "disabled", allowed=ENABLED, versions=V18),
        _p("threshold/2/pixel_mask", "uint", "rw", None, darray="<u4", versions=V18),
        _p("threshold/difference/mode", "string", "rw", "disabled", allowed=ENABLED,
           versions=V18),
        _p("threshold/difference/lower_threshold", "uint", "r", 1, min=1, max=2,
           versions=V18),
        _p("threshold/difference/upper_threshold", "uint", "r", 2, min=1, max=2,
           versions=V18),
        _p("trigger_mode", "string", "rw", "ints", allowed=["ints", "inte", "exts", "exte"]),
        _p("trigger_start_delay", "float", "rw", 0.0, min=0.0, max=100.0, unit="s",
           versions=V18),
        _p("wavelength", "float", "rw", HC_EV_ANGSTROM / DEFAULT_PHOTON_ENERGY,
           min=HC_EV_ANGSTROM / PHOTON_ENERGY_RANGE[1],
           max=HC_EV_ANGSTROM / PHOTON_ENERGY_RANGE[0], unit="A"),
        _p("x_pixel_size", "float", "r", PIXEL_SIZE, unit="m"),
        _p("x_pixels_in_detector", "uint", "r", 0),
        _p("y_pixel_size", "float", "r", PIXEL_SIZE, unit="m"),
        _p("y_pixels_in_detector", "uint", "r", 0),
    ] + _angles(),
    ("detector", "status"): [
        _p("state", "string", "r", "na", allowed=STATES),
        _p("error", "string[]", "r", []),
        _p("time", "date", "r", ""),
        _p("board_000/th0_temp", "float", "r", 34.5, unit="degC", versions=V16),
        _p("board_000/th0_humidity", "float", "r", 8.2, unit="%", versions=V16),
        _p("builder/dcu_buffer_free", "float", "r", 100.0, unit="%", versions=V16),
        _p("temperature", "float", "r", 31.5, unit="degC", versions=V18),
        _p("humidity", "float", "r", 7.5, unit="%", versions=V18),
        _p("link_0", "string", "r", "up", allowed=["up", "down"]),
        _p("link_1", "string", "r", "up", allowed=["up", "down"]),
        _p("link_2", "string", "r", "up", allowed=["up", "down"]),
        _p("link_3", "string", "r", "up", allowed=["up", "down"]),
        _p("series_unique_id", "string", "r", "", versions=V18),
    ],
    ("detector", "command"): [
        _p(n, "command", "w") for n in
        ("initialize", "arm", "trigger", "disarm", "cancel", "abort", "status_update")
    ] + [_p("check_connections", "command", "w", versions=V18)],
    ("filewriter", "config"): [
        _p("mode", "string", "rw", "disabled", allowed=ENABLED),
        _p("nimages_per_file", "uint", "rw", 1000, min=0, max=1000000),
        _p("image_nr_start", "uint", "rw", 1, min=0, max=2000000000),
        _p("name_pattern", "string", "rw", "series_$id"),
        _p("compression_enabled", "bool", "rw", True),
    ],
    ("filewriter", "status"): [
        _p("state", "string", "r", "ready"),
        _p("error", "string[]", "r", []),
        _p("time", "date", "r", ""),
        _p("buffer_free", "uint", "r", 0, unit="bytes"),
        _p("files", "string[]", "r", [], versions=V18),
    ],
    ("filewriter", "command"): [_p("clear", "command", "w"), _p("initialize", "command", "w")],
    ("stream", "config"): [
        _p("mode", "string", "rw", "enabled", allowed=ENABLED),
        _p("header_detail", "string", "rw", "basic", allowed=["all", "basic", "none"]),
        _p("header_appendix", "string", "rw", ""),
        _p("image_appendix", "string", "rw", ""),
        _p("format", "string", "rw", "legacy", allowed=["legacy", "cbor"], versions=V18),
    ],
    ("stream", "status"): [
        _p("state", "string", "r", "ready"),
        _p("error", "string[]", "r", []),
        _p("dropped", "uint", "r", 0),
    ],
    ("stream", "command"): [_p("initialize", "command", "w")],
    ("monitor", "config"): [
        # the monitor exists on 1.6 and 1.8 (SIMPLON.md); the real 1.8
        # defaults: a full buffer keeps its first images
        _p("mode", "string", "rw", "disabled", allowed=ENABLED),
        _p("buffer_size", "uint", "rw", 100, min=1, max=1000),
        _p("discard_new", "bool", "rw", True),
    ],
    ("monitor", "status"): [
        _p("state", "string", "r", "ready"),
        _p("error", "string[]", "r", []),
        _p("buffer_fill_level", "int[]", "r", [0, 10]),
        _p("dropped", "uint", "r", 0),
        _p("buffer_free", "uint", "r", 100, versions=V18),
        _p("next_image_number", "int", "r", -1, versions=V16),
        _p("monitor_image_number", "int", "r", -1, versions=V16),
    ],
    ("monitor", "command"): [_p("clear", "command", "w"),
                             _p("initialize", "command", "w")],
    ("system", "command"): [_p(n, "command", "w") for n in
                            ("restart", "reboot", "shutdown", "delete_logs")],
}

# subsystems that only exist in some API versions (none: the monitor is on 1.6 too)
SUBSYSTEM_VERSIONS: Dict[str, Tuple[str, ...]] = {}

Table = Dict[Tuple[str, str], Dict[str, ParamDef]]


def module_rects(model: str) -> List[Tuple[int, int, int, int]]:
    """(x0, y0, width, height) of each module of ``model`` in the image."""
    if model == "500K":
        w, h, _ = MODELS[model]
        return [(0, 0, w, h)]
    ncol, nrow = MODULE_GRID[model]
    mw, mh = MODULE_SIZE
    gx, gy = MODULE_GAP
    return [(c * (mw + gx), r * (mh + gy), mw, mh) for r in range(nrow) for c in range(ncol)]


def model_for_size(width: int, height: int) -> Optional[str]:
    """The model whose image is ``width`` x ``height``, or None."""
    for name, (w, h, _) in MODELS.items():
        if (w, h) == (width, height):
            return name
    return None


def parameter_table(api: str, model: str) -> Table:
    """All definitions that ``api`` has, with the limits of detector ``model``."""
    if api not in API_VERSIONS:
        raise ValueError(f"unknown SIMPLON API version {api!r}; use one of {API_VERSIONS}")
    if model not in MODELS:
        raise ValueError(f"unknown detector model {model!r}; use one of {sorted(MODELS)}")
    width, height, rate = MODELS[model]
    ft_min = 1.0 / rate
    overrides: Dict[str, Dict[str, Any]] = {
        "frame_time": {"min": ft_min},
        "count_time": {"min": ft_min - READOUT_TIME},
        "beam_center_x": {"default": width / 2.0},
        "beam_center_y": {"default": height / 2.0},
        "x_pixels_in_detector": {"default": width},
        "y_pixels_in_detector": {"default": height},
        "description": {"default": f"Dectris EIGER2 Si {model}"},
        "software_version": {"default": api},
        "detector_number": {"default": f"E-FAKE-{model}"},
        "roi_mode": {"allowed_values": ("disabled", "4M") if model in ("9M", "16M")
                     else ("disabled",)},
    }
    table: Table = {}
    for (subsystem, task), defs in _DEFINITIONS.items():
        if api not in SUBSYSTEM_VERSIONS.get(subsystem, API_VERSIONS):
            continue
        group: Dict[str, ParamDef] = {}
        for d in defs:
            if api not in d.versions:
                continue
            if subsystem == "detector" and task == "config" and d.name in overrides:
                d = replace(d, **overrides[d.name])
            group[d.name] = d
        table[(subsystem, task)] = group
    return table


def all_definitions() -> Dict[Tuple[str, str], Dict[str, ParamDef]]:
    """Every definition of every version (for defaults of names an API lacks)."""
    return {key: {d.name: d for d in defs} for key, defs in _DEFINITIONS.items()}
