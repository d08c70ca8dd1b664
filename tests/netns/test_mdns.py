"""mDNS across a real LAN: two hosts on a bridge, an advertiser in one, a browse in the other.

Each side is a small python process run with ``ip netns exec``, on zeroconf's default
interfaces (all of the host's), so the announcement crosses the veths and the bridge as
it would a LAN, and the address found is the advertiser's own, not loopback.  Needs
root: CI runs it as root; elsewhere, as a normal user, it is skipped.
"""

from __future__ import annotations

import json
import os
import secrets
import select
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from meshllm.testing.netns import QUIC_PORT, Network, missing_requirements

BROWSE_S = 2.0
PROCESS_TIMEOUT = 30.0
"""Generous: a python start plus a probe on a busy CI box is seconds, not tens."""

ADVERTISE = """
import asyncio, sys
from meshllm.mdns import MeshAdvertiser

async def main():
    adv = MeshAdvertiser(sys.argv[1], sys.argv[2], sys.argv[3:])
    await adv.start()
    print("registered", adv.registered, flush=True)
    await asyncio.get_running_loop().run_in_executor(None, sys.stdin.read)  # till EOF
    await adv.close()

asyncio.run(main())
"""

BROWSE = """
import asyncio, dataclasses, json, sys
from meshllm.mdns import browse

found = asyncio.run(browse(float(sys.argv[1]), mesh_id=sys.argv[2] or None))
print(json.dumps([dataclasses.asdict(f) for f in found]))
"""


@pytest.fixture(scope="module")
def net(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Network]:
    if os.geteuid() != 0 and not os.environ.get("CI"):  # in CI a skip would hide a failure
        pytest.skip(f"{missing_requirements()}: run as root")
    with Network(2, tmp_path_factory.mktemp("netns")) as network:
        yield network


def _in_host(netns: str, script: str, *args: str) -> list[str]:
    return ["ip", "netns", "exec", netns, sys.executable, "-c", script, *args]


def _browse_all(netns: str, *mesh_ids: str) -> list[list[dict[str, object]]]:
    """One browse per mesh id ("" for every mesh), run side by side in host ``netns``."""
    procs = [subprocess.Popen(_in_host(netns, BROWSE, f"{BROWSE_S:g}", mesh_id),
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for mesh_id in mesh_ids]  # fmt: skip
    results = []
    for proc in procs:
        try:
            out, err = proc.communicate(timeout=PROCESS_TIMEOUT)
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
        assert proc.returncode == 0, err
        results.append(json.loads(out.splitlines()[-1]))
    return results


def _read_line(proc: subprocess.Popen[str], timeout: float) -> str:
    """The process's next stdout line, or "" if it says nothing for ``timeout`` seconds."""
    assert proc.stdout is not None
    ready, _, _ = select.select([proc.stdout], [], [], timeout)
    return proc.stdout.readline() if ready else ""


def test_browse_finds_advertiser_on_other_host(net: Network, tmp_path: Path) -> None:
    mesh_id, node_id = secrets.token_hex(8), secrets.token_hex(8)
    here, there = net.hosts
    addr = f"{here.addr}:{QUIC_PORT}"
    log = (tmp_path / "advertiser.log").open("w")
    adv = subprocess.Popen(_in_host(here.netns, ADVERTISE, mesh_id, node_id, addr),
                           stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=log,
                           text=True)  # fmt: skip
    try:
        assert _read_line(adv, PROCESS_TIMEOUT).startswith("registered meshllm-")
        found, everything, other = _browse_all(there.netns, mesh_id, "", secrets.token_hex(8))
        assert found == [{"mesh_id": mesh_id, "node_id": node_id, "addrs": [addr]}], found
        assert found[0] in everything
        assert other == []
    finally:
        assert adv.stdin is not None
        adv.stdin.close()  # the advertiser says goodbye and exits
        try:
            adv.wait(PROCESS_TIMEOUT)
        except subprocess.TimeoutExpired:
            adv.kill()
            adv.wait()
        log.close()
    assert adv.returncode == 0, (tmp_path / "advertiser.log").read_text()
