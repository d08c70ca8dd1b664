"""Zero-config on a LAN: a node advertises its mesh over mDNS, ``meshllm discover`` browses.

What is advertised (DNS-SD, RFC 6763) under :data:`SERVICE_TYPE`, one service per node:

* the instance name ``meshllm-<node id>`` (renamed ``…-2`` on a clash, RFC 6762 §9);
* SRV: the node's QUIC port; A records: the node's advertised IPv4 addresses;
* TXT: ``mesh`` (mesh id), ``node`` (node id), ``v`` (:data:`TXT_VERSION`).

Only public facts: never the mesh secret, the owner key or the join token.  Finding a
mesh is not joining it: a node found by mDNS is dialled like a seed and must still pass
the membership hello, which needs the join token's secret.  So a hostile LAN peer can
advertise lies but gain nothing by them; :func:`browse` only has to keep its garbage
(bad UTF-8, oversized values, missing keys, bad ports, floods) out of the results.

Timing and bounds: :func:`browse` listens for :data:`BROWSE_TIMEOUT` seconds by default,
resolves each service for at most :data:`RESOLVE_TIMEOUT` seconds within that window,
keeps at most :data:`MAX_FOUND` services, :data:`MAX_ADDRS` addresses per node, and
skips ids over :data:`MAX_ID_CHARS` characters or outside ``[0-9A-Za-z_-]``.
:meth:`MeshAdvertiser.start` probes the name first (RFC 6762 §8.1: three probes 250 ms
apart), so it takes about a second; run it as a task to not wait.  mDNS is best effort:
where multicast does not work the advertiser logs a warning and the node carries on.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import logging
import re
from collections.abc import Awaitable, Iterable, Iterator, Mapping
from dataclasses import dataclass

import zeroconf
from zeroconf import InterfaceChoice, IPVersion, ServiceStateChange
from zeroconf.asyncio import AsyncServiceBrowser, AsyncServiceInfo, AsyncZeroconf

from meshllm.errors import ConfigError

log = logging.getLogger(__name__)

SERVICE_TYPE = "_meshllm._udp.local."
"""The DNS-SD service type: QUIC runs over UDP (RFC 6763 §7)."""
TXT_VERSION = "1"
"""The ``v`` TXT value; a service with another one is skipped, not misread."""
INSTANCE_PREFIX = "meshllm-"
BROWSE_TIMEOUT = 3.0
"""Seconds :func:`browse` listens: covers the first query's 20-120 ms delay and the
responders' 20-120 ms answer delay (RFC 6762 §5.2, §6) many times over."""
RESOLVE_TIMEOUT = 1.0
"""Seconds one service may take to resolve (SRV, TXT, A); answers usually carry all three."""
MAX_FOUND = 256
"""Services kept (and resolving) at once: a LAN peer flooding names cannot grow a browse."""
MAX_ADDRS = 16
"""Addresses kept per node, from its own record and any duplicates of it."""
MAX_ID_CHARS = 64
"""Longest mesh or node id accepted from TXT (ours are 16 hex digits)."""
FORMAT_ADDRS = 4
"""Addresses :func:`format_meshes` shows per mesh before ``(+N more)``."""
_ID = re.compile(rf"[0-9A-Za-z_-]{{1,{MAX_ID_CHARS}}}")
# Only these, so a hostile id cannot smuggle terminal escapes into `meshllm discover`.
_LABEL_BYTES = 63  # RFC 1035 §2.3.4: the longest DNS label
_ERRORS = (OSError, RuntimeError, ValueError, zeroconf.Error)
"""What zeroconf raises where multicast does not work: ENODEV for an interface without
multicast, RuntimeError when no interface has an IPv4 address, NotRunningException."""


@dataclass(frozen=True)
class Found:
    """One node found on the LAN: its mesh, its id and where to dial it (``host:port``)."""

    mesh_id: str
    node_id: str
    addrs: tuple[str, ...]


def _valid_id(value: str) -> bool:
    return _ID.fullmatch(value) is not None


def _split_addr(addr: str) -> tuple[str, int] | None:
    """``(host, port)`` of an ``IPv4:port`` string, or None if it is anything else."""
    host, sep, port_text = addr.rpartition(":")
    if not sep or not port_text.isdigit():
        return None
    try:
        ip = ipaddress.IPv4Address(host)
    except ValueError:
        return None
    port = int(port_text)
    if not 0 < port < 65536 or ip.is_unspecified or ip.is_multicast:
        return None
    return str(ip), port


def _txt_id(properties: Mapping[bytes, bytes | None], key: bytes) -> str | None:
    """A TXT id value, or None if missing, oversized, not UTF-8 or not an id."""
    raw = properties.get(key)
    if raw is None or len(raw) > MAX_ID_CHARS:
        return None
    try:
        value = raw.decode("utf-8")
    except UnicodeDecodeError:
        return None
    return value if _valid_id(value) else None


