"""`info migrate` text from query-migrate replies: the convergence features' lines.

Strategy: the lines and their order are QEMU 7.2's `hmp_info_migrate` (monitor/hmp-cmds.c):
xbzrle, then compression, then the cpu throttle; sizes in kbytes (>> 10), rates with two
decimals.  The reply is shaped as our source's query-migrate answers it.
"""

from __future__ import annotations

from harness.monitor.hmp import format_info_migrate


def reply(**extra):
    return {"status": "active", "total-time": 1234, "expected-downtime": 300,
            "setup-time": 2, **extra}


def test_compression_lines_follow_xbzrle_and_precede_the_throttle():
    lines = format_info_migrate(reply(
        **{"xbzrle-cache": {"cache-size": 67108864, "bytes": 5 << 10, "pages": 7,
                            "cache-miss": 3, "cache-miss-rate": 0.25,
                            "encoding-rate": 12.5, "overflow": 1},
           "compression": {"pages": 4096, "busy": 2, "busy-rate": 0.125,
                           "compressed-size": 3 << 20, "compression-rate": 5.333},
           "cpu-throttle-percentage": 30}))
    start = lines.index("cache size: 67108864 bytes")
    assert lines[start:] == [
        "cache size: 67108864 bytes",
        "xbzrle transferred: 5 kbytes",
        "xbzrle pages: 7 pages",
        "xbzrle cache miss: 3 pages",
        "xbzrle cache miss rate: 0.25",
        "xbzrle encoding rate: 12.50",
        "xbzrle overflow: 1",
        "compression pages: 4096 pages",
        "compression busy: 2",
        "compression busy rate: 0.12",
        "compressed size: 3072 kbytes",
        "compression rate: 5.33",
        "cpu throttle percentage: 30",
    ]


def test_no_compression_lines_without_compression():
    assert not [line for line in format_info_migrate(reply()) if "compress" in line]
