"""ROI-only counts: decode just the bitshuffle blocks of the ROI rows.

When spec asked only for ROI sums in the last count (no ``read``, ``sum``,
``maxval``, ``roisum``, ``save``; no autosave, no accumulation), the decode
stage of the next count computes each named ROI's sum from the rows that ROI
covers (:func:`~eiger_server.formats.decode.decode_rows`: only the blocks of
those rows are decompressed) and keeps the image encoded. Should spec ask
for the whole image after all, :meth:`PartialImage.complete` decodes it then,
so every answer stays exact; only its cost changes.

HDF5RAW autosave uses the same stage with no ROIs: the frame is saved as it
came, and the latest image is decoded only when spec asks for it.

ROI-only applies when the image is delivered unrotated and unflipped (ROIs are in
delivered coordinates); filters are applied to the decoded rows as to the
whole image.
"""
from __future__ import annotations

from typing import Any, Dict, List, Optional, Tuple

import numpy as np

from eiger_server.errors import DataError
from eiger_server.formats.decode import Encoded, bslz4_spec, decode_rows
from eiger_server.formats.stream_events import ImageMessage
from eiger_server.stream import bslz4_kernels, imageproc
from eiger_server.stream.imageproc import ImageResult

Bounds = Tuple[int, int, int, int]

__all__ = ["PartialImage", "applies", "known_sum", "partial_image"]


def applies(rois: List[Bounds], rotation: int, flipv: bool, fliph: bool) -> bool:
    """True when ROI sums can be taken from the ROI rows alone."""
    return bool(rois) and int(rotation) % 360 == 0 and not flipv and not fliph


class PartialImage(ImageResult):
    """An image known by its ROI sums only; ``complete()`` decodes the rest."""

    event: Optional[ImageMessage]
    roi_values: Dict[Bounds, Any]
    filters: Tuple[float, float]

    def complete(self) -> ImageResult:
        """The whole image (decoded now)."""
        event = self.event
        assert event is not None
        arrays = {name: enc.decode(f"frame {event.frame} of series {event.series}, "
                                   f"channel {name}")
                  for name, enc in event.channels.items()}
        first = next(iter(arrays.values()))
        return ImageResult(data=first, raw=first, channels=arrays, series=self.series,
                           frame=self.frame, nframes=1, metadata=self.metadata)


def partial_image(event: ImageMessage, rois: List[Bounds], meta: Dict[str, Any],
                  low: float = 0, high: float = 0) -> PartialImage:
    """Decode the ROI rows of ``event``'s first channel and sum each ROI
    (masked pixels left out, filters applied). A ROI outside the image is left
    out: asking for it decodes the image and reports the error as usual."""
    name, encoded = next(iter(event.channels.items()))
    what = f"frame {event.frame} of series {event.series}, channel {name}"
    values: Dict[Bounds, Any] = {}
    for bounds in rois:
        try:
            rows, cols = imageproc.roi_bounds(encoded.shape, *bounds)
        except DataError:
            continue
        part = _rows(encoded, rows.start, rows.stop - 1, what)
        values[bounds] = imageproc.masked_sum(imageproc.apply_filters(part[:, cols], low, high))
    empty = np.empty((0, 0), dtype=encoded.dtype)
    image = PartialImage(data=empty, raw=empty, channels={}, series=event.series,
                         frame=event.frame, nframes=1, metadata=meta)
    image.event = event
    image.roi_values = values
    image.filters = (low, high)
    return image


def _rows(encoded: Encoded, row_begin: int, row_end: int, what: str) -> np.ndarray:
    """Rows ``row_begin..row_end`` (inclusive, inside the image): for
    bitshuffle/LZ4 only their blocks are decompressed, the block list walked
    by the kernel (bslz4_kernels.bslz4_decode_range), else decode_rows."""
    spec = bslz4_spec(encoded) if bslz4_kernels.BSLZ4_AVAILABLE else None
    if spec is not None and spec[0].kind == "u" and spec[1] == spec[0].itemsize:
        height, width = (int(n) for n in encoded.shape)
        try:
            values = bslz4_kernels.bslz4_decode_range(encoded.data, spec[0], row_begin * width,
                                                (row_end + 1) * width,
                                                nelems=height * width, what=what)
            return values.reshape(row_end - row_begin + 1, width)
        except bslz4_kernels.UnsupportedBlob:
            pass                          # decode_rows reads it or says why not
    return decode_rows(encoded, row_begin, row_end, what)


def known_sum(image: Optional[ImageResult], bounds: Any, rotation: int, flipv: bool,
              fliph: bool, low: float, high: float) -> Optional[Any]:
    """The ROI sum ``image`` already holds for ``bounds`` under these delivery
    settings, or None (then the whole image is needed)."""
    if not isinstance(image, PartialImage) or image.filters != (low, high) or \
            not applies([bounds], rotation, flipv, fliph):
        return None
    return image.roi_values.get(tuple(bounds))
