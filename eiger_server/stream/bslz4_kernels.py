"""Kernels over bitshuffle/LZ4 frames as they arrive (numba, GIL-free).

The frame, still compressed (bitshuffle/LZ4 in the HDF5 filter framing,
:mod:`eiger_server.formats.compression`), is decoded block by block into a
small scratch buffer that stays in the cache, and each block is reduced at
once, so the decoded frame is never written to memory:
:func:`bslz4_accumulate`, :func:`bslz4_stats`, :func:`bslz4_decode_into` (into
a caller's reused array) and :func:`bslz4_decode_range` (only the blocks of an
element range, e.g. ROI rows). They call LZ4 and bitshuffle's C code
(:mod:`eiger_server.stream.native`). Errors:

* :class:`~eiger_server.formats.compression.DecodeError` — the frame is
  corrupt or truncated (short header, bad block size, a block or the raw tail
  past the end, LZ4 failure); nothing is read or written out of bounds.
* :class:`UnsupportedBlob` (a DecodeError) — what the kernels do not take:
  the header's total is not the image's size (corrupt, or header-less blocks
  that :func:`~eiger_server.formats.compression.decompress` still decodes) or
  ``elem_size`` is not the pixel size. Catch it to fall back to the normal
  decode, which decodes the blob or raises the fitting DecodeError.
* :class:`~eiger_server.stream.native.NativeUnavailable` (an ImportError) —
  no installed library exports the C functions (:data:`BSLZ4_AVAILABLE`).
* TypeError / ValueError — arrays or types the caller got wrong.

Results equal decoding then :mod:`eiger_server.stream.kernels` (tests check
them pixel for pixel). Compiled once per pixel type and cached on disk.
"""
from __future__ import annotations

from typing import Any, Optional, Tuple

import numba
import numpy as np
from llvmlite import ir  # type: ignore[import-untyped]
from numba import types
from numba.core import cgutils
from numba.extending import intrinsic

from eiger_server.formats.compression import Buffer, DecodeError, compress
from eiger_server.stream import native
from eiger_server.stream.kernels import stats_run

__all__ = ["BSLZ4_AVAILABLE", "UnsupportedBlob", "bslz4_accumulate", "bslz4_decode_into",
           "bslz4_decode_range", "bslz4_stats", "warm_up"]

#: True when the native LZ4/bitshuffle functions were found (bslz4_* work).
BSLZ4_AVAILABLE = native.LIBRARY is not None

_jit = numba.njit(nogil=True, cache=True)


def _mask_at(dtype: np.dtype) -> int:
    return int(np.iinfo(dtype).max)


# ------------------------------------------------------------- bslz4 kernels
# Bitshuffle/LZ4 frames (HDF5 bitshuffle-filter framing, see
# eiger_server.formats.compression) decoded block by block into scratch
# buffers that stay in the L1/L2 cache, each block reduced at once: the frame
# is never materialised. Layout of a frame of n elements of s bytes: 12-byte
# header (uint64 BE total bytes, uint32 BE block bytes), then blocks of
# B = block_bytes / s elements, each a uint32 BE compressed length and an LZ4
# block of the bit-shuffled bytes; the last block holds n % B elements rounded
# down to a multiple of 8, and the final n % 8 elements follow raw.
#
# A decompressed block of nel elements is 8*s bit rows ("planes") of nel/8
# bytes: bit j of byte i of row r is bit r of element 8*i + j. Statistics
# work on the planes directly (popcounts; a pixel at the type's maximum has
# its bit set in every row). Values need the un-transpose: a byte transpose
# gathers the 8*s row bytes of each i, and vector sign-bit masks turn those
# into 8 elements (LLVM IR intrinsics, pmovmskb on x86): fused in
# _unbit_rows* for 16/32-bit blocks of whole 128 elements, else the native
# byte transpose (native.bshuf_trans_byte_bitrow) and _unbit*.
#
# Kernels never raise: they write an error code and its details into
# ``info`` (code, block, byte offset, detail) and stop; _check (below) turns
# that into a DecodeError. Every length is checked against the blob before it
# is used and LZ4 is the bounds-checking decoder, so corrupt data cannot make
# a kernel read or write out of bounds.

_HEADER_BYTES = 12
_MAX_BLOCK_BYTES = 0x7E000000          # LZ4_MAX_INPUT_SIZE: larger blocks cannot be LZ4
_MAX_LZ4_BYTES = 0x7FFFFFFF            # LZ4 takes sizes as int
_E_SHORT = 1        # shorter than the header
_E_TOTAL = 2        # header total != what the image needs
_E_BLOCK_SIZE = 3   # block size 0, not 8 elements' multiple, or too large
_E_LIST_END = 4     # the data ends where a block's 4-byte length should be
_E_BLOCK_END = 5    # a block's compressed length runs past the end
_E_TAIL_END = 6     # the raw trailing elements are missing
_E_LZ4 = 7          # LZ4 failed or gave the wrong number of bytes
_E_BSHUF = 8        # bitshuffle refused the block

_I8 = ir.IntType(8)
_I32 = ir.IntType(32)
_I64 = ir.IntType(64)


def _splat(vector: ir.VectorType, value: int) -> ir.Constant:
    return ir.Constant(vector, [ir.Constant(vector.element, value)] * vector.count)


def _concat(builder: ir.IRBuilder, a: ir.Value, b: ir.Value) -> ir.Value:
    """The vector a followed by b (same type)."""
    n = 2 * a.type.count
    return builder.shuffle_vector(a, b, ir.Constant(ir.VectorType(_I32, n), list(range(n))))


