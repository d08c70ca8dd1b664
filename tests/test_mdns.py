"""mDNS discovery: TXT parsing and the table (pure), then real round trips on loopback.

Multicast works on ``lo`` here (zeroconf with ``interfaces=["127.0.0.1"]``), so the round
trips run in this process, on loopback only (nothing goes out onto the LAN), each with a
fresh random mesh id that its browse filters on.  Two hosts on a bridge:
``tests/netns/test_mdns.py``.
"""

from __future__ import annotations

import asyncio
import logging
import secrets
from collections.abc import AsyncIterator

import pytest
from zeroconf.asyncio import AsyncServiceInfo, AsyncZeroconf

from meshllm import mdns
from meshllm.errors import ConfigError
from meshllm.mdns import (
    MAX_ADDRS,
    MAX_ID_CHARS,
    SERVICE_TYPE,
    Found,
    MeshAdvertiser,
    browse,
    format_meshes,
    group_by_mesh,
    parse_service,
)

LOOPBACK = ["127.0.0.1"]
BROWSE_S = 1.5
"""Loopback answers come within ~150 ms; the rest is margin for a busy CI box."""
MESH = "0123456789abcdef"
NODE = "fedcba9876543210"


def _txt(**fields: bytes | None) -> dict[bytes, bytes | None]:
    base: dict[bytes, bytes | None] = {b"mesh": MESH.encode(), b"node": NODE.encode(), b"v": b"1"}
    for key, value in fields.items():
        if value is None:
            base.pop(key.encode(), None)
        else:
            base[key.encode()] = value
    return base


def _new_id() -> str:
    return secrets.token_hex(8)


# --- pure: TXT, addresses, grouping, table ---------------------------------------------


def test_parse_service_valid() -> None:
    found = parse_service(_txt(), 9337, ["10.0.0.2", "10.0.0.10", "10.0.0.2"])
    assert found == Found(MESH, NODE, ("10.0.0.2:9337", "10.0.0.10:9337"))


@pytest.mark.parametrize(
    "txt",
    [
        _txt(mesh=None),
        _txt(node=None),
        _txt(v=None),
        _txt(v=b"2"),
        _txt(v=b""),
        _txt(node=b"\xff\xfe\xfd"),  # not UTF-8
        _txt(mesh=b"a" * (MAX_ID_CHARS + 1)),  # oversized
        _txt(node=b"x" * 250),
        _txt(node=b""),
        _txt(node=b"\x1b[2Jowned"),  # terminal escape into `meshllm discover`
        _txt(mesh=b"mesh with spaces"),
        _txt(node="n\u00f6de".encode()),  # UTF-8, but not an id
        {b"mesh": None, b"node": None, b"v": None},  # keys without '='
        {},
    ],
    ids=lambda txt: repr(txt)[:40],
)
def test_parse_service_skips_bad_txt(txt: dict[bytes, bytes | None]) -> None:
    assert parse_service(txt, 9337, ["10.0.0.2"]) is None


@pytest.mark.parametrize("port", [None, 0, -1, 65536, 1 << 20])
def test_parse_service_skips_bad_port(port: int | None) -> None:
    assert parse_service(_txt(), port, ["10.0.0.2"]) is None


def test_parse_service_keeps_only_usable_ipv4() -> None:
    hosts = ["0.0.0.0", "224.0.0.251", "fe80::1", "host.local", "10.0.0.300", "", "10.0.0.7"]
    assert parse_service(_txt(), 9337, hosts) == Found(MESH, NODE, ("10.0.0.7:9337",))
    assert parse_service(_txt(), 9337, hosts[:-1]) is None
    assert parse_service(_txt(), 9337, []) is None


def test_parse_service_bounds_addresses() -> None:
    hosts = [f"10.0.{i // 256}.{i % 256}" for i in range(1000)]
    found = parse_service(_txt(), 9337, hosts)
    assert found is not None and len(found.addrs) == MAX_ADDRS


def test_parse_service_accepts_the_longest_id() -> None:
    long_id = "a" * MAX_ID_CHARS
    found = parse_service(_txt(node=long_id.encode()), 1, ["10.0.0.1"])
    assert found is not None and found.node_id == long_id


