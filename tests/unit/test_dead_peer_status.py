"""A QEMU 7.2 destination whose load failed exits(1) before QMP can say `failed`."""

from harness.runner.outcome import dead_peer_status

FAILED_LOAD = ("qemu-system-x86_64: check_section_footer: Read section footer failed: -5\n"
               "qemu-system-x86_64: load of migration failed: Invalid argument")


def test_qemu_destination_whose_load_failed_ended_failed() -> None:
    assert dead_peer_status(True, "destination", "active", 1, FAILED_LOAD) == "failed"
    assert dead_peer_status(True, "destination", "setup", 1,
                            "qemu-system-x86_64: load of migration failed: "
                            "Input/output error") == "failed"


def test_other_deaths_keep_the_last_status() -> None:
    assert dead_peer_status(True, "destination", "active", -9, "") == "active"  # killed
    assert dead_peer_status(True, "destination", "active", 1, "some other error") == "active"
    assert dead_peer_status(False, "destination", "active", 1, FAILED_LOAD) == "active"
    assert dead_peer_status(True, "source", "active", 1, FAILED_LOAD) == "active"
    assert dead_peer_status(True, "destination", "postcopy-active", 1,
                            FAILED_LOAD) == "postcopy-active"
