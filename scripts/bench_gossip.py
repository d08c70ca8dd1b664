#!/usr/bin/env python3
"""Gossip benchmark: N ``meshllm`` daemons on 127.0.0.1 (real processes, real QUIC).

Prints: convergence time after the last node is ready, kill -9 detection time
(until every survivor dropped the victim), graceful-leave time (SIGTERM until
every other node dropped it) and the daemons' resident memory.

    python scripts/bench_gossip.py --nodes 20
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import psutil

from meshllm.testing.cluster import Cluster, NodeProcess, wait_for


def timed_until(predicate, timeout: float, what: str) -> float:
    t0 = time.perf_counter()
    wait_for(predicate, timeout, interval=0.01, what=what)
    return time.perf_counter() - t0


def drops(nodes: list[NodeProcess], victim: NodeProcess):
    return lambda: all(victim.node_id not in n.peer_ids() for n in nodes)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--nodes", type=int, default=20)
    p.add_argument("--probe-interval", type=float, default=15.0)
    p.add_argument("--probe-timeout", type=float, default=5.0)
    p.add_argument("--gossip-interval", type=float, default=5.0)
    args = p.parse_args()
    timings = [
        "--probe-interval", str(args.probe_interval), "--probe-timeout", str(args.probe_timeout),
        "--gossip-interval", str(args.gossip_interval),
    ]  # fmt: skip
    with tempfile.TemporaryDirectory() as tmp, Cluster(Path(tmp), timings) as cluster:
        seed = cluster.add()
        rest = [cluster.add() for _ in range(args.nodes - 1)]  # one join after another
        converge = timed_until(cluster.converged, 120, "convergence")
        print(f"nodes                        {args.nodes}")
        print(f"probe interval / timeout     {args.probe_interval:g} s / {args.probe_timeout:g} s")
        print(f"converged after last join    {converge * 1000:.0f} ms")

        mem = [psutil.Process(n.pid).memory_full_info() for n in cluster.nodes]
        rss = [m.rss / 2**20 for m in mem]
        uss = [m.uss / 2**20 for m in mem]  # without the shared libraries' pages
        print(f"daemon RSS                   median {statistics.median(rss):.1f} MiB, "
              f"max {max(rss):.1f} MiB")  # fmt: skip
        print(f"daemon USS (own pages)       median {statistics.median(uss):.1f} MiB, "
              f"max {max(uss):.1f} MiB")  # fmt: skip

        victim = rest[len(rest) // 2]
        victim.kill()
        survivors = [n for n in cluster.nodes if n.alive()]
        limit = 3 * (args.probe_interval + args.probe_timeout) + 30
        detect = timed_until(drops(survivors, victim), limit, "kill -9 detection")
        print(f"kill -9 seen by all          {detect * 1000:.0f} ms")

        leaver = rest[-1]
        others = [n for n in survivors if n is not leaver]
        t0 = time.perf_counter()
        leaver.proc.send_signal(15)
        wait_for(drops(others, leaver), 60, interval=0.005, what="leave")
        print(f"SIGTERM leave seen by all    {(time.perf_counter() - t0) * 1000:.0f} ms")
        del seed


if __name__ == "__main__":
    main()
