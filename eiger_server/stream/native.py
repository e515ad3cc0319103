"""The native LZ4 and bitshuffle functions the bslz4 kernels call (stream/kernels.py).

Finds two C functions already installed with the Python packages and makes
them callable from numba's nopython mode:

* ``LZ4_decompress_safe(src, dst, compressed_size, dst_capacity) -> int``:
  the bounds-checking LZ4 block decoder (never reads past ``src +
  compressed_size`` nor writes past ``dst + dst_capacity``; negative on
  malformed input).
* ``bshuf_trans_byte_bitrow_<SIMD>(in, out, size, elem_size) -> int64``: the
  first half of bitshuffle's bit un-transpose, a byte transpose of the
  ``8 * elem_size`` bit rows of ``size`` (a multiple of 8) elements: ``out[i *
  8 * elem_size + r] = in[r * size / 8 + i]``; negative on error. The kernels
  do the second half (bits to elements) themselves, twice as fast for 8- and
  16-bit pixels as bitshuffle's ``bshuf_untrans_bit_elem``. The variant is
  the one the library was built for (``bshuf_using_AVX2``, ``_SSE2``,
  ``_NEON``; the scalar one otherwise).

Both come from one library, the first that exports them and passes a
known-answer test: the ``bitshuffle`` package's extension (``bitshuffle/ext*.so``,
AVX2 where built so), then hdf5plugin's ``plugins/libh5bshuf.so`` and
bitshuffle's ``plugin/libh5bshuf*.so`` (found with importlib, nothing new
imported). The addresses are registered with llvmlite under names of our own
(:data:`LZ4_SYMBOL`, :data:`BITROW_SYMBOL`) and the kernels call them as
:class:`numba.types.ExternalFunction`: unlike a ctypes function object, whose
address numba bakes into the code, a symbol is resolved when the code is
loaded, so the kernels can be cached on disk (``cache=True``).

Binding happens once, at import; :func:`require` raises
:class:`NativeUnavailable` (an ImportError) when nothing suitable was found.
"""
from __future__ import annotations

import ctypes
import glob
import importlib.util
import os
from typing import Any, List, Optional, Tuple

import llvmlite.binding as llvm  # type: ignore[import-untyped]
import numpy as np
from numba import types

__all__ = ["LIBRARY", "NativeUnavailable", "bshuf_trans_byte_bitrow", "lz4_decompress_safe",
           "require"]

#: Names the addresses are registered under (unique to this project).
LZ4_SYMBOL = "eiger_server_LZ4_decompress_safe"
BITROW_SYMBOL = "eiger_server_bshuf_trans_byte_bitrow"

#: ``int LZ4_decompress_safe(const char*, char*, int, int)``; pointers as addresses.
lz4_decompress_safe: Any = types.ExternalFunction(
    LZ4_SYMBOL, types.int32(types.uintp, types.uintp, types.int32, types.int32))
#: ``int64_t bshuf_trans_byte_bitrow_*(const void*, void*, size_t, size_t)``.
bshuf_trans_byte_bitrow: Any = types.ExternalFunction(
    BITROW_SYMBOL, types.int64(types.uintp, types.uintp, types.uintp, types.uintp))


class NativeUnavailable(ImportError):
    """No installed library exports the LZ4 and bitshuffle functions."""


def _candidates() -> List[str]:
    """Libraries to try, best first (found without importing anything new)."""
    paths: List[str] = []
    try:
        spec = importlib.util.find_spec("bitshuffle.ext")
    except (ImportError, ValueError):
        spec = None
    if spec is not None and spec.origin:
        paths.append(spec.origin)
    for package, pattern in (("hdf5plugin", os.path.join("plugins", "libh5bshuf*.so")),
                             ("bitshuffle", os.path.join("plugin", "libh5bshuf*.so"))):
        try:
            found = importlib.util.find_spec(package)
        except (ImportError, ValueError):
            found = None
        for folder in (found.submodule_search_locations or []) if found else []:
            paths.extend(sorted(glob.glob(os.path.join(folder, pattern))))
    return paths