def _emit_elements(builder: ir.IRBuilder, y: ir.Value, base: ir.Value, elem_size: int) -> None:
    """Store the 8 elements whose bit rows are the bytes of ``y`` (lane r:
    byte of bit row r, its bit j bit r of element j) at address ``base``."""
    # Shifting a byte left by 7 - j puts its bit j into the sign bit; the
    # sign bits of a byte vector, as an integer, are one element (lanes = bit
    # rows): icmp + bitcast, pmovmskb on x86. Small elements pack several
    # shifted copies into one 32-bit mask: two (16-bit) or four (8-bit)
    # adjacent elements at once.
    if elem_size == 1:
        copies = [builder.shl(y, _splat(y.type, 3 - q)) if q < 3 else y for q in range(4)]
        z = _concat(builder, _concat(builder, copies[0], copies[1]),
                    _concat(builder, copies[2], copies[3]))
        groups = [(0, 4), (4, 0)]                       # (first element, shift)
    elif elem_size == 2:
        z = _concat(builder, builder.add(y, y), y)
        groups = [(j, 6 - j) for j in (0, 2, 4, 6)]
    else:
        z = y
        groups = [(j, 7 - j) for j in range(8)]
    mask_type = ir.IntType(z.type.count)
    for first, shift in groups:
        shifted = builder.shl(z, _splat(z.type, shift)) if shift else z
        signs = builder.icmp_signed("<", shifted, _splat(z.type, 0))
        where = builder.add(base, ir.Constant(base.type, first * elem_size))
        builder.store(builder.bitcast(signs, mask_type),
                      builder.inttoptr(where, mask_type.as_pointer()), align=1)


def _make_unbit(elem_size: int) -> Any:
    """An intrinsic ``(src, dst, i)``: the 8 * elem_size bytes at ``src + i *
    8 * elem_size`` (byte r: byte i of bit row r) turned into elements
    ``8 * i .. 8 * i + 7`` at address ``dst``."""
    rows = 8 * elem_size

    def codegen(context: Any, builder: ir.IRBuilder, signature: Any, args: Any) -> Any:
        src, dst, i = args
        at = builder.add(src, builder.mul(i, ir.Constant(i.type, rows)))
        y = builder.load(builder.inttoptr(at, ir.VectorType(_I8, rows).as_pointer()), align=1)
        base = builder.add(dst, builder.mul(i, ir.Constant(i.type, 8 * elem_size)))
        _emit_elements(builder, y, base, elem_size)
        return context.get_dummy_value()

    def typer(typingctx: Any, src: Any, dst: Any, i: Any) -> Any:
        return types.void(types.uintp, types.uintp, types.intp), codegen

    typer.__name__ = f"_unbit{elem_size}"
    return intrinsic(typer)


