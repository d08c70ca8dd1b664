"""Hosts in Linux network namespaces, for tests of real daemons over a real network.

:class:`Network` builds N hosts, each a namespace ``mllm<pid>h<i>`` with one veth
``eth0`` at ``10.77.0.<i+1>/24``, plugged into one bridge that lives in a namespace
of its own (``mllm<pid>br``), so nothing is added to the root namespace.  nftables
tables in each host make the network misbehave, and are removed to heal it:

* :meth:`Network.set_loss`: drop a percentage of the UDP datagrams each host receives;
* :meth:`Network.cut`: drop everything (UDP and TCP) between two groups of hosts.

Both drop on the *input* hook only: a drop on output makes ``sendmsg`` fail with
EPERM, which a real lossy or partitioned network never does.  This kernel has no
``netem`` (DESIGN.md §9), hence nftables.

:meth:`Network.add_node` starts a ``meshllm`` daemon in a host (``ip netns exec``
execs, so the pid is the daemon's); its HTTP API listens on 127.0.0.1 inside the
namespace, and the test process reaches it with a socket created there
(:meth:`Host.connect`, ``setns(2)`` in a short-lived thread).

Needs root, ``ip`` (iproute2) and ``nft`` (nftables).  Cleanup: leaving the
``with`` block (or :meth:`Network.close`) stops every daemon by pid, then deletes
every namespace, which takes the veths, the bridge and the nft tables with it; a
namespace left by a test process that died is swept at the next start.
"""

from __future__ import annotations

import contextlib
import ctypes
import functools
import http.client
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import threading
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from meshllm.testing.cluster import NodeProcess

PREFIX = "mllm"
"""Namespace names are ``mllm<pid>h<i>`` and ``mllm<pid>br``: unique per test process."""
SUBNET = "10.77.0"
"""Host i is ``10.77.0.<i+1>/24``; each run's bridge is isolated, so runs never clash."""
QUIC_PORT = 9338
"""Every host has its own addresses, so every daemon can bind the default port."""
LOSS_TABLE = "meshllm_loss"
CUT_TABLE = "meshllm_cut"
NET_IF = "eth0"
"""The host's interface to the bridge: loss applies there only, not to loopback HTTP."""
PERCENT = 100
"""Loss samples ``numgen random mod 100``: a rule drops ``percent`` of 100 draws."""
HTTP_TIMEOUT = 5.0
CLONE_NEWNET = 0x40000000  # <linux/sched.h>; os.CLONE_NEWNET arrives only in Python 3.12
_STALE = re.compile(rf"^{PREFIX}(\d+)(?:h\d+|br)$")


class NetnsError(Exception):
    """The namespaces could not be set up or torn down (not root, a tool missing, a
    command that failed); the message says which and why."""


def missing_requirements() -> str | None:
    """Why this machine can't run the harness (not root, ``ip`` or ``nft`` missing), or None."""
    if os.geteuid() != 0:
        return "network namespaces and nftables need root"
    missing = [tool for tool in ("ip", "nft") if shutil.which(tool) is None]
    if missing:
        return f"{' and '.join(missing)} not installed (apt-get install -y nftables iproute2)"
    return None


