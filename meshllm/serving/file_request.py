"""The QUIC half of a model copy: asking a peer for a grant, and answering such a request.

The fetching node sends ``{t: file, name}`` on a new stream of its authenticated
link; the node that has the model answers ``{t: file, grant, cert_sha256}`` (the
one-time grant and the pin of its file server's certificate) or ``{t: file,
message}``.  The bytes then go over TLS/TCP (:mod:`meshllm.serving.file_client`,
:mod:`meshllm.serving.file_server`; the handshake is in
:mod:`meshllm.serving.transfer`).

A grant is a peer's word: the fetcher checks it is for the model it asked for,
of the size and sha256 that peer announced, before a byte is copied, so a
peer cannot overwrite another model or send an unbounded file.
"""

from __future__ import annotations

import asyncio
import contextlib
from dataclasses import dataclass

from meshllm.errors import FrameError, PeerError, TransferError
from meshllm.serving.file_server import FileServer
from meshllm.serving.transfer import Grant
from meshllm.wire import Frame, FrameStream, FrameType, make_frame

GRANT_TIMEOUT = 60.0  # seconds to wait for a grant: the peer may hash a large file first


@dataclass(frozen=True, slots=True)
class Offer:
    """What the fetcher expects of a grant: the model's name, and what its holder
    announced of it (size, sha256 hex), where it did."""

    name: str
    size: int | None = None
    sha256_hex: str | None = None


async def request_grant(
    stream: FrameStream, offer: Offer, timeout: float = GRANT_TIMEOUT
) -> tuple[Grant, bytes]:
    """Ask the peer on ``stream`` for ``offer.name``: its checked grant and the pin of its
    file server's certificate.  Raises TransferError (refused, or a grant that does
    not match the offer) or PeerError (the link failed)."""
    try:
        await stream.send(make_frame(FrameType.FILE, name=offer.name))
        reply = await asyncio.wait_for(stream.recv(), timeout)
    except TimeoutError:
        raise TransferError(f"no grant for {offer.name} within {timeout:.0f} s") from None
    finally:
        stream.reset()
    if not reply or reply.get("t") != FrameType.FILE or not reply.get("grant"):
        reason = (reply or {}).get("message", "no grant")
        raise TransferError(f"refused to send {offer.name}: {reason!s:.200}")
    try:
        grant = Grant.from_wire(reply["grant"])
    except FrameError as exc:
        raise TransferError(f"bad grant for {offer.name}: {exc}") from None
    pin = reply.get("cert_sha256")
    if not isinstance(pin, bytes) or len(pin) != 32:
        raise TransferError("grant without a certificate pin")
    check_grant(grant, offer)
    return grant, pin


def check_grant(grant: Grant, offer: Offer) -> None:
    """Refuse a grant for another name, size or digest than the offer (TransferError)."""
    if grant.name != offer.name:
        raise TransferError(f"asked for {offer.name!r}, was granted {grant.name!r}")
    if offer.size is not None and grant.size != offer.size:
        raise TransferError(
            f"{offer.name} was announced with {offer.size} bytes, granted with {grant.size}"
        )
    if offer.sha256_hex is not None and grant.sha256.hex() != offer.sha256_hex:
        raise TransferError(f"{offer.name}'s grant has another sha256 than announced")


async def answer_file_request(stream: FrameStream, head: Frame, files: FileServer) -> None:
    """A peer asks for a model file: answer with a one-time grant, or why not."""
    name = head.get("name")
    grant = await files.issue_grant_async(name) if isinstance(name, str) else None
    with contextlib.suppress(PeerError):
        if grant is None:
            await stream.send(make_frame(FrameType.FILE, message=f"no model {name!r:.100} here"))
        else:
            await stream.send(
                make_frame(FrameType.FILE, grant=grant.to_wire(), cert_sha256=files.cert_sha256)
            )
        await stream.end()
