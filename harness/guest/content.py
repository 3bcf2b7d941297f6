"""The page-content oracle: what every guest page holds, as a function of its version.

Strategy: a page's bytes are a pure function of (seed, block index, page, version), so
any process can regenerate, and check, any page without having seen it written -- the
"proof" half of the harness.  Everything works on batches of pages with numpy (no Python
object per page):

- version 0 (initial content): the page is all-zero with probability `1 - fill`
  (decided by a hash of (seed, block, page)); otherwise it holds its *base*: one of a
  seeded pool of 64 random pages, every 64-bit word XORed with a per-page key.  Pool
  pages have word 1 == ~word 0, so a base is never all-zero.  A `compressible` guest's
  pool pages each repeat one random KiB four times (zlib level 1 takes a page to about a
  third, as it does text): the per-page key keeps the repetition.
- version >= 1 (rewritten by the workload): never zero: the base, with a 256-byte window
  at offset `(version * 256) % 4096` replaced by bytes of (seed, block, page, version),
  then a 16-byte stamp at offset 0: a mixed 64-bit hash of (seed, block, page, version)
  and, little-endian, the page number (u32) and the version (u32).  Consecutive versions
  differ in a few hundred bytes (good material for XBZRLE).

`page_digests` is a 64-bit hash per page: a polynomial over the page's 512 words with
fixed odd multipliers (one integer matmul, wrapping mod 2**64), then a bijective mix.
A change of any single word is always detected (odd multipliers are invertible mod
2**64); other changes with probability 1 - 2**-64.  Big blocks are processed in chunks of
`CHUNK_PAGES` pages to bound temporaries.
"""

from __future__ import annotations

from functools import lru_cache

import numpy as np

from .memory import PAGE_SIZE, GuestMemory

WORDS = PAGE_SIZE // 8
POOL_PAGES = 64
WINDOW = 256
WINDOW_WORDS = WINDOW // 8
CHUNK_PAGES = 16384  # 64 MiB
REPEAT_WORDS = 128  # a compressible page repeats its first KiB

_MASK = (1 << 64) - 1
_GOLDEN = 0x9E3779B97F4A7C15
_U_GOLDEN = np.uint64(_GOLDEN)
_M1 = np.uint64(0xBF58476D1CE4E5B9)
_M2 = np.uint64(0x94D049BB133111EB)
_S30, _S27, _S31, _S32 = (np.uint64(s) for s in (30, 27, 31, 32))

# what each per-page hash is for (distinct salts make them independent)
_SALT_ZERO, _SALT_POOL, _SALT_KEY, _SALT_VERSION = 1, 2, 3, 4


def mix_int(x: int) -> int:
    """splitmix64's finaliser on a Python int (a bijection of 64-bit values)."""
    x &= _MASK
    x = ((x ^ (x >> 30)) * 0xBF58476D1CE4E5B9) & _MASK
    x = ((x ^ (x >> 27)) * 0x94D049BB133111EB) & _MASK
    return x ^ (x >> 31)


def mix64(x: np.ndarray) -> np.ndarray:
    """splitmix64's finaliser on a uint64 array (a new array; wraps mod 2**64)."""
    z = np.array(x, dtype=np.uint64, copy=True)
    z ^= z >> _S30
    z *= _M1
    z ^= z >> _S27
    z *= _M2
    z ^= z >> _S31
    return z


def _page_hash(seed: int, block_index: int, pages: np.ndarray, salt: int) -> np.ndarray:
    """An independent 64-bit hash of (seed, block, page) per page, for one `salt`."""
    const = mix_int(mix_int(seed * _GOLDEN + salt) ^ (block_index * 0xD6E8FEB86659FD93))
    return mix64(np.asarray(pages, dtype=np.uint64) ^ np.uint64(const))


