"""Re-encode a decoded stream from its events.

Strategy: walk the events in order and write each with the encoder that produced its kind
(header, configuration, section framing, RAM records from the RAM the decoder filled,
device state through vmstate with the same description, commands, PACKAGED blobs, EOF)
and regenerate the VM description trailer from the devices written instead of copying
it.  Decoding then replaying a QEMU stream giving the same bytes is the proof that both
directions of the codec are byte-exact.  Pages are taken from the final RAM, so a page
sent twice with different contents (a live stream) cannot be replayed exactly; XBZRLE and
compressed records cannot be replayed at all (their payload is not kept).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping

import numpy as np

from .commands import Command
from .constants import RamFlag, SectionType
from .encoder import StreamEncoder
from .errors import LocalProtocolError
from .events import (
    Configuration,
    DeviceState,
    EndOfStream,
    Event,
    RamEos,
    RamMemSize,
    RamPages,
    SectionFooter,
    SectionHeader,
    StreamHeader,
    VmDescription,
)
from .ram_saver import EOS, PAGE, encode_mem_size
from .vmstate import DeviceDescription, save_state, vmdesc_entry


def replay(events: Iterable[Event], ram: Mapping[str, np.ndarray],
           devices: Iterable[DeviceDescription]) -> bytes:
    known = {(d.idstr, d.instance_id): d for d in devices}
    enc = StreamEncoder()
    out = bytearray()
    for ev in events:
        if isinstance(ev, StreamHeader):
            out += enc.header()
        elif isinstance(ev, Configuration):
            out += enc.configuration(ev.machine, ev.capabilities, ev.uuid, ev.target_page_bits)
        elif isinstance(ev, SectionHeader):
            out += enc.section_header(ev.type, ev.section_id, ev.idstr, ev.instance_id,
                                      ev.version_id)
        elif isinstance(ev, RamMemSize):
            out += encode_mem_size(ev.blocks)
        elif isinstance(ev, RamPages):
            _replay_pages(enc, out, ev, ram[ev.block])
        elif isinstance(ev, RamEos):
            out += EOS
        elif isinstance(ev, SectionFooter):
            if ev.has_footer:
                out += bytes((SectionType.SECTION_FOOTER,)) + ev.section_id.to_bytes(4, "big")
        elif isinstance(ev, DeviceState):
            _replay_device(enc, out, ev, known)
        elif isinstance(ev, Command):
            out += enc.command(ev)
        elif isinstance(ev, EndOfStream):
            out += enc.eof()
        elif isinstance(ev, VmDescription):
            out += enc.vmdesc()
    return bytes(out)


def _replay_pages(enc: StreamEncoder, out: bytearray, ev: RamPages, mem: np.ndarray) -> None:
    view = mem.data.cast("B")
    for addr, kind in zip(ev.offsets.tolist(), ev.kinds.tolist()):
        if kind == RamFlag.ZERO:
            enc.ram.save_zero_page(out, ev.block, addr)
        elif kind == RamFlag.PAGE:
            enc.ram.save_page(out, ev.block, addr, view[addr:addr + PAGE])
        else:
            raise LocalProtocolError(f"cannot replay a {RamFlag(kind).name} record at "
                                     f"{ev.block}:0x{addr:x} (its payload is not kept)")


def _replay_device(enc: StreamEncoder, out: bytearray, ev: DeviceState,
                   known: Mapping[tuple[str, int], DeviceDescription]) -> None:
    dev = known.get((ev.idstr, ev.instance_id))
    if dev is None or ev.state is None:
        raise LocalProtocolError(f"no description to replay device '{ev.idstr}'")
    desc = save_state(dev.vmsd, ev.state, out, ev.version_id)
    enc._described.append(vmdesc_entry(ev.idstr, ev.instance_id, desc))
