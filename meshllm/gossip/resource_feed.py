"""Live host resources as ephemeral gossip: each node's signed report, every few seconds.

A node reads its resources (CPU, load, RAM, GPUs) every ``REPORT_INTERVAL_S`` and sends
them, signed (:func:`~meshllm.gossip.resource_book.encode_report`), to every linked
peer on a ``resources`` frame.  Nothing is relayed, stored or ranked: the announcement
keeps its rank for what changes rarely, and a node's figures are only ever as old as
its last report.  Each receiver checks the report against the sender's key (from its
announcement, and it must be the link's own node) and keeps it in a
:class:`~meshllm.gossip.resource_book.ResourceBook`: ``live``, then ``stale`` when
reports stop, then ``unknown`` (and dropped) when the node stays quiet or leaves.
The report's ``seq`` is the wall clock in ms, so a restarted node's reports are newer.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable
from typing import Any

from meshllm.errors import FrameError
from meshllm.gossip.announcement import Signer
from meshllm.gossip.connection import Link
from meshllm.gossip.pump import Gossip
from meshllm.gossip.resource_book import (
    REPORT_INTERVAL_S,
    ResourceBook,
    ResourceView,
    decode_report,
    encode_report,
)
from meshllm.wire import Frame, FrameType, make_frame

log = logging.getLogger(__name__)

STALE_REPORTS = 3  # reports missed before a node's figures are shown stale
FORGET_REPORTS = 12  # ... and then unknown, and forgotten


class ResourceFeed:
    """Sends this node's resource reports and keeps its peers'."""

    def __init__(
        self,
        gossip: Gossip,
        signer: Signer,
        read: Callable[[], dict[str, Any]],
        *,
        interval: float = REPORT_INTERVAL_S,
    ) -> None:
        """``read``: this host's resources now (blocking is fine: it runs on a thread).
        Figures are stale after STALE_REPORTS missed reports, unknown after
        FORGET_REPORTS."""
        self.book = ResourceBook(STALE_REPORTS * interval, FORGET_REPORTS * interval)
        self._gossip = gossip
        self._signer = signer
        self._read = read
        self._interval = interval
        self._node_id = gossip.state.me.node_id
        self._task: asyncio.Task[None] | None = None
        self._wake = asyncio.Event()
        self._told: set[str] = set()  # the peers linked when this node last reported
        gossip.add_handler(FrameType.RESOURCES, self.on_frame)

    def start(self) -> None:
        """Report now and every ``interval`` seconds."""
        if self._task is None:
            self._task = asyncio.create_task(self._run(), name="resource reports")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None

    def view(self, node_id: str) -> ResourceView:
        """``node_id``'s resources as last reported (this node's own included)."""
        return self.book.view(node_id, self._gossip.now())

    def report_now(self) -> None:
        """Report at once (a peer joined: it should not wait a whole interval to know)."""
        self._wake.set()

    def forget(self, node_id: str) -> None:
        """``node_id`` died or left: its figures are unknown from now on."""
        self.book.forget(node_id)

    def on_frame(self, link: Link, frame: Frame) -> None:
        """A peer's report: kept if it is its own, signed by its key, and newer."""
        peer = self._gossip.state.peers.get(link.node_id)
        if peer is None:
            return
        try:
            node_id, seq, resources = decode_report(frame.get("r"), peer.public_key)
        except FrameError as exc:
            log.debug("ignoring a resource report from %s: %s", link.node_id, exc)
            return
        if node_id != link.node_id:
            log.debug("ignoring %s's report relayed by %s", node_id, link.node_id)
            return
        self.book.record(node_id, seq, resources, self._gossip.now())
        if node_id not in self._told:  # a peer new to us: it has not heard ours yet
            self._told.add(node_id)
            self.report_now()

    async def _run(self) -> None:
        while True:
            try:
                resources = await asyncio.to_thread(self._read)
                seq = time.time_ns() // 1_000_000
                report = encode_report(self._node_id, resources, seq, self._signer)
            except (OSError, ValueError) as exc:  # a sensor in trouble: try next time
                log.warning("cannot report this host's resources: %s", exc)
            else:
                now = self._gossip.now()
                self.book.record(self._node_id, seq, resources, now)
                self.book.prune(now)
                self._told = self._gossip.broadcast(make_frame(FrameType.RESOURCES, r=report))
            self._wake.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), self._interval)