@lru_cache(maxsize=16)
def _pool(seed: int, compressible: bool = False) -> np.ndarray:
    """64 random pages (as uint64 words) for `seed`; word 1 is ~word 0: never all-zero.
    `compressible`: each page is one random KiB four times."""
    rng = np.random.default_rng([seed & _MASK, 0x5EED])
    pool = np.frombuffer(rng.bytes(POOL_PAGES * PAGE_SIZE), dtype=np.uint64).reshape(
        POOL_PAGES, WORDS).copy()
    if compressible:
        pool = np.tile(pool[:, :REPEAT_WORDS], WORDS // REPEAT_WORDS)
    pool[:, 1] = ~pool[:, 0]
    pool.flags.writeable = False
    return pool


def nonzero_at_version0(seed: int, block_index: int, pages: np.ndarray,
                        fill: float) -> np.ndarray:
    """Whether each page holds its base (True) or zeros (False) at version 0."""
    if not 0.0 <= fill <= 1.0:
        raise ValueError(f"fill must be within [0, 1], got {fill}")
    u = (_page_hash(seed, block_index, pages, _SALT_ZERO) >> np.uint64(11)).astype(np.float64)
    return u * (1.0 / (1 << 53)) < fill


def _base(seed: int, block_index: int, pages: np.ndarray,
          out: np.ndarray | None = None, compressible: bool = False) -> np.ndarray:
    """The base content of `pages` as an (n, 512) uint64 array (into `out` if given)."""
    pick = (_page_hash(seed, block_index, pages, _SALT_POOL) % np.uint64(POOL_PAGES))
    out = np.take(_pool(seed, compressible), pick.astype(np.intp), axis=0, out=out)
    out ^= _page_hash(seed, block_index, pages, _SALT_KEY)[:, None]
    return out


def _version_hash(seed: int, block_index: int, pages: np.ndarray,
                  versions: np.ndarray) -> np.ndarray:
    h = _page_hash(seed, block_index, pages, _SALT_VERSION)
    return mix64(h ^ (np.asarray(versions, dtype=np.uint64) * _U_GOLDEN))


def _rewrite(words: np.ndarray, seed: int, block_index: int, pages: np.ndarray,
             versions: np.ndarray) -> None:
    """Overlay window and stamp of versions >= 1 on base content `words` (n, 512)."""
    if len(pages) == 0:
        return
    v = np.asarray(versions, dtype=np.uint64)
    hv = _version_hash(seed, block_index, pages, v)
    window = mix64(hv[:, None] + np.arange(1, WINDOW_WORDS + 1, dtype=np.uint64) * _U_GOLDEN)
    start = ((v * np.uint64(WINDOW)) % np.uint64(PAGE_SIZE) // np.uint64(8)).astype(np.intp)
    rows = np.arange(len(pages))[:, None]
    words[rows, start[:, None] + np.arange(WINDOW_WORDS)] = window
    words[:, 0] = hv
    words[:, 1] = (np.asarray(pages, dtype=np.uint64) & np.uint64(0xFFFFFFFF)) | (v << _S32)


def page_contents(seed: int, block_index: int, pages: np.ndarray, versions: np.ndarray,
                  fill: float, compressible: bool = False) -> np.ndarray:
    """What `pages` hold at `versions`, as an (n, 512) uint64 array."""
    pages = np.asarray(pages, dtype=np.int64)
    versions = np.broadcast_to(np.asarray(versions, dtype=np.int64), pages.shape)
    words = _base(seed, block_index, pages, compressible=compressible)
    rewritten = versions > 0
    if rewritten.all():  # the workload's case: no masking, no copies
        _rewrite(words, seed, block_index, pages, versions)
        return words
    if rewritten.any():
        sub = words[rewritten]
        _rewrite(sub, seed, block_index, pages[rewritten], versions[rewritten])
        words[rewritten] = sub
    zero = ~rewritten & ~nonzero_at_version0(seed, block_index, pages, fill)
    words[zero] = 0
    return words


def as_pages(mem_block: np.ndarray) -> np.ndarray:
    """A block's RAM (uint8, length a multiple of 4 KiB) as an (npages, 512) uint64 view."""
    if mem_block.size % PAGE_SIZE:
        raise ValueError(f"block of {mem_block.size} bytes is not a whole number of pages")
    return mem_block.view(np.uint64).reshape(-1, WORDS)


def write_pages(mem_block: np.ndarray, seed: int, block_index: int, pages: np.ndarray,
                versions: np.ndarray, fill: float, compressible: bool = False) -> None:
    """Write the content of `pages` at `versions` into the block (pages must be unique)."""
    pages = np.asarray(pages, dtype=np.int64)
    versions = np.broadcast_to(np.asarray(versions, dtype=np.int64), pages.shape)
    words = as_pages(mem_block)
    for lo in range(0, len(pages), CHUNK_PAGES):
        p = pages[lo:lo + CHUNK_PAGES]
        words[p] = page_contents(seed, block_index, p, versions[lo:lo + CHUNK_PAGES], fill,
                                 compressible)


def initial_fill(memory: GuestMemory, seed: int, fill: float, compressible: bool = False
                 ) -> int:
    """Write version-0 content of every block; only non-zero pages are touched.

    Returns the number of pages written.  A fresh segment is zeroed, so zero pages are
    left alone and stay unallocated; chunks with no zero page are pre-faulted in one
    syscall and generated in place.
    """
    written = 0
    for index, spec in enumerate(memory.blocks):
        words = as_pages(memory.ram[spec.name])
        for lo in range(0, spec.pages, CHUNK_PAGES):
            hi = min(lo + CHUNK_PAGES, spec.pages)
            pages = np.arange(lo, hi, dtype=np.int64)
            pages = pages[nonzero_at_version0(seed, index, pages, fill)]
            if len(pages) == hi - lo:
                memory.populate(index, lo, hi)
                _base(seed, index, pages, words[lo:hi], compressible)  # dense: no temporary
            elif len(pages):
                words[pages] = _base(seed, index, pages, compressible=compressible)
            written += len(pages)
    return written


def initial_content_array(size: int, seed: int, fill: float,
                          block_index: int = 0, compressible: bool = False) -> np.ndarray:
    """Version-0 content of a block of `size` bytes as a new uint8 array (e.g. to load
    into a real QEMU, whose RAM must then equal a harness guest's block `block_index`)."""
    if size < 0 or size % PAGE_SIZE:
        raise ValueError(f"size must be a multiple of {PAGE_SIZE}, got {size}")
    out = np.zeros(size, dtype=np.uint8)  # calloc: zero pages cost nothing
    words = as_pages(out)
    for lo in range(0, len(words), CHUNK_PAGES):
        pages = np.arange(lo, min(lo + CHUNK_PAGES, len(words)), dtype=np.int64)
        pages = pages[nonzero_at_version0(seed, block_index, pages, fill)]
        if len(pages):
            words[pages] = _base(seed, block_index, pages, compressible=compressible)
    return out


@lru_cache(maxsize=1)
def _digest_multipliers() -> np.ndarray:
    rng = np.random.default_rng(0xD16E57)
    m = np.frombuffer(rng.bytes(PAGE_SIZE), dtype=np.uint64).copy()
    m |= np.uint64(1)
    m.flags.writeable = False
    return m


def _digest_words(words: np.ndarray) -> np.ndarray:
    return mix64(np.einsum("ij,j->i", words, _digest_multipliers()))


def _rows(words: np.ndarray, lo: int, hi: int, backed: np.ndarray | None) -> np.ndarray:
    """Pages [lo, hi) as words, reading only backed pages (holes are zero pages)."""
    if backed is None or backed[lo:hi].all():
        return words[lo:hi]
    out = np.zeros((hi - lo, WORDS), dtype=np.uint64)
    sel = np.flatnonzero(backed[lo:hi])
    out[sel] = words[lo + sel]
    return out


def page_digests(mem_block: np.ndarray, backed: np.ndarray | None = None) -> np.ndarray:
    """A 64-bit digest per page of a block (uint64 array, one per page).

    `backed` (bool per page, `GuestMemory.backed_pages`) lets holes of a sparse segment
    be taken as zero pages without reading -- and so allocating -- them.
    """
    words = as_pages(mem_block)
    out = np.empty(len(words), dtype=np.uint64)
    for lo in range(0, len(words), CHUNK_PAGES):
        hi = min(lo + CHUNK_PAGES, len(words))
        out[lo:hi] = _digest_words(_rows(words, lo, hi, backed))
    return out


def expected_digests(seed: int, block_index: int, versions: np.ndarray,
                     fill: float, compressible: bool = False) -> np.ndarray:
    """The digests pages 0..len(versions)-1 of a block must have at `versions`."""
    versions = np.asarray(versions)
    out = np.empty(len(versions), dtype=np.uint64)
    for lo in range(0, len(versions), CHUNK_PAGES):
        hi = min(lo + CHUNK_PAGES, len(versions))
        pages = np.arange(lo, hi, dtype=np.int64)
        out[lo:hi] = _digest_words(page_contents(seed, block_index, pages, versions[lo:hi],
                                                 fill, compressible))
    return out


def mismatched_pages(mem_block: np.ndarray, seed: int, block_index: int,
                     versions: np.ndarray, fill: float,
                     backed: np.ndarray | None = None, compressible: bool = False
                     ) -> np.ndarray:
    """Pages of the block whose bytes differ from the oracle for their version (int64).

    `backed` as for `page_digests`.
    """
    words = as_pages(mem_block)
    versions = np.asarray(versions)
    if len(versions) != len(words):
        raise ValueError(f"{len(versions)} versions for a block of {len(words)} pages")
    bad = []
    for lo in range(0, len(words), CHUNK_PAGES):
        hi = min(lo + CHUNK_PAGES, len(words))
        pages = np.arange(lo, hi, dtype=np.int64)
        expect = page_contents(seed, block_index, pages, versions[lo:hi], fill, compressible)
        bad.append(pages[(_rows(words, lo, hi, backed) != expect).any(axis=1)])
    return np.concatenate(bad) if bad else np.empty(0, dtype=np.int64)
