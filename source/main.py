"""`harness source`: a peer process that owns a running guest and migrates it out.

Strategy: the common peer frame (`harness.migration.peer`) plus QEMU's outgoing commands:
`migrate` (qmp_migrate, asynchronous: it returns once the migration thread started; with
`resume: true` it wakes a postcopy-paused migration to recover on the new URI),
`migrate-pause` (postcopy-active only, as in 7.2), `migrate_cancel` (always succeeds, as
in QEMU), `migrate-continue` (out of pre-switchover) and `query-migrate`.  `migrate`'s
`blk`/`inc` turn block migration on for that migration only (source/block_save.py).  The
guest starts running at once unless the peer was started paused (QEMU's `-S`: runstate
prelaunch).
"""

from __future__ import annotations

from typing import Any

from harness.control import CommandError
from harness.migration.peer import Peer, PeerOptions, record_dir
from harness.migration.status import continue_state
from harness.transport import connect, parse_uri

from .migration import MigrationError, OutgoingMigration


def run(options: PeerOptions) -> int:
    peer = Peer(options)
    fds = options.fds

    def connector(uri: str, timeout: float) -> Any:
        return_path = peer.config.cap("return-path") or peer.config.cap("postcopy-ram")
        parsed = parse_uri(uri, "source", fds=fds)
        channel = connect(parsed, timeout=timeout, fds=fds, return_path=return_path)
        # every channel (main, preempt, multifd) gets its own handshake here (T6)
        return peer.tls.client_channel(channel, parsed, peer.config.parameters, timeout)

    migration = OutgoingMigration(peer.guest, peer.config, connector, peer.emit)
    peer.migration = migration

    def migrate(args: dict[str, Any]) -> dict[str, Any]:
        uri = args.get("uri")
        if not isinstance(uri, str):
            raise CommandError("GenericError", "Parameter 'uri' is missing")
        for name in ("blk", "inc"):
            if not isinstance(args.get(name, False), bool):
                raise CommandError("GenericError",
                                   f"Invalid parameter type for '{name}', expected: boolean")
        try:
            if args.get("resume"):
                migration.resume(uri)
            else:
                migration.migrate(uri, blk=bool(args.get("blk")), inc=bool(args.get("inc")))
        except MigrationError as err:
            raise CommandError("GenericError", str(err)) from None
        return {}

    def pause(_: dict[str, Any]) -> dict[str, Any]:
        try:
            migration.pause()
        except MigrationError as err:
            raise CommandError("GenericError", str(err)) from None
        return {}

    def cancel(_: dict[str, Any]) -> dict[str, Any]:
        migration.cancel()
        return {}

    def migrate_continue(args: dict[str, Any]) -> dict[str, Any]:
        try:
            migration.migrate_continue(continue_state(args))
        except MigrationError as err:
            raise CommandError("GenericError", str(err)) from None
        return {}

    def start_postcopy(_: dict[str, Any]) -> dict[str, Any]:
        try:
            migration.start_postcopy()
        except MigrationError as err:
            raise CommandError("GenericError", str(err)) from None
        return {}

    def record(args: dict[str, Any]) -> dict[str, Any]:
        """Save the return path as it arrives (stream.rp.bin)."""
        migration.record_dir = record_dir(args)
        return {}

    peer.register("migrate", migrate)
    peer.register("x-record", record)
    peer.register("migrate-start-postcopy", start_postcopy)
    peer.register("migrate_cancel", cancel)
    peer.register("migrate-pause", pause)
    peer.register("migrate-continue", migrate_continue)
    if options.autostart:
        peer.guest.start()
    else:
        peer.guest.runstate = "prelaunch"
    return peer.run()
