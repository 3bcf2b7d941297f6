"""`harness.transport.uri` and `parse_fd_args`: what is accepted, and the exact words of
every refusal (QEMU 7.2's where QEMU has words: checked against qemu-system-x86_64 7.2).

Strategy: tables of (uri, role) -> expected MigrationUri or expected message, so one
line per case; a hypothesis round trip for `str(parse_uri(x)) == x` on tcp URIs.  No
sockets or processes; `parse_fd_args` needs open fds, so it uses a pipe.
"""

from __future__ import annotations

import os
from collections.abc import Iterator

import pytest
from hypothesis import given
from hypothesis import strategies as st

from harness.transport import MigrationUri, UriError, parse_fd_args, parse_uri
from harness.transport.uri import check_fd_name

SRC_INVALID = "Parameter 'uri' expects a valid migration protocol"
RDMA = "RDMA is not supported by this harness (rdma: URIs need RDMA hardware)"

VALID = [
    ("tcp:127.0.0.1:4444", "source", MigrationUri("tcp", host="127.0.0.1", port=4444)),
    ("tcp:localhost:1", "source", MigrationUri("tcp", host="localhost", port=1)),
    ("tcp:[::1]:65535", "source", MigrationUri("tcp", host="::1", port=65535)),
    ("tcp:127.0.0.1:0", "destination", MigrationUri("tcp", host="127.0.0.1", port=0)),
    ("tcp:[::]:0", "destination", MigrationUri("tcp", host="::", port=0)),
    ("tcp::4444", "destination", MigrationUri("tcp", host="", port=4444)),
    ("unix:/tmp/m.sock", "source", MigrationUri("unix", path="/tmp/m.sock")),
    ("unix:rel/m.sock", "destination", MigrationUri("unix", path="rel/m.sock")),
    ("exec:cat > /tmp/f", "source", MigrationUri("exec", command="cat > /tmp/f")),
    ("exec:cat /tmp/f", "destination", MigrationUri("exec", command="cat /tmp/f")),
    ("exec:a:b", "source", MigrationUri("exec", command="a:b")),
    ("fd:mig", "source", MigrationUri("fd", name="mig")),
    ("fd:3", "destination", MigrationUri("fd", name="3")),
    ("file:/tmp/stream.bin", "source", MigrationUri("file", path="/tmp/stream.bin")),
    ("file:/tmp/stream.bin", "destination", MigrationUri("file", path="/tmp/stream.bin")),
]


@pytest.mark.parametrize(("uri", "role", "expected"), VALID, ids=[f"{r}-{u}" for u, r, _ in VALID])
def test_valid_uris_parse_and_print_back(uri, role, expected):
    parsed = parse_uri(uri, role)
    assert parsed == expected
    assert str(parsed) == uri


BOTH = ("source", "destination")
INVALID = [
    # unknown protocol: QEMU's two messages (migration.c: qmp_migrate / qemu_start_incoming)
    ("foo:bar", "source", SRC_INVALID),
    ("foo:bar", "destination", "unknown migration protocol: foo:bar"),
    ("", "source", SRC_INVALID),
    ("", "destination", "unknown migration protocol: "),
    ("tcp", "source", SRC_INVALID),
    ("TCP:127.0.0.1:1", "source", SRC_INVALID),
    ("TCP:127.0.0.1:1", "destination", "unknown migration protocol: TCP:127.0.0.1:1"),
    # malformed: QEMU's words first, then what was wrong
    ("tcp:nohost", "source", f"{SRC_INVALID} (tcp:nohost: expected tcp:HOST:PORT)"),
    ("tcp:nohost", "destination",
     "unknown migration protocol: tcp:nohost (expected tcp:HOST:PORT)"),
    ("tcp:::1:5", "source",
     f"{SRC_INVALID} (tcp:::1:5: an IPv6 address needs brackets: tcp:[::1]:PORT)"),
    ("tcp:[::1:5", "source", f"{SRC_INVALID} (tcp:[::1:5: expected tcp:[IPV6-ADDRESS]:PORT)"),
    ("tcp:[foo]:5", "destination",
     "unknown migration protocol: tcp:[foo]:5 ('foo' is not an IPv6 address)"),
    ("tcp::5", "source", f"{SRC_INVALID} (tcp::5: the source needs a host to connect to)"),
    ("tcp:a b:5", "source", f"{SRC_INVALID} (tcp:a b:5: 'a b' is not a host name or address)"),
    ("unix:", "destination", "unknown migration protocol: unix: (expected unix:PATH)"),
    ("exec:", "source", f"{SRC_INVALID} (exec:: expected exec:SHELL-COMMAND)"),
    ("exec:   ", "destination",
     "unknown migration protocol: exec:    (expected exec:SHELL-COMMAND)"),
    ("fd:", "source", f"{SRC_INVALID} (fd:: expected fd:NAME, a name given with --fd NAME=FD)"),
    ("fd:a b", "destination",
     "unknown migration protocol: fd:a b (expected fd:NAME, a name given with --fd NAME=FD)"),
    ("file:", "source", f"{SRC_INVALID} (file:: expected file:PATH)"),
    # ports: a message naming the port
    ("tcp:127.0.0.1:99999", "destination", ("invalid port '99999' in migration URI "
     "'tcp:127.0.0.1:99999': expected a number from 1 to 65535")),
    ("tcp:127.0.0.1:abc", "source", ("invalid port 'abc' in migration URI "
     "'tcp:127.0.0.1:abc': expected a number from 1 to 65535")),
    ("tcp:127.0.0.1:", "source", ("invalid port '' in migration URI "
     "'tcp:127.0.0.1:': expected a number from 1 to 65535")),
    ("tcp:127.0.0.1:-1", "destination", ("invalid port '-1' in migration URI "
     "'tcp:127.0.0.1:-1': expected a number from 1 to 65535")),
    ("tcp:127.0.0.1:0", "source", ("port 0 in migration URI 'tcp:127.0.0.1:0' is only valid "
     "for the destination (where it means: pick a free port); the source must name a real "
     "port")),
    # what the harness does not do
    ("rdma:1.2.3.4:5", "source", RDMA),
    ("rdma:1.2.3.4:5", "destination", RDMA),
    ("vsock:1:2", "source", "vsock: URIs are not supported by this harness (use tcp: or unix:)"),
    ("file:/tmp/f,offset=4096", "destination", ("file: URIs with ',offset=' (QEMU 8.2+) are "
     "not supported by this harness: file:/tmp/f,offset=4096")),
]


