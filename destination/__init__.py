"""The incoming side of a migration: QEMU's incoming listener and loadvm."""
