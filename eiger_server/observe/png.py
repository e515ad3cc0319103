"""The live view's picture: log or linear scale, a colour map, downscaled, as PNG.

Written with numpy and zlib alone (palette PNG, colour type 3). Pixels at the
type's maximum (gaps, dead pixels: the detector's mask) get their own colour.
"""
from __future__ import annotations

import struct
import zlib
from typing import Optional, Sequence, Tuple

import numpy as np

# anchor colours (r, g, b) of each map; 255 entries are interpolated between them
_MAPS = {
    "viridis": [(68, 1, 84), (59, 82, 139), (33, 145, 140), (94, 201, 98), (253, 231, 37)],
    "inferno": [(0, 0, 4), (87, 16, 110), (188, 55, 84), (249, 142, 9), (252, 255, 164)],
    "gray": [(0, 0, 0), (255, 255, 255)],
}
COLORMAPS = tuple(_MAPS)
SCALES = ("log", "linear")
MASKED = (255, 0, 255)                   # masked pixels: magenta
MAX_SIZE = 1024                          # longest side of the PNG


def _block_max(values: np.ndarray, mask: np.ndarray, f: int) -> Tuple[np.ndarray, np.ndarray]:
    """Each f x f block's maximum (and whether all of it is masked); strided
    slices, as reshaping to 4-D and reducing is many times slower."""
    rows, cols = max(1, values.shape[0] // f), max(1, values.shape[1] // f)
    out = values[0::f, 0::f][:rows, :cols].copy()
    all_masked = mask[0::f, 0::f][:rows, :cols].copy()
    for i in range(f):
        for j in range(f):
            if i or j:
                part = values[i::f, j::f][:rows, :cols]
                if part.shape == out.shape:
                    np.maximum(out, part, out=out)
                    np.logical_and(all_masked, mask[i::f, j::f][:rows, :cols], out=all_masked)
    return out, all_masked


def palette(name: str) -> bytes:
    anchors = np.array(_MAPS[name], dtype=float)
    x = np.linspace(0, len(anchors) - 1, 255)
    rgb = np.stack([np.interp(x, np.arange(len(anchors)), anchors[:, c]) for c in range(3)], 1)
    return rgb.astype(np.uint8).tobytes() + bytes(MASKED)


def encode(indices: np.ndarray, plte: bytes) -> bytes:
    """A palette PNG of the 2-D uint8 ``indices``."""
    height, width = indices.shape
    rows = np.zeros((height, width + 1), dtype=np.uint8)   # filter byte 0 per row
    rows[:, 1:] = indices

    def chunk(kind: bytes, data: bytes) -> bytes:
        return (struct.pack(">I", len(data)) + kind + data
                + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF))
    return (b"\x89PNG\r\n\x1a\n"
            + chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 3, 0, 0, 0))
            + chunk(b"PLTE", plte) + chunk(b"IDAT", zlib.compress(rows.tobytes(), 1))
            + chunk(b"IEND", b""))


def render(image: np.ndarray, *, scale: str = "log", cmap: str = "viridis",
           region: Optional[Sequence[int]] = None, max_size: int = MAX_SIZE
           ) -> Tuple[bytes, int]:
    """(PNG bytes, downscale factor) of ``image`` or its ``region`` (r0, r1, c0, c1
    inclusive). Large images are reduced by the maximum of each block (a
    single bright pixel stays visible)."""
    if scale not in SCALES:
        raise ValueError(f"scale {scale!r} is not one of {', '.join(SCALES)}")
    if cmap not in _MAPS:
        raise ValueError(f"colour map {cmap!r} is not one of {', '.join(COLORMAPS)}")
    view = image
    if region is not None:
        r0, r1, c0, c1 = (int(v) for v in region)
        view = image[max(0, r0):max(0, r1) + 1, max(0, c0):max(0, c1) + 1]
        if view.size == 0:
            raise ValueError(f"region {list(region)} is outside the {image.shape} image")
    if np.issubdtype(view.dtype, np.integer) and not np.issubdtype(view.dtype, np.signedinteger):
        mask = view == np.iinfo(view.dtype).max
    else:
        mask = ~np.isfinite(view) if np.issubdtype(view.dtype, np.floating) else \
            np.zeros(view.shape, bool)
    values = np.where(mask, 0, view)
    factor = max(1, -(-max(values.shape) // max_size))
    if factor > 1:
        values, mask = _block_max(values, mask, factor)
    values = np.maximum(values, 0)
    top = float(values.max()) if values.size else 0.0
    if top <= 0:
        indices = np.zeros(values.shape, np.uint8)
    elif values.dtype.kind in "ui" and values.dtype.itemsize <= 2:
        # 8 and 16 bit: one table lookup per pixel instead of float arithmetic
        levels = np.arange(int(top) + 1, dtype=np.float32)
        curve = np.log1p(levels) / np.log1p(top) if scale == "log" else levels / top
        indices = (curve * 254.0).astype(np.uint8)[values]
    else:
        values = values.astype(np.float32)
        if scale == "log":
            values, top = np.log1p(values), float(np.log1p(top))
        indices = (values * (254.0 / top)).astype(np.uint8)
    indices[mask] = 255
    return encode(indices, palette(cmap)), factor