def parse_service(
    properties: Mapping[bytes, bytes | None], port: int | None, hosts: Iterable[str]
) -> Found | None:
    """The :class:`Found` a resolved service describes (TXT ``properties``, SRV ``port``,
    A-record ``hosts``), or None if any part is missing or malformed."""
    if properties.get(b"v") != TXT_VERSION.encode():
        return None
    mesh_id, node_id = _txt_id(properties, b"mesh"), _txt_id(properties, b"node")
    if mesh_id is None or node_id is None or port is None:
        return None
    valid: set[ipaddress.IPv4Address] = set()
    for host in hosts:
        if (parsed := _split_addr(f"{host}:{port}")) is not None:
            valid.add(ipaddress.IPv4Address(parsed[0]))
        if len(valid) == MAX_ADDRS:
            break
    addrs = tuple(f"{ip}:{port}" for ip in sorted(valid))  # sorted: resolvers reorder
    return Found(mesh_id, node_id, addrs) if addrs else None


def _merge(found: Iterable[Found]) -> list[Found]:
    """One entry per (mesh, node), addresses united (at most :data:`MAX_ADDRS`), sorted."""
    merged: dict[tuple[str, str], list[str]] = {}
    for item in found:
        addrs = merged.setdefault((item.mesh_id, item.node_id), [])
        addrs += [a for a in item.addrs if a not in addrs][: MAX_ADDRS - len(addrs)]
    return [Found(mesh, node, tuple(addrs)) for (mesh, node), addrs in sorted(merged.items())]


def group_by_mesh(found: Iterable[Found]) -> dict[str, list[Found]]:
    """Found nodes by mesh id, meshes and nodes sorted by id."""
    groups: dict[str, list[Found]] = {}
    for item in _merge(found):
        groups.setdefault(item.mesh_id, []).append(item)
    return groups


def format_meshes(found: Iterable[Found]) -> str:
    """The table ``meshllm discover`` prints: one row per mesh (MESH, NODES, ADDRESSES)."""
    groups = group_by_mesh(found)
    if not groups:
        return "no meshes found on the LAN"
    rows = [("MESH", "NODES", "ADDRESSES")]
    for mesh_id, nodes in groups.items():
        addrs = [a for node in nodes for a in node.addrs]
        shown = ", ".join(addrs[:FORMAT_ADDRS])
        if len(addrs) > FORMAT_ADDRS:
            shown += f" (+{len(addrs) - FORMAT_ADDRS} more)"
        rows.append((mesh_id, str(len(nodes)), shown))
    widths = [max(len(row[i]) for row in rows) for i in range(2)]
    return "\n".join(
        f"{mesh:<{widths[0]}}  {nodes:<{widths[1]}}  {addrs}".rstrip()
        for mesh, nodes, addrs in rows
    )


@contextlib.contextmanager
def _best_effort(what: str) -> Iterator[None]:
    """Log a warning for an mDNS failure instead of raising: discovery is optional."""
    try:
        yield
    except _ERRORS as exc:
        log.warning("mDNS: cannot %s (%s: %s); carrying on without it",
                    what, type(exc).__name__, exc)  # fmt: skip


class MeshAdvertiser:
    """Advertises one node of a mesh on the LAN, for as long as it is open.

    ``addrs`` are the node's advertised ``host:port`` addresses: the IPv4 ones that
    share the first IPv4 one's port become the A records, that port the SRV port; others
    (names, IPv6, a second port) are left out.  ``interfaces``: zeroconf's choice, e.g.
    ``["127.0.0.1"]``.  Never raises on a network without multicast: it logs a warning.
    """

    def __init__(
        self,
        mesh_id: str,
        node_id: str,
        addrs: list[str],
        *,
        interfaces: zeroconf.InterfacesType = InterfaceChoice.All,
    ) -> None:
        if not (_valid_id(mesh_id) and _valid_id(node_id)):
            raise ValueError(f"mesh id {mesh_id!r} or node id {node_id!r} is not an id")
        self.mesh_id = mesh_id
        self.node_id = node_id
        self.addrs = list(addrs)
        self.interfaces = interfaces
        label = f"{INSTANCE_PREFIX}{node_id}"[:_LABEL_BYTES]
        self.name = f"{label}.{SERVICE_TYPE}"
        """The instance name asked for; :attr:`registered` says which one the LAN agreed."""
        self._server = f"{label}.local."
        self._zc: AsyncZeroconf | None = None
        self._info: AsyncServiceInfo | None = None  # what is registered now
        self._announcing: set[asyncio.Future[object]] = set()

    @property
    def registered(self) -> str | None:
        """The instance name advertised now, or None (not started, failed, no address)."""
        return self._info.name if self._info is not None else None

    def service_info(self) -> AsyncServiceInfo | None:
        """The service for the current addresses, or None if none of them is usable."""
        usable = [p for a in self.addrs if (p := _split_addr(a)) is not None]
        if not usable:
            return None
        port = usable[0][1]
        hosts = list(dict.fromkeys(h for h, p in usable if p == port))[:MAX_ADDRS]
        properties = {"mesh": self.mesh_id, "node": self.node_id, "v": TXT_VERSION}
        name = self._info.name if self._info is not None else self.name
        return AsyncServiceInfo(SERVICE_TYPE, name, port=port, properties=properties,
                                server=self._server, parsed_addresses=hosts)  # fmt: skip

    async def start(self) -> None:
        """Open the mDNS sockets and advertise (about a second: the name is probed first)."""
        if self._zc is not None:
            return
        with _best_effort("open the multicast sockets"):
            self._zc = AsyncZeroconf(interfaces=self.interfaces, ip_version=IPVersion.V4Only)
        await self._publish()

    async def update(self, addrs: list[str]) -> None:
        """Advertise new addresses (withdraw the service while none is usable)."""
        self.addrs = list(addrs)
        await self._publish()

    async def _publish(self) -> None:
        if self._zc is None:
            return
        info = self.service_info()
        with _best_effort(f"advertise {self.name}"):
            if self._info is not None and info is None:
                await self._zc.async_unregister_service(self._info)
            elif self._info is None and info is not None:
                # allow_name_change: a peer squatting on our name cannot silence us.
                self._track(await self._zc.async_register_service(info, allow_name_change=True))
            elif info is not None:
                self._track(await self._zc.async_update_service(info))
            self._info = info

    def _track(self, announcing: Awaitable[object]) -> None:
        """Keep the announcements' future, so close() can cancel it."""
        future = asyncio.ensure_future(announcing)
        self._announcing.add(future)
        future.add_done_callback(self._announcing.discard)

    async def close(self) -> None:
        """Say goodbye (TTL 0 records) and close the sockets; safe to call at any time."""
        zc, self._zc, self._info = self._zc, None, None
        for future in list(self._announcing):
            future.cancel()
        if zc is not None:
            with _best_effort("close the multicast sockets"):
                await zc.async_close()


