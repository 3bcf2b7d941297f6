"""XBZRLE page deltas and their small ULEB128 integers.

Strategy: mirror the byte format of QEMU's `migration/xbzrle.c` and `util/cutils.c`
(uleb128_*_small) exactly, including where the encoder declares overflow, so a page we
encode is the page QEMU would encode.  Run boundaries are found with numpy over the XOR
of the two pages (one vector pass per page); the output is built from the runs.
"""

from __future__ import annotations

import numpy as np

__all__ = ["XbzrleError", "decode", "encode", "uleb128_decode_small", "uleb128_encode_small"]


class XbzrleError(ValueError):
    """A delta that QEMU's decoder would reject."""


def uleb128_encode_small(value: int) -> bytes:
    """util/cutils.c: one byte below 0x80, two bytes up to 0x3fff."""
    if value < 0x80:
        return bytes((value,))
    if value > 0x3FFF:
        raise ValueError(f"uleb128 small value too large: {value}")
    return bytes(((value & 0x7F) | 0x80, value >> 7))


def uleb128_decode_small(buf: bytes | memoryview, pos: int) -> tuple[int, int]:
    """Return (value, bytes used); raise XbzrleError past 14 bits."""
    b0 = buf[pos]
    if not b0 & 0x80:
        return b0, 1
    b1 = buf[pos + 1]
    if b1 & 0x80:
        raise XbzrleError("uleb128 value exceeds 14 bits")
    return (b0 & 0x7F) | (b1 << 7), 2


def encode(old: bytes | memoryview | np.ndarray, new: bytes | memoryview | np.ndarray,
           dlen: int | None = None) -> bytes | None:
    """Encode `new` against `old`; b"" when equal, None on overflow (send a normal page).

    QEMU's encoder checks for room before each zero-run varint and before each non-zero
    run varint ("fewer than 2 bytes left") and before each data copy; a trailing zero run
    is not written (migration/xbzrle.c: xbzrle_encode_buffer).
    """
    a = np.frombuffer(old, dtype=np.uint8) if not isinstance(old, np.ndarray) else old
    b = np.frombuffer(new, dtype=np.uint8) if not isinstance(new, np.ndarray) else new
    slen = b.size
    dlen = slen if dlen is None else dlen
    diff = a != b
    if not diff.any():
        return b""
    edges = np.flatnonzero(np.diff(diff.view(np.int8))) + 1
    bounds = np.concatenate(([0], edges, [slen])).tolist()
    runs_start_diff = bool(diff[0])
    out = bytearray()
    raw = b.tobytes() if not isinstance(new, (bytes, bytearray)) else new
    k = 0
    # runs alternate: zero run (equal bytes) then non-zero run
    if runs_start_diff:
        bounds = [0, *bounds]  # an empty leading zero run
    while k + 1 < len(bounds):
        if len(out) + 2 > dlen:
            return None
        zs, ze = bounds[k], bounds[k + 1]
        if ze == slen:
            break  # trailing zero run is not written
        out += uleb128_encode_small(ze - zs)
        if len(out) + 2 > dlen:
            return None
        ns, ne = bounds[k + 1], bounds[k + 2]
        out += uleb128_encode_small(ne - ns)
        if len(out) + (ne - ns) > dlen:
            return None
        out += raw[ns:ne]
        k += 2
    return bytes(out)


def decode(src: bytes | memoryview, dst: memoryview | bytearray | np.ndarray) -> int:
    """Apply delta `src` onto page `dst` in place; return the bytes of dst covered.

    Bytes under zero runs are left as they are (migration/xbzrle.c: xbzrle_decode_buffer).
    """
    slen = len(src)
    dlen = len(dst)
    i = d = 0
    while i < slen:
        if slen - i < 2:
            raise XbzrleError("truncated zero-run length")
        count, used = uleb128_decode_small(src, i)
        if i and not count:
            raise XbzrleError("empty zero run after the first")
        i += used
        d += count
        if d > dlen:
            raise XbzrleError("zero run past the end of the page")
        if slen - i < 2:
            raise XbzrleError("truncated non-zero-run length")
        count, used = uleb128_decode_small(src, i)
        if not count:
            raise XbzrleError("empty non-zero run")
        i += used
        if d + count > dlen or i + count > slen:
            raise XbzrleError("non-zero run past the end of the page or the data")
        dst[d:d + count] = src[i:i + count]
        d += count
        i += count
    return d
