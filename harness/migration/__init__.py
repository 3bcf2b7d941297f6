"""What both migration peers share: statuses and their legal transitions, capabilities and
parameters with QEMU 7.2's names, defaults and checks, and the peer process frame."""
