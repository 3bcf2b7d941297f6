"""migration-harness: test QEMU live migration with real processes and QEMU 7.2's wire format."""

__version__ = "0.1.0"
