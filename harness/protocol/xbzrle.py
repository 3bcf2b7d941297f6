"""XBZRLE page deltas and their small ULEB128 integers.

Strategy: mirror the byte format of QEMU's `migration/xbzrle.c` and `util/cutils.c`
(uleb128_*_small) exactly, including where the encoder declares overflow, so a page we
encode is the page QEMU would encode.  Run boundaries are found with numpy over the XOR
of the two pages (one vector pass per page); the output is built from the runs.
`encode_pages` does a whole batch of pages (a source's XBZRLE cache hits) in one numpy
pass, with no Python loop per byte or per run, and gives the same bytes as `encode`.
"""

from __future__ import annotations

from itertools import pairwise

import numpy as np

from harness.errors import ProtocolFailure

__all__ = ["XbzrleError", "decode", "encode", "encode_pages", "uleb128_decode_small",
           "uleb128_encode_small"]


class XbzrleError(ProtocolFailure, ValueError):
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


def encode_pages(old: np.ndarray, new: np.ndarray, dlen: int | None = None
                 ) -> list[bytes | None]:
    """`encode` for k pages at once: `old` and `new` are (k, page) uint8 arrays.

    One numpy pass finds every run of every page (no Python loop per byte or per run):
    run starts and ends are the +1 / -1 steps of the padded difference mask.  Whether a
    page overflows follows from its total: QEMU's checks (2 bytes free before each
    varint, room for each run's data) all fail exactly when the bytes written so far
    exceed `dlen`, or when an unchanged tail remains and fewer than 2 bytes are left
    for its (never written) zero run.  Pages that fit are then assembled together: the
    varints written with fancy indexing, the changed bytes (`new` under the mask, which
    is every run's bytes in order) scattered behind them.
    """
    k, slen = new.shape
    dlen = slen if dlen is None else dlen
    if old.shape != new.shape:
        raise ValueError(f"pages of shapes {old.shape} and {new.shape}")
    diff = old != new
    changed = diff.view(np.uint8).sum(axis=1, dtype=np.int64)
    # every changed byte is written, plus at least two varint bytes: past this, overflow
    todo = np.flatnonzero((changed > 0) & (changed + 2 <= dlen))
    run_page, run_start, run_end = _runs(diff if todo.size == k else diff[todo])
    run_page = todo[run_page]
    nruns = np.bincount(run_page, minlength=k)
    first = np.ones(run_page.size, dtype=bool)
    first[1:] = run_page[1:] != run_page[:-1]
    prev_end = np.concatenate(([0], run_end[:-1]))
    prev_end[first] = 0
    zrun = run_start - prev_end
    nzrun = run_end - run_start
    vz = 1 + (zrun >= 0x80)
    vn = 1 + (nzrun >= 0x80)
    size = vz + vn + nzrun
    total = np.bincount(run_page, weights=size, minlength=k).astype(np.int64)
    last = np.cumsum(nruns) - 1
    tail = np.zeros(k, dtype=bool)
    has = nruns > 0
    tail[has] = run_end[last[has]] < slen
    fits = has & (total <= dlen) & ~(tail & (total + 2 > dlen))
    out: list[bytes | None] = [None if c else b"" for c in changed.tolist()]
    if fits.any():
        keep = fits[run_page]
        rows = np.flatnonzero(fits)
        # the changed bytes, run after run, page after page
        data = new[diff] if rows.size == k else new[rows][diff[rows]]
        pages_data = _assemble(data, run_page[keep], zrun[keep], nzrun[keep], vz[keep],
                               vn[keep], size[keep])
        for index, delta in zip(rows.tolist(), pages_data):
            out[index] = delta
    return out


def _runs(diff: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(page, start, end) of every run of differing bytes, in page order: the edges of
    the mask (a byte differing from its left neighbour, the page's ends counting as
    equal bytes) alternate start, end within each page."""
    k, slen = diff.shape
    edges = np.empty((k, slen + 1), dtype=bool)
    edges[:, 0] = diff[:, 0]
    edges[:, slen] = diff[:, slen - 1]
    np.not_equal(diff[:, 1:], diff[:, :-1], out=edges[:, 1:slen])
    flat = np.flatnonzero(edges)
    page, pos = np.divmod(flat, slen + 1)
    return page[0::2], pos[0::2], pos[1::2]


def _assemble(data: np.ndarray, page: np.ndarray, zrun: np.ndarray, nzrun: np.ndarray,
              vz: np.ndarray, vn: np.ndarray, size: np.ndarray) -> list[bytes]:
    """The encoded bytes of every page owning the given runs (runs in page order);
    `data` holds the runs' changed bytes one after the other."""
    at = np.cumsum(size) - size  # where each run's zero-run varint goes
    buf = np.empty(int(size.sum()), dtype=np.uint8)
    _put_varints(buf, at, zrun, vz)
    _put_varints(buf, at + vz, nzrun, vn)
    shift = np.zeros(data.size, dtype=np.int64)  # varint bytes before each changed byte
    shift[np.cumsum(nzrun) - nzrun] = vz + vn
    buf[np.arange(data.size) + np.cumsum(shift)] = data
    bounds = np.flatnonzero(np.diff(page, prepend=-1, append=-1)).tolist()
    edges = np.append(at, buf.size)[bounds].tolist()
    raw = buf.tobytes()
    return [raw[a:b] for a, b in pairwise(edges)]


def _put_varints(buf: np.ndarray, at: np.ndarray, value: np.ndarray, width: np.ndarray) -> None:
    """util/cutils.c: uleb128_encode_small for many values (one or two bytes each)."""
    one = width == 1
    buf[at[one]] = value[one]
    two = ~one
    buf[at[two]] = (value[two] & 0x7F) | 0x80
    buf[at[two] + 1] = value[two] >> 7
