"""`harness destination`: a peer process that receives a guest.

Strategy: the common peer frame (`harness.migration.peer`) plus QEMU's incoming commands:
`migrate-incoming URI` (only when started with `--incoming defer`, as QEMU's
`-incoming defer`), or listening at once when started with `--incoming URI`.  The guest
memory starts zeroed; it runs only after a complete load (QEMU's autostart, off with
`--paused`) -- or, in postcopy, from POSTCOPY_RUN.  `x-query-devices` lists the device
sections loaded (kept as they came: `--layout`'s devices, harness.guest.machine).
Postcopy recovery: `migrate-recover URI` (only when postcopy is paused) listens for the
source's new connection, and `migrate-pause` (postcopy-active only, as in 7.2) breaks the channel on purpose.
"""

from __future__ import annotations

from typing import Any

from harness.control import CommandError
from harness.migration.peer import Peer, PeerOptions, PeerStartError, record_dir
from harness.migration.status import continue_refusal, continue_state
from harness.transport import TransportError, listen, parse_uri
from harness.transport.tls import TlsListener

from .incoming import IncomingError, IncomingMigration


def run(options: PeerOptions) -> int:
    peer = Peer(options)
    fds = options.fds

    def listener(uri: str) -> Any:
        return_path = peer.config.cap("return-path") or peer.config.cap("postcopy-ram")
        listener = listen(parse_uri(uri, "destination", fds=fds), fds=fds,
                          return_path=return_path)
        # each accepted connection is TLS-wrapped before its role is decided (T6)
        return TlsListener(listener, peer.tls, lambda: peer.config.parameters)

    incoming = IncomingMigration(peer.guest, peer.config, listener, peer.emit,
                                 autostart=options.autostart)
    peer.migration = incoming
    peer.guest.runstate = "inmigrate" if options.incoming else "prelaunch"

    def migrate_incoming(args: dict[str, Any]) -> dict[str, Any]:
        uri = args.get("uri")
        if not isinstance(uri, str):
            raise CommandError("GenericError", "Parameter 'uri' is missing")
        if options.incoming != "defer":
            raise CommandError("GenericError", "'-incoming' was not specified on the command "
                                               "line" if not options.incoming else
                               "The incoming migration has already been started")
        try:
            incoming.migrate_incoming(uri)
        except IncomingError as err:
            raise CommandError("GenericError", str(err)) from None
        return {}

    def migrate_recover(args: dict[str, Any]) -> dict[str, Any]:
        uri = args.get("uri")
        if not isinstance(uri, str):
            raise CommandError("GenericError", "Parameter 'uri' is missing")
        try:
            incoming.migrate_recover(uri)
        except IncomingError as err:
            raise CommandError("GenericError", str(err)) from None
        return {}

    def pause(_: dict[str, Any]) -> dict[str, Any]:
        try:
            incoming.pause()
        except IncomingError as err:
            raise CommandError("GenericError", str(err)) from None
        return {}

    def migrate_continue(args: dict[str, Any]) -> dict[str, Any]:
        """qmp_migrate_continue: a destination's outgoing migration is always `none`."""
        refusal = continue_refusal(continue_state(args), "none")
        if refusal:
            raise CommandError("GenericError", refusal)
        return {}

    def record(args: dict[str, Any]) -> dict[str, Any]:
        """Save the incoming stream (stream.fwd.bin) and, unless `return-path` is false
        (the source records it), the return path (stream.rp.bin)."""
        incoming.record_dir = record_dir(args)
        incoming.record_return_path = bool(args.get("return-path", True))
        return {}

    def snapshot(args: dict[str, Any]) -> dict[str, Any]:
        incoming.snapshot = bool(args.get("enable", True))
        return {}

    peer.register("migrate-incoming", migrate_incoming)
    peer.register("migrate-recover", migrate_recover)
    peer.register("migrate-pause", pause)
    peer.register("migrate-continue", migrate_continue)
    def query_devices(_: dict[str, Any]) -> dict[str, Any]:
        """The device sections loaded so far, values kept (a layout guest's devices)."""
        state = peer.guest.device_state
        return {"machine": peer.guest.machine, "described": len(peer.guest.devices),
                "loaded": len(state),
                "sections": [{"idstr": idstr, "instance-id": inst, "fields": len(values)}
                             for (idstr, inst), values in state.items()]}

    peer.register("x-incoming-snapshot", snapshot)
    peer.register("x-query-devices", query_devices)
    peer.register("x-record", record)
    if options.incoming and options.incoming != "defer":
        _listen_at_start(peer, incoming, options.incoming)
    return peer.run()


def _listen_at_start(peer: Peer, incoming: IncomingMigration, uri: str) -> None:
    """`--incoming URI`: listen now, and say where (the port after port 0); a URI that
    cannot be listened on ends the peer before it serves (PeerStartError, one line)."""
    try:
        incoming.migrate_incoming(uri)
    except (IncomingError, TransportError, OSError) as err:
        peer.close()
        reason = str(err).removesuffix(f" ({uri})")
        raise PeerStartError(f"--incoming {uri}: {reason}") from None
    for address in incoming.socket_address or ():
        if address.get("type") == "unix":
            peer.listening.append(("incoming", f"unix:{address.get('path')}"))
        else:
            host = str(address.get("host"))
            host = f"[{host}]" if ":" in host else host
            peer.listening.append(("incoming", f"tcp:{host}:{address.get('port')}"))
    if not incoming.socket_address:
        peer.listening.append(("incoming", uri))