def _unpack_mask(width: int, high: bool) -> ir.Constant:
    """shufflevector mask interleaving ``width``-byte units of two 16-byte
    vectors, from their low or high halves (x86 punpckl*/punpckh*)."""
    units = range(8 // width, 16 // width) if high else range(8 // width)
    lanes = [side + u * width + t for u in units for side in (0, 16) for t in range(width)]
    return ir.Constant(ir.VectorType(_I32, 16), lanes)


_BIT_REVERSED = [int(format(q, "04b")[::-1], 2) for q in range(16)]


def _make_unbit_rows(elem_size: int) -> Any:
    """An intrinsic ``(src, row_bytes, dst, i0)``: elements ``8 * i0 .. 8 *
    (i0 + 16) - 1`` at address ``dst`` from the bit rows at ``src`` (row r at
    ``src + r * row_bytes``), for 16- and 32-bit elements. Fuses the byte
    transpose (16 x 16 bytes at a time, in four interleave steps) with
    :func:`_emit_elements`."""
    def codegen(context: Any, builder: ir.IRBuilder, signature: Any, args: Any) -> Any:
        src, row_bytes, dst, i0 = args
        vec = ir.VectorType(_I8, 16)
        start = builder.add(src, i0)
        groups = []
        for group in range(elem_size // 2):               # 16 bit rows at a time
            # loading the rows in bit-reversed order makes the interleave
            # network below leave them in order
            v = [builder.load(builder.inttoptr(
                builder.add(start, builder.mul(row_bytes, ir.Constant(row_bytes.type,
                                                                      16 * group + r))),
                vec.as_pointer()), align=1) for r in _BIT_REVERSED]
            for width in (1, 2, 4, 8):
                low, high = _unpack_mask(width, False), _unpack_mask(width, True)
                v = [builder.shuffle_vector(v[k], v[k + 8], mask)
                     for k in range(8) for mask in (low, high)]
            groups.append(v)                              # v[k]: the rows' byte i0 + k
        base = builder.add(dst, builder.mul(i0, ir.Constant(i0.type, 8 * elem_size)))
        for k in range(16):
            y = groups[0][k] if elem_size == 2 else _concat(builder, groups[0][k], groups[1][k])
            _emit_elements(builder, y, builder.add(base, ir.Constant(base.type, 8 * elem_size * k)),
                           elem_size)
        return context.get_dummy_value()

    def typer(typingctx: Any, src: Any, row_bytes: Any, dst: Any, i0: Any) -> Any:
        return types.void(types.uintp, types.intp, types.uintp, types.intp), codegen

    typer.__name__ = f"_unbit_rows{elem_size}"
    return intrinsic(typer)


_unbit1 = _make_unbit(1)
_unbit2 = _make_unbit(2)
_unbit4 = _make_unbit(4)
_unbit8 = _make_unbit(8)
_unbit_rows2 = _make_unbit_rows(2)
_unbit_rows4 = _make_unbit_rows(4)

# Reductions numba would widen to 64-bit lanes (its integer arithmetic is at
# least intp wide), written with vectors of the pixel width: 16 pixels a step;
# the callers do the last n % 16 pixels.
_LANES = 16


def _splat_value(builder: ir.IRBuilder, value: ir.Value, count: int) -> ir.Value:
    vector = ir.VectorType(value.type, count)
    one = builder.insert_element(ir.Constant(vector, ir.Undefined), value,
                                 ir.Constant(_I32, 0))
    return builder.shuffle_vector(one, one, ir.Constant(ir.VectorType(_I32, count), [0] * count))


def _vector_at(builder: ir.IRBuilder, pointer: ir.Value, index: ir.Value,
               element: ir.Type) -> ir.Value:
    return builder.bitcast(builder.gep(pointer, [index]),
                           ir.VectorType(element, _LANES).as_pointer())


def _lane_sum(builder: ir.IRBuilder, vector: ir.Value) -> ir.Value:
    total = ir.Constant(_I64, 0)
    for lane in range(_LANES):
        total = builder.add(total, builder.sext(
            builder.extract_element(vector, ir.Constant(_I32, lane)), _I64))
    return total


def _add_count16_typer(typingctx, total, base, vals, n, mask_at):  # type: ignore[no-untyped-def]
    """``total[base + j] += vals[j]`` for j < n - n % 16; how many of those
    values equal ``mask_at``."""
    def codegen(context, builder, signature, args):  # type: ignore[no-untyped-def]
        total_type, _, vals_type, _, _ = signature.args
        t_arr, base, v_arr, n, mask = args
        t_ptr = builder.gep(context.make_array(total_type)(context, builder, t_arr).data, [base])
        v_ptr = context.make_array(vals_type)(context, builder, v_arr).data
        wide = context.get_value_type(total_type.dtype)
        narrow = context.get_value_type(vals_type.dtype)
        masks = _splat_value(builder, mask, _LANES)
        counts_type = ir.VectorType(_I32, _LANES)
        counts = cgutils.alloca_once_value(builder, ir.Constant(counts_type, [0] * _LANES))
        with cgutils.for_range(builder, builder.udiv(n, ir.Constant(n.type, _LANES))) as loop:
            at = builder.mul(loop.index, ir.Constant(n.type, _LANES))
            t_at = _vector_at(builder, t_ptr, at, wide)
            value = builder.load(_vector_at(builder, v_ptr, at, narrow), align=1)
            widened = builder.zext(value, t_at.type.pointee) if narrow.width < wide.width else value
            builder.store(builder.add(builder.load(t_at, align=1), widened), t_at, align=1)
            hit = builder.icmp_unsigned("==", value, masks)
            builder.store(builder.sub(builder.load(counts), builder.sext(hit, counts_type)), counts)
        return _lane_sum(builder, builder.load(counts))
    return types.int64(total, types.intp, vals, types.intp, vals.dtype), codegen


_add_count16: Any = intrinsic(_add_count16_typer)


def _count_fresh16_typer(typingctx, flags, base, vals, n, mask_at):  # type: ignore[no-untyped-def]
    """How many of ``vals[j] == mask_at`` have ``flags[base + j] == 0``, for
    j < n - n % 16 (read only)."""
    def codegen(context, builder, signature, args):  # type: ignore[no-untyped-def]
        flags_type, _, vals_type, _, _ = signature.args
        f_arr, base, v_arr, n, mask = args
        f_ptr = builder.gep(context.make_array(flags_type)(context, builder, f_arr).data, [base])
        v_ptr = context.make_array(vals_type)(context, builder, v_arr).data
        narrow = context.get_value_type(vals_type.dtype)
        masks = _splat_value(builder, mask, _LANES)
        zeros = ir.Constant(ir.VectorType(_I8, _LANES), [0] * _LANES)
        counts_type = ir.VectorType(_I32, _LANES)
        counts = cgutils.alloca_once_value(builder, ir.Constant(counts_type, [0] * _LANES))
        with cgutils.for_range(builder, builder.udiv(n, ir.Constant(n.type, _LANES))) as loop:
            at = builder.mul(loop.index, ir.Constant(n.type, _LANES))
            value = builder.load(_vector_at(builder, v_ptr, at, narrow), align=1)
            flag = builder.load(_vector_at(builder, f_ptr, at, _I8), align=1)
            fresh = builder.and_(builder.icmp_unsigned("==", value, masks),
                                 builder.icmp_unsigned("==", flag, zeros))
            builder.store(builder.sub(builder.load(counts), builder.sext(fresh, counts_type)), counts)
        return _lane_sum(builder, builder.load(counts))
    return types.int64(flags, types.intp, vals, types.intp, vals.dtype), codegen


_count_fresh16: Any = intrinsic(_count_fresh16_typer)


def _popcount_typer(typingctx, x):  # type: ignore[no-untyped-def]
    def codegen(context, builder, signature, args):  # type: ignore[no-untyped-def]
        return builder.ctpop(args[0])
    return types.uint64(types.uint64), codegen


_popcount: Any = intrinsic(_popcount_typer)


@_jit
def _addr(array, byte_offset):  # type: ignore[no-untyped-def]
    return array.ctypes.data + np.uintp(byte_offset)


@_jit
def _fail(info, code, block, offset, detail):  # type: ignore[no-untyped-def]
    info[0] = code
    info[1] = block
    info[2] = offset
    info[3] = detail


@_jit
def _be32(blob, i):  # type: ignore[no-untyped-def]
    return ((np.int64(blob[i]) << 24) | (np.int64(blob[i + 1]) << 16)
            | (np.int64(blob[i + 2]) << 8) | np.int64(blob[i + 3]))


@_jit
def _layout(blob, nelems, elem_size, info):  # type: ignore[no-untyped-def]
    """Elements per block of a checked header; 0 (and ``info``) on error."""
    if blob.size < _HEADER_BYTES:
        _fail(info, _E_SHORT, -1, 0, blob.size)
        return 0
    total = np.uint64(0)
    for i in range(8):
        total = (total << np.uint64(8)) | np.uint64(blob[i])
    if total != np.uint64(nelems * elem_size):
        _fail(info, _E_TOTAL, -1, 0, np.int64(total))
        return 0
    block_bytes = _be32(blob, 8)
    usable = min(block_bytes, nelems * elem_size)
    if block_bytes == 0 or block_bytes % (8 * elem_size) != 0 or usable > _MAX_BLOCK_BYTES:
        _fail(info, _E_BLOCK_SIZE, -1, 8, block_bytes)
        return 0
    return block_bytes // elem_size


@_jit
def _block_elems(k, nelems, per_block):  # type: ignore[no-untyped-def]
    """Elements in block ``k`` (0 past the last block)."""
    left = nelems - k * per_block
    if left <= 0:
        return 0
    size = min(per_block, left)
    return size - size % 8


@_jit
def _scratch_elems(nelems, per_block):  # type: ignore[no-untyped-def]
    """Elements of the largest block, at least 64 (room for the raw tail)."""
    return max(64, min(per_block, nelems - nelems % 8))


@_jit
def _block_length(blob, offset, k, info):  # type: ignore[no-untyped-def]
    """Checked compressed length of block ``k`` at ``offset``; -1 on error."""
    if offset + 4 > blob.size:
        _fail(info, _E_LIST_END, k, offset, blob.size)
        return -1
    length = _be32(blob, offset)
    if length > blob.size - offset - 4 or length > _MAX_LZ4_BYTES:
        _fail(info, _E_BLOCK_END, k, offset, length)
        return -1
    return length


@_jit
def _walk(blob, offset, k, stop_k, nelems, per_block, info):  # type: ignore[no-untyped-def]
    """Offset of block ``stop_k`` (or of the raw tail) from block ``k`` at
    ``offset``, every length on the way checked; -1 on error."""
    while k < stop_k and _block_elems(k, nelems, per_block) > 0:
        length = _block_length(blob, offset, k, info)
        if length < 0:
            return -1
        offset += 4 + length
        k += 1
    return offset


@_jit
def _tail_offset(blob, nelems, per_block, elem_size, info):  # type: ignore[no-untyped-def]
    """Offset of the raw tail, the whole block list and the tail checked; -1 on error."""
    offset = _walk(blob, _HEADER_BYTES, 0, nelems, nelems, per_block, info)
    if offset < 0:
        return -1
    need = (nelems % 8) * elem_size
    if offset + need > blob.size:
        _fail(info, _E_TAIL_END, -1, offset, need)
        return -1
    return offset


@_jit
def _lz4(blob, offset, length, nbytes, planes, k, info):  # type: ignore[no-untyped-def]
    """Block ``k`` (``length`` bytes of LZ4 after the 4-byte length at
    ``offset``) decompressed into ``planes``; False (and ``info``) on error."""
    got = native.lz4_decompress_safe(_addr(blob, offset + 4), _addr(planes, 0),
                                     np.int32(length), np.int32(nbytes))
    if got != nbytes:
        _fail(info, _E_LZ4, k, offset, got)
        return False
    return True


@_jit
def _unshuffle(planes, tmp, dst, nel, elem_size):  # type: ignore[no-untyped-def]
    """The ``nel`` elements of the bit rows ``planes`` written at address
    ``dst``; negative on error."""
    if nel % 128 == 0 and (elem_size == 2 or elem_size == 4):
        row_bytes = nel // 8                      # whole 16-byte columns: fused
        src = _addr(planes, 0)
        for i0 in range(0, row_bytes, 16):
            if elem_size == 2:
                _unbit_rows2(src, row_bytes, dst, i0)
            else:
                _unbit_rows4(src, row_bytes, dst, i0)
        return 0
    done = native.bshuf_trans_byte_bitrow(_addr(planes, 0), _addr(tmp, 0), nel, elem_size)
    if done < 0:
        return done
    src = _addr(tmp, 0)
    if elem_size == 1:
        for i in range(nel // 8):
            _unbit1(src, dst, i)
    elif elem_size == 2:
        for i in range(nel // 8):
            _unbit2(src, dst, i)
    elif elem_size == 4:
        for i in range(nel // 8):
            _unbit4(src, dst, i)
    else:
        for i in range(nel // 8):
            _unbit8(src, dst, i)
    return 0


@_jit
def _unpack(blob, offset, length, nel, elem_size, planes, tmp, dst, k, info):  # type: ignore[no-untyped-def]
    """Block ``k`` decoded: ``nel`` elements written at address ``dst``;
    False (and ``info``) on error."""
    if not _lz4(blob, offset, length, nel * elem_size, planes, k, info):
        return False
    done = _unshuffle(planes, tmp, dst, nel, elem_size)
    if done < 0:
        _fail(info, _E_BSHUF, k, offset, done)
        return False
    return True


@_jit
def _raw_tail(blob, offset, count, elem_size, vals):  # type: ignore[no-untyped-def]
    """The ``count`` raw little-endian trailing elements into ``vals``."""
    for j in range(count):
        value = np.uint64(0)
        for b in range(elem_size):
            value |= np.uint64(blob[offset + j * elem_size + b]) << np.uint64(8 * b)
        vals[j] = value


@_jit
def _decode_into(blob, out, elem_size, info):  # type: ignore[no-untyped-def]
    """Whole frame into the bytes ``out`` (``out.size // elem_size`` elements)."""
    nelems = out.size // elem_size
    per_block = _layout(blob, nelems, elem_size, info)
    if per_block == 0:
        return
    planes = np.empty(_scratch_elems(nelems, per_block) * elem_size, np.uint8)
    tmp = np.empty_like(planes)
    offset = _HEADER_BYTES
    k = 0
    start = 0
    while True:
        nel = _block_elems(k, nelems, per_block)
        if nel == 0:
            break
        length = _block_length(blob, offset, k, info)
        if length < 0:
            return
        if not _unpack(blob, offset, length, nel, elem_size, planes, tmp,
                       _addr(out, start * elem_size), k, info):
            return
        offset += 4 + length
        start += nel
        k += 1
    need = (nelems - start) * elem_size
    if offset + need > blob.size:
        _fail(info, _E_TAIL_END, -1, offset, need)
        return
    out[start * elem_size:] = blob[offset:offset + need]


@_jit
def _decode_range(blob, out, elem_size, nelems, first, stop, info):  # type: ignore[no-untyped-def]
    """Elements ``first..stop`` (exclusive) into the bytes ``out``; only the
    blocks covering them are decompressed."""
    per_block = _layout(blob, nelems, elem_size, info)
    if per_block == 0 or first >= stop:
        return
    k = first // per_block
    offset = _walk(blob, _HEADER_BYTES, 0, k, nelems, per_block, info)
    if offset < 0:
        return
    planes = np.empty(_scratch_elems(nelems, per_block) * elem_size, np.uint8)
    tmp = np.empty_like(planes)
    part = np.empty_like(planes)
    start = k * per_block
    while start < stop:
        nel = _block_elems(k, nelems, per_block)
        if nel == 0:
            break
        length = _block_length(blob, offset, k, info)
        if length < 0:
            return
        lo = max(first, start)
        hi = min(stop, start + nel)
        if lo >= hi:                               # the range starts in the raw tail
            pass
        elif lo == start and hi == start + nel:     # the whole block is wanted
            if not _unpack(blob, offset, length, nel, elem_size, planes, tmp,
                           _addr(out, (start - first) * elem_size), k, info):
                return
        else:
            if not _unpack(blob, offset, length, nel, elem_size, planes, tmp,
                           _addr(part, 0), k, info):
                return
            out[(lo - first) * elem_size:(hi - first) * elem_size] = \
                part[(lo - start) * elem_size:(hi - start) * elem_size]
        offset += 4 + length
        start += nel
        k += 1
    tail = nelems - nelems % 8
    if stop > tail:                                # the range reaches the raw tail
        offset = _walk(blob, offset, k, nelems, nelems, per_block, info)
        if offset < 0:
            return
        need = (nelems - tail) * elem_size
        if offset + need > blob.size:
            _fail(info, _E_TAIL_END, -1, offset, need)
            return
        lo = max(first, tail)
        out[(lo - first) * elem_size:(stop - first) * elem_size] = \
            blob[offset + (lo - tail) * elem_size:offset + (stop - tail) * elem_size]


@_jit
def _all_set(planes, nel, elem_size, allset):  # type: ignore[no-untyped-def]
    """Bit mask of the block's elements with every bit set (masked pixels):
    bit b of ``allset[w]`` is element 64 * w + b; returns how many there are.
    Needs ``nel % 64 == 0`` (rows of whole 64-bit words)."""
    words = nel // 64
    p = planes.view(np.uint64)
    every = allset[:words]
    every[:] = p[:words]
    for r in range(1, 8 * elem_size):
        row = p[r * words:(r + 1) * words]
        for w in range(words):
            every[w] &= row[w]
    count = np.uint64(0)
    for w in range(words):
        count += _popcount(every[w])
    return count


@_jit
def _plane_stats(planes, nel, elem_size, allset, mask_at):  # type: ignore[no-untyped-def]
    """(sum, maximum, masked) of one block from its bit rows (``nel % 64 == 0``)."""
    words = nel // 64
    rows = 8 * elem_size
    p = planes.view(np.uint64)
    nmasked = _all_set(planes, nel, elem_size, allset)
    total = np.uint64(0)
    for r in range(rows):
        row = p[r * words:(r + 1) * words]
        ones = np.uint64(0)
        for w in range(words):
            ones += _popcount(row[w])
        total += ones << np.uint64(r)
    total -= nmasked * mask_at                    # masked pixels are left out
    # maximum: from the top bit row down, keep the candidates with that bit
    # set whenever any has it (candidates: the pixels not masked)
    candidates = allset[:words]
    for w in range(words):
        candidates[w] = ~candidates[w]
    top = np.uint64(0)
    for r in range(rows - 1, -1, -1):
        row = p[r * words:(r + 1) * words]
        hit = np.uint64(0)
        for w in range(words):
            hit |= candidates[w] & row[w]
        if hit:
            top |= np.uint64(1) << np.uint64(r)
            for w in range(words):
                candidates[w] &= row[w]
    return total, top, nmasked


@_jit
def _bslz4_stats(blob, nelems, mask_at, elem_size, info):  # type: ignore[no-untyped-def]
    total = np.uint64(0)
    top = np.uint64(0)
    nmasked = np.uint64(0)
    per_block = _layout(blob, nelems, elem_size, info)
    if per_block == 0:
        return total, top, nmasked
    cap = _scratch_elems(nelems, per_block)
    planes = np.empty(cap * elem_size, np.uint8)
    tmp = np.empty_like(planes)
    vals = np.empty(cap, np.asarray(mask_at).dtype)
    allset = np.empty(cap // 64 + 1, np.uint64)
    wide_mask = np.uint64(mask_at)
    offset = _HEADER_BYTES
    k = 0
    start = 0
    while True:
        nel = _block_elems(k, nelems, per_block)
        if nel == 0:
            break
        length = _block_length(blob, offset, k, info)
        if length < 0:
            return total, top, nmasked
        if nel % 64 == 0:                         # whole words: from the bit rows
            if not _lz4(blob, offset, length, nel * elem_size, planes, k, info):
                return total, top, nmasked
            block_sum, block_top, block_masked = _plane_stats(planes, nel, elem_size,
                                                              allset, wide_mask)
            total += block_sum
            top = max(top, block_top)
            nmasked += block_masked
        else:
            if not _unpack(blob, offset, length, nel, elem_size, planes, tmp,
                           _addr(vals, 0), k, info):
                return total, top, nmasked
            total, top, nmasked = stats_run(vals, nel, wide_mask, total, top, nmasked)
        offset += 4 + length
        start += nel
        k += 1
    left = nelems - start
    if offset + left * elem_size > blob.size:
        _fail(info, _E_TAIL_END, -1, offset, left * elem_size)
        return total, top, nmasked
    _raw_tail(blob, offset, left, elem_size, vals)
    return stats_run(vals, left, wide_mask, total, top, nmasked)


# (The helpers below index slices from 0: an index that might be negative
# makes numba wrap it around, which keeps LLVM from vectorising the loop.)
@_jit
def _add_counting(t, base, vals, n, mask_at):  # type: ignore[no-untyped-def]
    """t[base:base+n] += vals[:n]; how many of the values are masked."""
    hits = _add_count16(t, base, vals, n, mask_at)
    for j in range(n - n % _LANES, n):
        value = vals[j]
        t[base + j] += value
        hits += np.int64(value == mask_at)
    return hits


@_jit
def _sub_vals(t, base, vals, n):  # type: ignore[no-untyped-def]
    part = t[base:base + n]
    for j in range(n):
        part[j] -= vals[j]


@_jit
def _grow(added, nadded):  # type: ignore[no-untyped-def]
    if nadded < added.size:
        return added
    bigger = np.empty(2 * added.size, added.dtype)
    bigger[:nadded] = added
    return bigger


@_jit
def _mark(m, base, vals, n, mask_at, added, nadded):  # type: ignore[no-untyped-def]
    """Set the masked flags of the masked pixels among ``vals`` (a block with
    some), recording the flags newly set in ``added`` (grown as needed).
    Masked pixels are mostly the same from frame to frame (gaps, defects):
    a read-only pass finds whether any flag is new, and only then are flags
    written."""
    part = m[base:base + n]
    fresh = _count_fresh16(m, base, vals, n, mask_at)
    for j in range(n - n % _LANES, n):
        fresh += np.int64((vals[j] == mask_at) & (part[j] == 0))
    if fresh:
        for j in range(n):
            if vals[j] == mask_at and part[j] == 0:
                part[j] = 1
                added = _grow(added, nadded)
                added[nadded] = base + j
                nadded += 1
    return added, nadded


@_jit
def _undo(t, m, blob, k, nelems, per_block, elem_size, planes, tmp, vals,  # type: ignore[no-untyped-def]
          added, nadded, info):
    """Take back blocks ``0..k-1`` and the masked flags this frame set (after
    block ``k`` failed to decompress), keeping ``info`` of the failure."""
    saved = info.copy()
    offset = _HEADER_BYTES
    for j in range(k):
        length = _be32(blob, offset)
        nel = _block_elems(j, nelems, per_block)
        _unpack(blob, offset, length, nel, elem_size, planes, tmp, _addr(vals, 0), j, info)
        _sub_vals(t, j * per_block, vals, nel)     # exact: unsigned sums wrap alike
        offset += 4 + length
    for j in range(nadded):
        m[added[j]] = 0
    info[:] = saved


@_jit
def _bslz4_accumulate(total, masked, blob, mask_at, elem_size, info):  # type: ignore[no-untyped-def]
    t = total.ravel()
    m = masked.ravel()
    nelems = t.size
    per_block = _layout(blob, nelems, elem_size, info)
    if per_block == 0:
        return 0
    # the whole block list first: a corrupt structure changes nothing
    tail_at = _tail_offset(blob, nelems, per_block, elem_size, info)
    if tail_at < 0:
        return 0
    cap = _scratch_elems(nelems, per_block)
    planes = np.empty(cap * elem_size, np.uint8)
    tmp = np.empty_like(planes)
    vals = np.empty(cap, np.asarray(mask_at).dtype)
    added = np.empty(64, np.int64)           # flags this frame set (to undo them)
    nadded = 0
    nmasked = np.int64(0)
    offset = _HEADER_BYTES
    k = 0
    start = 0
    while True:
        nel = _block_elems(k, nelems, per_block)
        if nel == 0:
            break
        length = _be32(blob, offset)             # checked by _tail_offset
        if not _lz4(blob, offset, length, nel * elem_size, planes, k, info):
            _undo(t, m, blob, k, nelems, per_block, elem_size, planes, tmp, vals,
                  added, nadded, info)
            return 0
        if _unshuffle(planes, tmp, _addr(vals, 0), nel, elem_size) < 0:
            _fail(info, _E_BSHUF, k, offset, -1)
            _undo(t, m, blob, k, nelems, per_block, elem_size, planes, tmp, vals,
                  added, nadded, info)
            return 0
        hits = _add_counting(t, start, vals, nel, mask_at)
        if hits:                                 # only blocks with masked pixels
            added, nadded = _mark(m, start, vals, nel, mask_at, added, nadded)
        nmasked += hits
        offset += 4 + length
        start += nel
        k += 1
    left = nelems - start
    _raw_tail(blob, tail_at, left, elem_size, vals)
    hits = _add_counting(t, start, vals, left, mask_at)
    if hits:
        nmasked += hits
        added, nadded = _mark(m, start, vals, left, mask_at, added, nadded)
    return nmasked


# ------------------------------------------------------------ bslz4 wrappers
class UnsupportedBlob(DecodeError):
    """A blob the bslz4 kernels do not take: decode it the normal way
    (:func:`eiger_server.formats.compression.decompress`), which decodes it
    (e.g. header-less bitshuffle/LZ4) or raises the fitting DecodeError."""


_NATIVE_ORDER = ("=", "|", "<")          # the kernels assume a little-endian host


def _blob_array(blob: Any) -> np.ndarray:
    return np.frombuffer(blob, dtype=np.uint8)


def _frame_type(dtype: Any, op: str) -> np.dtype:
    """The native unsigned 8/16/32-bit type the accumulate/stats kernels take."""
    dt = np.dtype(dtype)
    if dt.kind != "u" or dt.itemsize not in (1, 2, 4):
        raise TypeError(f"{op}: the bslz4 kernels take uint8/16/32 frames, not {dt}")
    return np.dtype(dt.type)


def _any_type(dtype: Any, op: str) -> np.dtype:
    """Any fixed-size number type of 1, 2, 4 or 8 bytes, native byte order."""
    dt = np.dtype(dtype)
    if dt.kind not in "uif" or dt.itemsize not in (1, 2, 4, 8):
        raise TypeError(f"{op}: the bslz4 kernels decode 1/2/4/8-byte numbers, not {dt}")
    return np.dtype(dt.type)


def _prefix(what: str) -> str:
    return f"{what}: " if what else ""


def _ready(elem_size: int, dt: np.dtype, op: str, what: str) -> None:
    """NativeUnavailable without the C functions, UnsupportedBlob when the
    blob's elements are not the pixels (``elem_size``, 0: the pixel size)."""
    native.require()
    if elem_size and int(elem_size) != dt.itemsize:
        raise UnsupportedBlob(f"{_prefix(what)}cannot {op} bslz4 data of {elem_size}-byte "
                              f"elements as {dt.name} pixels: the kernels need elements of the "
                              "pixel size; decode it the normal way")


def _check(info: np.ndarray, op: str, dt: np.dtype, nelems: int, size: int, what: str) -> None:
    """Raise the DecodeError that ``info`` (filled by a kernel) describes."""
    code, block, offset, detail = (int(v) for v in info)
    if code == 0:
        return
    asked = (f"{_prefix(what)}cannot {op} a bslz4 {dt.name} frame of {nelems} pixels from "
             f"{size} bytes")
    where = f"block {block} at byte {offset}" if block >= 0 else f"byte {offset}"
    if code == _E_TOTAL:
        raise UnsupportedBlob(
            f"{asked}: its header announces {detail & 0xFFFFFFFFFFFFFFFF} bytes, but the image "
            f"needs {nelems * dt.itemsize}; the frame is corrupt, its shape/type is wrong, or it "
            "has no header (decode it with compression.decompress)")
    problem = {
        _E_SHORT: "it is shorter than the 12-byte header; the frame is truncated",
        _E_BLOCK_SIZE: (f"its header announces blocks of {detail} bytes, not a multiple of 8 "
                        f"{dt.itemsize}-byte elements (or too large); the frame is corrupt"),
        _E_LIST_END: (f"the data ends where the length of {where} should be; the frame is "
                      "truncated"),
        _E_BLOCK_END: (f"{where} claims {detail} compressed bytes, past the end of the data; "
                       "the frame is corrupt or truncated"),
        _E_TAIL_END: (f"the {detail} bytes of raw trailing pixels at {where} are missing; "
                      "the frame is truncated"),
        _E_LZ4: (f"LZ4 {where} does not decompress to its size (LZ4 says {detail}); the "
                 "frame is corrupt"),
        _E_BSHUF: f"bitshuffle refuses {where} (error {detail}); the frame is corrupt",
    }.get(code, f"error {code} at {where}; the frame is corrupt")
    raise DecodeError(f"{asked}: {problem}")


def _header_elems(data: np.ndarray, dt: np.dtype, op: str, what: str) -> int:
    """The number of elements the header of ``data`` announces."""
    if data.size < _HEADER_BYTES:
        raise DecodeError(f"{_prefix(what)}cannot {op} bslz4 {dt.name} data of {data.size} "
                          "bytes: it is shorter than the 12-byte header; the frame is truncated")
    total = int.from_bytes(data[:8].tobytes(), "big")
    if total % dt.itemsize:
        raise DecodeError(f"{_prefix(what)}cannot {op} bslz4 {dt.name} data: its header "
                          f"announces {total} bytes, not whole {dt.itemsize}-byte pixels; the "
                          "frame is corrupt")
    return total // dt.itemsize


def bslz4_decode_into(blob: Buffer, out: np.ndarray, *, elem_size: int = 0,
                      what: str = "") -> np.ndarray:
    """Decode a whole bslz4 frame into ``out`` (C-contiguous, writeable, any
    1/2/4/8-byte number type; elements of ``out.itemsize`` bytes) and return
    it. ``out`` holds garbage after a DecodeError."""
    op = "decode"
    dt = _any_type(out.dtype, op)
    if out.dtype.byteorder not in _NATIVE_ORDER:
        raise TypeError(f"{op}: out must be little-endian, not {out.dtype}")
    if not (out.flags.c_contiguous and out.flags.writeable):
        raise ValueError(f"{op}: out must be a C-contiguous, writeable array")
    _ready(elem_size, dt, op, what)
    data = _blob_array(blob)
    info = np.zeros(4, np.int64)
    _decode_into(data, out.reshape(-1).view(np.uint8), dt.itemsize, info)
    _check(info, op, dt, out.size, data.size, what)
    return out


def bslz4_decode_range(blob: Buffer, dtype: Any, first_elem: int, stop_elem: int, *,
                       nelems: Optional[int] = None, elem_size: int = 0,
                       what: str = "") -> np.ndarray:
    """Elements ``first_elem`` up to ``stop_elem`` (exclusive) of a bslz4
    frame of ``dtype`` as a new 1-D array; only the blocks covering them are
    decompressed (rows r0..r1 of a width-w image: ``r0 * w, (r1 + 1) * w``).
    ``nelems`` (the image's size) is checked against the header when given;
    a range outside the frame is a ValueError."""
    op = f"decode elements {first_elem}..{stop_elem} of"
    dt = _any_type(dtype, op)
    _ready(elem_size, dt, op, what)
    data = _blob_array(blob)
    size = _header_elems(data, dt, op, what) if nelems is None else int(nelems)
    first, stop = int(first_elem), int(stop_elem)
    if not 0 <= first <= stop <= size:
        raise ValueError(f"{_prefix(what)}cannot {op} a frame of {size} elements: the range "
                         "is not inside it")
    out = np.empty(stop - first, dt)
    info = np.zeros(4, np.int64)
    _decode_range(data, out.view(np.uint8), dt.itemsize, size, first, stop, info)
    _check(info, op, dt, size, data.size, what)
    return out


def bslz4_stats(blob: Buffer, dtype: Any, nelems: Optional[int] = None, *,
                elem_size: int = 0, what: str = "") -> Tuple[int, int, int]:
    """:func:`stats` (sum, maximum, masked pixels) of a bslz4 frame of
    ``dtype`` (uint8/16/32) without decoding it into memory; ``nelems`` (the
    image's size) is checked against the header when given."""
    op = "take the statistics of"
    dt = _frame_type(dtype, op)
    _ready(elem_size, dt, op, what)
    data = _blob_array(blob)
    size = _header_elems(data, dt, op, what) if nelems is None else int(nelems)
    info = np.zeros(4, np.int64)
    total, top, nmasked = _bslz4_stats(data, size, dt.type(_mask_at(dt)), dt.itemsize, info)
    _check(info, op, dt, size, data.size, what)
    return int(total), int(top), int(nmasked)


def bslz4_accumulate(total: np.ndarray, masked: np.ndarray, blob: Buffer, dtype: Any, *,
                     elem_size: int = 0, what: str = "") -> int:
    """:func:`accumulate` of a bslz4 frame of ``dtype`` (uint8/16/32, the
    shape of ``total``) without decoding it into memory: ``total += frame``,
    ``masked |= frame == type max``; returns the frame's masked pixels.
    Pixel for pixel the same as decoding, then :func:`accumulate`. After a
    DecodeError ``total`` and ``masked`` are as they were."""
    op = "accumulate"
    dt = _frame_type(dtype, op)
    if total.shape != masked.shape:
        raise ValueError(f"{op}: total {total.shape} and mask {masked.shape} differ")
    if total.dtype.kind != "u" or total.dtype.itemsize < dt.itemsize \
            or total.dtype.byteorder not in _NATIVE_ORDER:
        raise TypeError(f"{op}: a total of {total.dtype} cannot hold {dt} frames")
    if masked.dtype.itemsize != 1 or masked.dtype.kind not in "bu":
        raise TypeError(f"{op}: the mask must be bool, not {masked.dtype}")
    for array in (total, masked):
        if not (array.flags.c_contiguous and array.flags.writeable):
            raise ValueError(f"{op}: the total and the mask must be C-contiguous and writeable")
    _ready(elem_size, dt, op, what)
    data = _blob_array(blob)
    info = np.zeros(4, np.int64)
    nmasked = _bslz4_accumulate(total, masked.view(np.uint8), data, dt.type(_mask_at(dt)),
                                dt.itemsize, info)
    _check(info, op, dt, total.size, data.size, what)
    return int(nmasked)


def warm_up(image: np.ndarray) -> None:
    """Compile (or load) the kernels for ``image``'s pixel type."""
    if not BSLZ4_AVAILABLE:
        return
    blob = compress(image, "bslz4")
    total = np.zeros(image.shape, np.uint64 if image.dtype.itemsize > 2 else np.uint32)
    bslz4_accumulate(total, np.zeros(image.shape, bool), blob, image.dtype)
    bslz4_stats(blob, image.dtype)
    bslz4_decode_range(blob, image.dtype, 0, 1)
    bslz4_decode_into(blob, np.empty_like(image))