def run(*argv: str, stdin: str | None = None) -> str:
    """Run a command; NetnsError with its stderr when it fails."""
    proc = subprocess.run(argv, input=stdin, capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        raise NetnsError(f"{' '.join(argv)} failed ({proc.returncode}): {proc.stderr.strip()}")
    return proc.stdout


def _input_chain(match: str) -> str:
    """An input chain that counts and drops what ``match`` selects."""
    hook = "type filter hook input priority 0; policy accept;"
    return f"chain input {{ {hook} {match} counter drop; }}"


@functools.cache
def _libc() -> ctypes.CDLL:
    return ctypes.CDLL(None, use_errno=True)


def _libc_setns(path: str) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        if _libc().setns(fd, CLONE_NEWNET) != 0:
            err = ctypes.get_errno()
            raise OSError(err, f"setns {path}: {os.strerror(err)}")
    finally:
        os.close(fd)


@dataclass(frozen=True)
class Host:
    """One namespace on the bridge."""

    index: int
    netns: str
    addr: str

    def nft(self, script: str) -> None:
        """Apply an nft script inside this host (one transaction)."""
        run("ip", "netns", "exec", self.netns, "nft", "-f", "-", stdin=script)

    def set_table(self, name: str, body: str | None) -> None:
        """Replace table ``inet name`` with ``body`` (its chains), or remove it if None.
        Declaring the table first makes the delete safe when it does not exist."""
        script = f"table inet {name} {{}}\ndelete table inet {name}\n"
        if body is not None:
            script += f"table inet {name} {{\n{body}\n}}\n"
        self.nft(script)

    def dropped(self, table: str) -> int:
        """Packets the counters of ``inet table`` dropped in this host (0 if it is absent)."""
        try:
            listing = run("ip", "netns", "exec", self.netns, "nft", "list", "table", "inet", table)
        except NetnsError:
            return 0
        return sum(int(n) for n in re.findall(r"counter packets (\d+)", listing))

    def connect(self, port: int, timeout: float = HTTP_TIMEOUT) -> socket.socket:
        """A TCP socket to 127.0.0.1:``port`` inside this host.  A socket keeps the
        namespace it was created in, and ``setns`` switches only the calling thread,
        so a throwaway thread enters the namespace and makes it."""
        result: list[socket.socket | BaseException] = []

        def make() -> None:
            try:
                _libc_setns(f"/run/netns/{self.netns}")
                result.append(socket.create_connection(("127.0.0.1", port), timeout))
            except BaseException as exc:  # handed to the caller's thread
                result.append(exc)

        thread = threading.Thread(target=make, name=f"setns-{self.netns}")
        thread.start()
        thread.join()
        if isinstance(result[0], BaseException):
            raise result[0]
        return result[0]

    def http_get(self, port: int, path: str, timeout: float = HTTP_TIMEOUT) -> Any:
        """GET a JSON route of the HTTP API on 127.0.0.1:``port`` in this host
        (``Host: 127.0.0.1:port``, which the node's guard accepts)."""
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
        conn.sock = self.connect(port, timeout)
        try:
            conn.request("GET", path)
            resp = conn.getresponse()
            body = resp.read()
            if resp.status != 200:
                raise OSError(f"GET {path} in {self.netns}: HTTP {resp.status}")
            return json.loads(body)
        finally:
            conn.close()


class NetnsNode(NodeProcess):
    """A ``meshllm`` daemon inside a :class:`Host`; the API calls go into its namespace."""

    def __init__(self, host: Host, state_dir: Path, args: Iterable[str]) -> None:
        super().__init__(state_dir, args)
        self.host = host

    def argv(self) -> list[str]:
        """The daemon's command line, run inside the host's namespace."""
        return ["ip", "netns", "exec", self.host.netns, *super().argv()]

    def get(self, path: str, timeout: float = HTTP_TIMEOUT) -> Any:
        return self.host.http_get(self.http_port, path, timeout)


class Network:
    """``hosts`` namespaces on one bridge, with their daemons; all removed on exit."""

    def __init__(self, hosts: int, root: Path) -> None:
        self.root = root
        tag = f"{PREFIX}{os.getpid()}"
        self.bridge_ns = f"{tag}br"
        self.hosts = [Host(i, f"{tag}h{i}", f"{SUBNET}.{i + 1}") for i in range(hosts)]
        self.nodes: list[NetnsNode] = []
        self._made: list[str] = []  # namespaces created, deleted in reverse order

    def __enter__(self) -> Network:
        try:
            self.setup()
        except BaseException:
            self.close()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def setup(self) -> None:
        """Sweep stale namespaces, then make the bridge and the hosts."""
        if (why := missing_requirements()) is not None:
            raise NetnsError(why)
        sweep_stale()
        self._add_netns(self.bridge_ns)
        run("ip", "-n", self.bridge_ns, "link", "add", "br0", "type", "bridge")
        run("ip", "-n", self.bridge_ns, "link", "set", "br0", "up")
        for host in self.hosts:
            port = f"p{host.index}"
            self._add_netns(host.netns)
            run("ip", "link", "add", NET_IF, "netns", host.netns, "type", "veth",
                "peer", "name", port, "netns", self.bridge_ns)  # fmt: skip
            run("ip", "-n", self.bridge_ns, "link", "set", port, "master", "br0", "up")
            run("ip", "-n", host.netns, "addr", "add", f"{host.addr}/24", "dev", NET_IF)
            run("ip", "-n", host.netns, "link", "set", NET_IF, "up")
            run("ip", "-n", host.netns, "link", "set", "lo", "up")

    def _add_netns(self, name: str) -> None:
        run("ip", "netns", "add", name)
        self._made.append(name)

    def add_node(self, index: int, *args: str, join: str | None = None) -> NetnsNode:
        """Start a daemon on host ``index``, bound to its address; joins ``join`` if given."""
        host = self.hosts[index]
        state = self.root / f"h{index}"
        argv = ["--bind", f"{host.addr}:{QUIC_PORT}", "--port", "0", "--no-install",
                "--models-dir", str(state / "models"), *args]  # fmt: skip
        if join:
            argv += ["--join", join]
        node = NetnsNode(host, state, argv)
        self.nodes.append(node)
        return node.start()

    def set_loss(self, percent: int, hosts: Iterable[int] | None = None) -> None:
        """Drop ``percent`` % (1 to 99) of the UDP datagrams arriving at each given host (all
        by default); for a total loss use :meth:`cut`."""
        if not 0 < percent < PERCENT:
            raise ValueError(f"loss percent {percent} is not between 1 and 99")
        sample = f"numgen random mod {PERCENT} < {percent}"
        body = _input_chain(f"iifname {NET_IF} meta l4proto udp {sample}")
        for host in self._pick(hosts):
            host.set_table(LOSS_TABLE, body)

    def loss_dropped(self) -> int:
        """Datagrams the loss rules dropped so far, all hosts together (proof they bite)."""
        return sum(host.dropped(LOSS_TABLE) for host in self.hosts)

    def clear_loss(self) -> None:
        for host in self.hosts:
            host.set_table(LOSS_TABLE, None)

    def cut(self, side_a: Iterable[int], side_b: Iterable[int]) -> None:
        """Partition: every host of each side drops all traffic from the other side."""
        a, b = list(self._pick(side_a)), list(self._pick(side_b))
        for mine, theirs in ((a, b), (b, a)):
            addrs = ", ".join(h.addr for h in theirs)
            for host in mine:
                host.set_table(CUT_TABLE, _input_chain(f"ip saddr {{ {addrs} }}"))

    def heal(self) -> None:
        """Undo :meth:`cut`."""
        for host in self.hosts:
            host.set_table(CUT_TABLE, None)

    def _pick(self, indices: Iterable[int] | None) -> Iterable[Host]:
        return self.hosts if indices is None else [self.hosts[i] for i in indices]

    def close(self) -> None:
        """Stop every daemon by pid, delete every namespace; NetnsError if one remains."""
        for node in self.nodes:
            with contextlib.suppress(Exception):
                node.terminate(timeout=10)
        errors = []
        for name in reversed(self._made):
            try:
                delete_netns(name)
            except NetnsError as exc:
                errors.append(str(exc))
        self._made.clear()
        ours = {self.bridge_ns, *(h.netns for h in self.hosts)}
        errors += [f"namespace {n} is left" for n in netns_names() if n in ours]
        if errors:
            raise NetnsError("; ".join(errors))


def netns_names() -> list[str]:
    """Names of the network namespaces in /run/netns (``ip netns list``)."""
    return [line.split()[0] for line in run("ip", "netns", "list").splitlines() if line.strip()]


def delete_netns(name: str) -> None:
    """Kill by pid whatever still runs in namespace ``name``, then delete it."""
    for pid in run("ip", "netns", "pids", name).split():
        with contextlib.suppress(ProcessLookupError):
            os.kill(int(pid), signal.SIGKILL)
    run("ip", "netns", "del", name)


def sweep_stale() -> None:
    """Delete the namespaces of harness runs whose test process is gone (killed -9)."""
    for name in netns_names():
        match = _STALE.match(name)
        if match is None or int(match.group(1)) == os.getpid():
            continue
        try:
            os.kill(int(match.group(1)), 0)
        except ProcessLookupError:
            delete_netns(name)
        except PermissionError:  # alive, someone else's
            pass