def test_group_by_mesh_merges_duplicates_and_sorts() -> None:
    found = [
        Found("m2", "b", ("10.0.0.2:1",)),
        Found("m1", "z", ("10.0.0.9:1",)),
        Found("m2", "a", ("10.0.0.1:1",)),
        Found("m2", "b", ("10.0.0.2:1", "10.0.0.3:1")),  # the same node under a second name
    ]
    assert group_by_mesh(found) == {
        "m1": [Found("m1", "z", ("10.0.0.9:1",))],
        "m2": [Found("m2", "a", ("10.0.0.1:1",)), Found("m2", "b", ("10.0.0.2:1", "10.0.0.3:1"))],
    }


def test_group_by_mesh_bounds_merged_addresses() -> None:
    found = [Found("m", "n", (f"10.0.0.{i}:1",)) for i in range(MAX_ADDRS + 5)]
    assert len(group_by_mesh(found)["m"][0].addrs) == MAX_ADDRS


def test_format_meshes_table() -> None:
    found = [
        Found("aaaa1111bbbb2222", "n1", ("10.0.0.1:9337",)),
        Found("aaaa1111bbbb2222", "n2", ("10.0.0.2:9337", "192.168.1.2:9337")),
        Found("m", "n3", ("10.0.0.3:9000",)),
    ]
    assert format_meshes(found).splitlines() == [
        "MESH              NODES  ADDRESSES",
        "aaaa1111bbbb2222  2      10.0.0.1:9337, 10.0.0.2:9337, 192.168.1.2:9337",
        "m                 1      10.0.0.3:9000",
    ]


def test_format_meshes_elides_many_addresses() -> None:
    found = [Found("m", f"n{i}", (f"10.0.0.{i}:1",)) for i in range(10)]
    row = format_meshes(found).splitlines()[1]
    assert row.startswith("m     10     10.0.0.0:1, ")
    assert row.endswith(f"(+{10 - mdns.FORMAT_ADDRS} more)")


def test_format_meshes_empty() -> None:
    assert format_meshes([]) == "no meshes found on the LAN"


def test_advertiser_service_record() -> None:
    adv = MeshAdvertiser(MESH, NODE, ["10.0.0.1:9337", "[::1]:9337", "10.0.0.2:9337",
                                      "10.0.0.3:1234", "name:9337", "0.0.0.0:9337"])  # fmt: skip
    info = adv.service_info()
    assert info is not None
    assert info.name == f"meshllm-{NODE}.{SERVICE_TYPE}"
    assert info.port == 9337
    assert sorted(info.parsed_addresses()) == ["10.0.0.1", "10.0.0.2"]
    assert info.properties == {b"mesh": MESH.encode(), b"node": NODE.encode(), b"v": b"1"}
    assert MeshAdvertiser(MESH, NODE, ["[::1]:9337"]).service_info() is None


def test_advertiser_rejects_a_non_id() -> None:
    with pytest.raises(ValueError):
        MeshAdvertiser("bad mesh", NODE, [])


# --- real: multicast on loopback --------------------------------------------------------


async def test_advertiser_without_multicast_warns_and_carries_on(
    caplog: pytest.LogCaptureFixture,
) -> None:
    # 203.0.113.9 (TEST-NET-3) is on no interface: joining the group there fails (ENODEV).
    adv = MeshAdvertiser(MESH, NODE, ["10.0.0.1:9337"], interfaces=["203.0.113.9"])
    with caplog.at_level(logging.WARNING, logger="meshllm.mdns"):
        await adv.start()
        await adv.update(["10.0.0.2:9337"])
        await adv.close()
    assert adv.registered is None
    assert "mDNS: cannot open the multicast sockets" in caplog.text


async def test_browse_without_multicast_raises_config_error() -> None:
    with pytest.raises(ConfigError, match="mDNS unavailable"):
        await browse(0.1, interfaces=["203.0.113.9"])