@pytest.mark.parametrize(("uri", "role", "message"), INVALID,
                         ids=[f"{r}-{u}" for u, r, _ in INVALID])
def test_invalid_uris_are_refused_with_exact_words(uri, role, message):
    with pytest.raises(UriError) as caught:
        parse_uri(uri, role)
    assert str(caught.value) == message
    assert isinstance(caught.value, ValueError)


@pytest.mark.parametrize("role", BOTH)
def test_unix_path_longer_than_sun_path_is_refused(role):
    path = "/tmp/" + "a" * 103  # 108 bytes: one too many
    with pytest.raises(UriError, match=r"^UNIX socket path '/tmp/a+' is too long \(108 bytes; "
                                       r"at most 107 fit in sun_path\)$"):
        parse_uri(f"unix:{path}", role)
    assert parse_uri(f"unix:{path[:-1]}", role).path == path[:-1]


def test_role_and_type_are_checked():
    with pytest.raises(UriError, match="role must be 'source' or 'destination', not 'dst'"):
        parse_uri("tcp:h:1", "dst")  # type: ignore[arg-type]
    with pytest.raises(UriError, match="a migration URI must be a string, not bytes"):
        parse_uri(b"tcp:h:1", "source")  # type: ignore[arg-type]


def test_fd_names_are_checked_against_the_inherited_ones():
    fds = {"a": 5, "b": 6}
    assert parse_uri("fd:b", "source", fds=fds) == MigrationUri("fd", name="b")
    assert check_fd_name("a", fds) == 5
    with pytest.raises(UriError) as caught:
        parse_uri("fd:c", "destination", fds=fds)
    assert str(caught.value) == "fd 'c' not found: the peer was started with fds: a, b"
    with pytest.raises(UriError) as caught:
        check_fd_name("c", {})
    assert str(caught.value) == ("fd 'c' not found: the peer was started with no fds "
                                 "(pass --fd NAME=FD)")


def test_a_migration_uri_built_by_hand_must_be_complete():
    with pytest.raises(UriError, match=r"MigrationUri\(kind='tcp'\) needs port"):
        MigrationUri("tcp", host="h")
    with pytest.raises(UriError, match="unknown migration URI kind 'smoke'"):
        MigrationUri("smoke")  # type: ignore[arg-type]
    assert MigrationUri("tcp", host="::1", port=0).with_port(4444).port == 4444


_host = st.one_of(st.ip_addresses(v=4).map(str), st.ip_addresses(v=6).map(str),
                  st.from_regex(r"[a-z][a-z0-9-]{0,20}(\.[a-z0-9-]{1,10}){0,3}", fullmatch=True))


@given(host=_host, port=st.integers(1, 65535))
def test_tcp_uris_round_trip(host, port):
    uri = MigrationUri("tcp", host=host, port=port)
    for role in BOTH:
        assert parse_uri(str(uri), role) == uri


@pytest.fixture
def two_fds() -> Iterator[tuple[int, int]]:
    read, write = os.pipe()
    yield read, write
    os.close(read)
    os.close(write)


def test_parse_fd_args(two_fds):
    read, write = two_fds
    assert parse_fd_args([f"mig={read}", f"rp={write}"]) == {"mig": read, "rp": write}
    assert parse_fd_args([str(read)]) == {str(read): read}
    assert parse_fd_args([]) == {}


@pytest.mark.parametrize(("args", "message"), [
    (["mig"], "invalid --fd argument 'mig': expected NAME=FD (e.g. mig=3) or FD"),
    (["=3"], "invalid --fd argument '=3': expected NAME=FD (e.g. mig=3) or FD"),
    (["mig=x"], "invalid --fd argument 'mig=x': expected NAME=FD (e.g. mig=3) or FD"),
    (["a b=3"], "invalid --fd argument 'a b=3': expected NAME=FD (e.g. mig=3) or FD"),
])
def test_parse_fd_args_refuses_malformed_arguments(args, message):
    with pytest.raises(UriError) as caught:
        parse_fd_args(args)
    assert str(caught.value) == message


def test_parse_fd_args_refuses_duplicates_and_closed_fds(two_fds):
    read, _ = two_fds
    with pytest.raises(UriError, match="the name 'mig' is given twice"):
        parse_fd_args([f"mig={read}", f"mig={read}"])
    closed, other = os.pipe()
    os.close(closed)
    os.close(other)
    with pytest.raises(UriError, match=rf"--fd x={closed}: fd {closed} is not open in this "
                                       r"process \(was it passed with pass_fds\?\)"):
        parse_fd_args([f"x={closed}"])