def _bitrow_variant(lib: ctypes.CDLL) -> str:
    """The trans_byte_bitrow built for this library's SIMD level."""
    host = llvm.get_host_cpu_features()
    for probe, suffix, feature in (("bshuf_using_AVX2", "AVX", "avx2"),
                                   ("bshuf_using_SSE2", "SSE", "sse2"),
                                   ("bshuf_using_NEON", "NEON", "")):
        using = getattr(lib, probe, None)
        if using is not None and using() and (not feature or host.get(feature, False)):
            return f"bshuf_trans_byte_bitrow_{suffix}"
    return "bshuf_trans_byte_bitrow_scal"


def _self_test(lz4: Any, bitrow: Any) -> Optional[str]:
    """None if both functions give the known answers, else what went wrong."""
    # an LZ4 block of 5 literals and no match: token 0x50, then the bytes
    src = ctypes.create_string_buffer(b"\x50hello", 6)
    dst = ctypes.create_string_buffer(8)
    got = lz4(ctypes.addressof(src), ctypes.addressof(dst), 6, 5)
    if got != 5 or dst.raw[:5] != b"hello":
        return f"LZ4_decompress_safe returned {got}, not the 5 bytes 'hello'"
    if lz4(ctypes.addressof(src), ctypes.addressof(dst), 6, 4) >= 0:
        return "LZ4_decompress_safe wrote past the capacity it was given"
    # 16 uint16 elements: 16 bit rows of 2 bytes, transposed to 2 rows of 16
    rows = np.arange(32, dtype=np.uint8)
    out = np.zeros(32, np.uint8)
    count = bitrow(rows.ctypes.data, out.ctypes.data, 16, 2)
    if count < 0 or not np.array_equal(out, rows.reshape(16, 2).T.ravel()):
        return f"trans_byte_bitrow returned {count} and {out.tolist()}"
    return None


def _bind() -> Tuple[Optional[str], str]:
    """(path and function of the library bound, "") or (None, why not)."""
    tried: List[str] = []
    for path in _candidates():
        try:
            lib = ctypes.CDLL(path)
            lz4 = lib.LZ4_decompress_safe
            name = _bitrow_variant(lib)
            bitrow = getattr(lib, name)
        except (OSError, AttributeError) as exc:
            tried.append(f"{path} ({exc})")
            continue
        lz4.argtypes = [ctypes.c_void_p, ctypes.c_void_p, ctypes.c_int, ctypes.c_int]
        lz4.restype = ctypes.c_int
        bitrow.argtypes = [ctypes.c_void_p, ctypes.c_void_p, ctypes.c_size_t, ctypes.c_size_t]
        bitrow.restype = ctypes.c_int64
        problem = _self_test(lz4, bitrow)
        if problem:
            tried.append(f"{path} ({problem})")
            continue
        _LOADED.append(lib)             # keeps the library loaded
        llvm.add_symbol(LZ4_SYMBOL, ctypes.cast(lz4, ctypes.c_void_p).value)
        llvm.add_symbol(BITROW_SYMBOL, ctypes.cast(bitrow, ctypes.c_void_p).value)
        return f"{path} (LZ4_decompress_safe, {name})", ""
    where = "; ".join(tried) if tried else "no bitshuffle or hdf5plugin library is installed"
    return None, ("the bslz4 kernels need LZ4_decompress_safe and bshuf_trans_byte_bitrow_* "
                  "from the bitshuffle package's extension or hdf5plugin's libh5bshuf.so; "
                  f"tried: {where}. Install bitshuffle or hdf5plugin, or decode with "
                  "eiger_server.formats.compression.decompress")


_LOADED: List[ctypes.CDLL] = []
#: The library (and functions) the kernels call, or None (the import lock
#: makes this run once).
LIBRARY, _WHY_NOT = _bind()


def require() -> str:
    """The library the kernels call; :class:`NativeUnavailable` if none."""
    if LIBRARY is None:
        raise NativeUnavailable(_WHY_NOT)
    return LIBRARY