class _Collector:
    """Resolves the services a browser reports, keeping the valid ones of ``mesh_id``."""

    def __init__(self, zc: AsyncZeroconf, mesh_id: str | None, deadline: float) -> None:
        self.zc = zc
        self.mesh_id = mesh_id
        self.deadline = deadline
        self.found: dict[str, Found] = {}  # by instance name
        self.resolving: dict[str, asyncio.Task[None]] = {}

    def on_change(
        self, zeroconf: object, service_type: str, name: str, state_change: ServiceStateChange
    ) -> None:  # fmt: skip
        """AsyncServiceBrowser's handler (called with these keywords, in the event loop)."""
        if state_change is ServiceStateChange.Removed:
            self.found.pop(name, None)
            return
        if name in self.resolving:
            return
        if name not in self.found and len(self.found) + len(self.resolving) >= MAX_FOUND:
            return
        task = asyncio.create_task(self._resolve(name))
        self.resolving[name] = task
        task.add_done_callback(lambda _: self.resolving.pop(name, None))

    async def _resolve(self, name: str) -> None:
        loop = asyncio.get_running_loop()
        timeout = min(RESOLVE_TIMEOUT, self.deadline - loop.time())
        if timeout <= 0:
            return
        try:
            info = AsyncServiceInfo(SERVICE_TYPE, name)
            if not await info.async_request(self.zc.zeroconf, timeout * 1000):
                return
            found = parse_service(info.properties, info.port,
                                  info.parsed_addresses(IPVersion.V4Only))  # fmt: skip
        except _ERRORS as exc:  # a malformed name or record from a LAN peer
            log.debug("mDNS: skipping %r: %s", name, exc)
            return
        if found is None:
            log.debug("mDNS: skipping %r: malformed TXT, port or addresses", name)
        elif self.mesh_id is None or found.mesh_id == self.mesh_id:
            self.found[name] = found

    def cancel(self) -> None:
        for task in list(self.resolving.values()):
            task.cancel()


async def browse(
    timeout: float = BROWSE_TIMEOUT,
    *,
    mesh_id: str | None = None,
    interfaces: zeroconf.InterfacesType = InterfaceChoice.All,
) -> list[Found]:
    """The meshllm nodes that answer on the LAN within ``timeout`` seconds, one per
    (mesh, node), sorted; only mesh ``mesh_id``'s if given.  ConfigError if the
    multicast sockets cannot be opened (no interface with IPv4 multicast here)."""
    loop = asyncio.get_running_loop()
    try:
        zc = AsyncZeroconf(interfaces=interfaces, ip_version=IPVersion.V4Only)
    except _ERRORS as exc:
        raise ConfigError(f"mDNS unavailable: {type(exc).__name__}: {exc}") from None
    collector = _Collector(zc, mesh_id, loop.time() + timeout)
    try:
        browser = AsyncServiceBrowser(zc.zeroconf, SERVICE_TYPE, handlers=[collector.on_change])
        try:
            await asyncio.sleep(timeout)
        finally:
            collector.cancel()
            await browser.async_cancel()
    finally:
        with _best_effort("close the multicast sockets"):
            await zc.async_close()
    return _merge(collector.found.values())