@pytest.fixture
async def advertiser() -> AsyncIterator[MeshAdvertiser]:
    adv = MeshAdvertiser(_new_id(), _new_id(), ["127.0.0.1:9337"], interfaces=LOOPBACK)
    await adv.start()
    try:
        yield adv
    finally:
        await adv.close()


async def test_round_trip_advertise_update_browse(advertiser: MeshAdvertiser) -> None:
    assert advertiser.registered == advertiser.name
    mine = Found(advertiser.mesh_id, advertiser.node_id, ("127.0.0.1:9337",))
    ours, other_mesh, every = await asyncio.gather(
        browse(BROWSE_S, mesh_id=advertiser.mesh_id, interfaces=LOOPBACK),
        browse(BROWSE_S, mesh_id=_new_id(), interfaces=LOOPBACK),
        browse(BROWSE_S, interfaces=LOOPBACK),
    )
    assert (ours, other_mesh) == ([mine], [])
    assert mine in every

    await advertiser.update(["127.0.0.1:9444", "127.0.0.2:9444"])
    moved = Found(mine.mesh_id, mine.node_id, ("127.0.0.1:9444", "127.0.0.2:9444"))
    assert await browse(BROWSE_S, mesh_id=advertiser.mesh_id, interfaces=LOOPBACK) == [moved]


@pytest.fixture
async def raw_zc() -> AsyncIterator[AsyncZeroconf]:
    """A bare zeroconf on loopback, to advertise what a hostile LAN peer would."""
    zc = AsyncZeroconf(interfaces=LOOPBACK)
    try:
        yield zc
    finally:
        await zc.async_close()


async def _register_raw(zc: AsyncZeroconf, label: str, txt: bytes, port: int = 9337) -> None:
    info = AsyncServiceInfo(SERVICE_TYPE, f"{label}.{SERVICE_TYPE}", port=port, properties=txt,
                            server=f"{label}.local.", parsed_addresses=["127.0.0.1"])  # fmt: skip
    # cooperating_responders: skip the ~1 s name probe, these names are unique anyway.
    await zc.async_register_service(info, cooperating_responders=True)


def _raw_txt(*entries: bytes) -> bytes:
    """A TXT record's wire form: length-prefixed strings (RFC 6763 §6.1)."""
    return b"".join(bytes((len(e),)) + e for e in entries)


async def test_browse_skips_hostile_services(
    raw_zc: AsyncZeroconf, caplog: pytest.LogCaptureFixture
) -> None:
    mesh = _new_id()
    m, v = f"mesh={mesh}".encode(), b"v=1"
    bad = {
        "bad-utf8": _raw_txt(m, b"node=\xff\xfe", v),
        "huge": _raw_txt(m, b"node=" + b"n" * 250, v),
        "no-node": _raw_txt(m, v),
        "no-version": _raw_txt(m, b"node=abc"),
        "escape": _raw_txt(m, b"node=\x1b[2J", v),
        "truncated": _raw_txt(m, b"node=abc", v)[:-1] + b"\xff",  # a length past the end
    }
    for label, txt in bad.items():
        await _register_raw(raw_zc, label, txt)
    await _register_raw(raw_zc, "port0", _raw_txt(m, b"node=port0", v), port=0)
    await _register_raw(raw_zc, "good", _raw_txt(m, b"node=good", v))
    with caplog.at_level(logging.DEBUG, logger="meshllm.mdns"):
        found = await browse(BROWSE_S, mesh_id=mesh, interfaces=LOOPBACK)
    assert found == [Found(mesh, "good", ("127.0.0.1:9337",))]
    for label in [*bad, "port0"]:  # each was resolved and refused, not merely unheard
        assert f"skipping '{label}.{SERVICE_TYPE}': malformed" in caplog.text


async def test_browse_bounds_services_found(
    raw_zc: AsyncZeroconf, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(mdns, "MAX_FOUND", 3)
    mesh = _new_id()
    for i in range(6):
        txt = _raw_txt(f"mesh={mesh}".encode(), f"node=n{i}".encode(), b"v=1")
        await _register_raw(raw_zc, f"flood{i}", txt)
    found = await browse(BROWSE_S, mesh_id=mesh, interfaces=LOOPBACK)
    assert len(found) == 3
