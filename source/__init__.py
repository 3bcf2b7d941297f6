"""The outgoing side of a migration: QEMU's `qmp_migrate`, migration thread and RAM saving."""
