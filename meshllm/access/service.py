"""The mesh's API keys and rate limits on one node, kept mesh-wide by gossip.

* **Keys** are owner-signed statements (:mod:`meshllm.access.keys`), kept in
  ``<state-dir>/keys.msgpack``.  A new statement goes to every linked peer at once on a
  ``keys`` frame, and each node that learns something from it passes it on, so a key or
  its revocation reaches the whole mesh within one hop per link, in milliseconds.  Each
  usage report also carries the sender's key-book digest: a peer whose digest differs
  gets this node's statements (at most every :data:`RESYNC_S` per peer), so a node that
  missed a flood (offline, partitioned, new) catches up within a report interval.
* **Usage** (:mod:`meshllm.access.limits`): every ``usage_interval`` each node sends its
  own per-key counts of the last minute to its peers on a ``usage`` frame; nothing is
  relayed, a link says who sent it, and a report older than :data:`STALE_REPORTS`
  intervals is ignored.

:class:`MeshAccess` is what the HTTP API's :class:`~meshllm.proxy.access.AccessPolicy`
asks, and what ``/api/keys`` changes.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from meshllm.access.key_store import load_statements, save_statements
from meshllm.access.keys import (
    SCOPES,
    ApiKey,
    KeyBook,
    KeyRefused,
    create_statement,
    is_key_id,
    new_key,
    revoke_statement,
)
from meshllm.access.limits import RateLimiter, Refusal
from meshllm.errors import AuthError, CommandError, ConfigError
from meshllm.gossip import Gossip, Link
from meshllm.owner import OwnerKey
from meshllm.serving.durations import period
from meshllm.wire import Frame, FrameType, make_frame

log = logging.getLogger(__name__)

STALE_REPORTS = 3  # usage report intervals after which a peer's counts are ignored
RESYNC_S = 10.0  # seconds between two sends of the whole key book to one peer
STATEMENTS_PER_FRAME = 256  # key statements in one frame (each about 300 bytes)
MAX_STATEMENTS_IN = 2 * 1024  # statements taken from one frame: a full book, creates and revokes
PRUNE_INTERVAL_S = 3600.0  # seconds between prunes of long-expired keys
MAX_EXPIRY_S = 100 * 365 * 86400.0  # a key's lifetime at most: beyond it, say "never"
REFUSAL_REASONS = {  # a refusal's error code -> its reason in the metrics
    "missing_api_key": "no_key",
    "invalid_api_key": "invalid_key",
    "revoked_api_key": "revoked",
    "expired_api_key": "expired",
    "insufficient_scope": "scope",
    "model_not_allowed": "model",
}


class MeshAccess:
    """This node's view of the mesh's keys and their usage."""

    def __init__(
        self,
        gossip: Gossip,
        *,
        mesh_id: str,
        owner_public_key: bytes,
        owner_key: Callable[[], OwnerKey | None],
        keys_path: Path | None,
        admin_token: str,
        listen_all: bool,
        usage_interval: float,
    ) -> None:
        """``owner_key``: the mesh owner key when this machine holds it (read afresh);
        ``keys_path``: where the book is kept (None: in memory, a lite client)."""
        self.admin_token = admin_token
        self.on_refused: Callable[[int, str, str, str], None] = lambda *refusal: None
        """Told of every refusal: status, reason, path, key id (the records keep them)."""
        self.book = KeyBook(owner_public_key, mesh_id)
        self.limiter = RateLimiter(STALE_REPORTS * usage_interval)
        self._gossip = gossip
        self._mesh_id = mesh_id
        self._owner_key = owner_key
        self._keys_path = keys_path
        self._listen_all = listen_all
        self._interval = usage_interval
        self._known: set[bytes] = set()  # signatures of the statements in the book
        self._resynced: dict[str, float] = {}  # peer -> when it was last sent the book
        self._task: asyncio.Task[None] | None = None
        if keys_path is not None:
            for statement in load_statements(keys_path):
                self._take(statement)
        gossip.add_handler(FrameType.KEYS, self._on_keys)
        gossip.add_handler(FrameType.USAGE, self._on_usage)

    # the HTTP API's AccessPolicy

    def keys_required(self) -> bool:
        return self._listen_all or bool(self.book)

    def authenticate(self, presented: str | None) -> ApiKey:
        return self.book.authenticate(presented, time.time())

    def refusal(self, key: ApiKey, scope: str, model: str | None) -> KeyRefused | None:
        return self.book.check(key, scope=scope, model=model)

    def admit(self, key: ApiKey) -> Refusal | None:
        now = self._gossip.now()
        refused = self.limiter.check(key, now)
        if refused is None:
            self.limiter.admit(key.id, now)
        return refused

    def tokens_used(self, key_id: str, tokens: int) -> None:
        self.limiter.tokens(key_id, tokens, self._gossip.now())

    def refused(self, status: int, reason: str, path: str, key_id: str) -> None:
        self.on_refused(status, REFUSAL_REASONS.get(reason, reason), path, key_id)

    # /api/keys

    def listed(self) -> list[dict[str, Any]]:
        """Every key (never its secret or hash), with its mesh-wide usage this minute."""
        now = self._gossip.now()
        keys = self.book.keys(time.time())
        for key in keys:
            usage = self.limiter.totals(key["id"], now)
            key["usage_minute"] = {"requests": usage.requests, "tokens": usage.tokens}
        return keys

    def create(self, fields: dict[str, Any]) -> dict[str, Any]:
        """A new key from ``fields`` (scope, models, expires, rpm, tpm, name), signed with
        the owner key and sent mesh-wide: its public record, and its text, which is never
        shown again.  Raises CommandError (400) for a bad field, AuthError without the
        owner key."""
        now = time.time()
        text, key = key_from_fields(fields, now)
        owner = self._require_owner("create an API key")
        self._publish(create_statement(owner, key, mesh_id=self._mesh_id, now=now))
        return {**key.public(), "key": text}

    def revoke(self, key_id: str) -> dict[str, Any]:
        """Revoke ``key_id`` mesh-wide (again: a no-op).  Raises CommandError (404: no
        such key)."""
        known = [k for k in self.book.keys(0) if k["id"] == key_id] if is_key_id(key_id) else []
        if not known:
            raise CommandError(f"no API key {key_id}", 404)
        if known[0]["revoked"]:
            return {"id": key_id, "revoked": True}
        owner = self._require_owner("revoke an API key")
        self._publish(revoke_statement(owner, key_id, mesh_id=self._mesh_id, now=time.time()))
        return {"id": key_id, "revoked": True}

    def _require_owner(self, what: str) -> OwnerKey:
        owner = self._owner_key()
        if owner is None:
            raise AuthError(
                f"only the mesh owner can {what}: this machine has no owner key; run "
                "`meshllm owner import KEY` here with the key `meshllm owner export` prints "
                "on the seed"
            )
        return owner

    def _publish(self, statement: dict) -> None:
        if not self._take(statement):
            raise CommandError("the key book refused the statement", 409)
        self._save()
        self._gossip.broadcast(make_frame(FrameType.KEYS, s=[statement]))

    # gossip

    def start(self) -> None:
        """Report usage every interval (and prune expired keys now and then)."""
        if self._task is None:
            self._task = asyncio.create_task(self._run(), name="usage reports")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None

    def forget(self, node_id: str) -> None:
        """``node_id`` died or left: its usage no longer counts."""
        self.limiter.forget(node_id)
        self._resynced.pop(node_id, None)

    def _on_usage(self, link: Link, frame: Frame) -> None:
        try:
            self.limiter.record(link.node_id, frame.get("u"), self._gossip.now())
        except ValueError as exc:
            log.debug("ignoring a usage report from %s: %s", link.node_id, exc)
        digest = frame.get("d")
        if isinstance(digest, bytes) and digest != self.book.digest():
            self._resync(link)

    def _on_keys(self, link: Link, frame: Frame) -> None:
        statements = frame.get("s")
        if not isinstance(statements, list):
            return
        news = [s for s in statements[:MAX_STATEMENTS_IN] if self._take(s, link.node_id)]
        if not news:
            return
        self._save()
        frame = make_frame(FrameType.KEYS, s=news)
        for node_id in self._gossip.broadcast(frame, exclude=link.node_id):
            self._resynced.pop(node_id, None)

    def _take(self, statement: object, sender: str = "") -> bool:
        """Merge one statement; True when the book learnt something from it."""
        sig = statement.get("sig") if isinstance(statement, dict) else None
        if not isinstance(sig, bytes) or sig in self._known:
            return False  # known already: skip the signature check
        try:
            changed = self.book.add(statement, time.time())
        except AuthError as exc:
            log.warning("ignoring a key statement%s: %s", f" from {sender}" if sender else "", exc)
            return False
        self._known.add(sig)
        return changed

    def _resync(self, link: Link) -> None:
        now = self._gossip.now()
        if now - self._resynced.get(link.node_id, -RESYNC_S) < RESYNC_S:
            return
        self._resynced[link.node_id] = now
        statements = self.book.statements()
        for i in range(0, len(statements), STATEMENTS_PER_FRAME):
            link.send(make_frame(FrameType.KEYS, s=statements[i : i + STATEMENTS_PER_FRAME]))

    def _save(self) -> None:
        if self._keys_path is None:
            return
        try:
            save_statements(self._keys_path, self.book.statements())
        except (OSError, ConfigError) as exc:
            log.error("cannot save the API keys to %s: %s", self._keys_path, exc)

    async def _run(self) -> None:
        pruned_at = -PRUNE_INTERVAL_S
        while True:
            now = self._gossip.now()
            report = self.limiter.report(now)
            self._gossip.broadcast(make_frame(FrameType.USAGE, u=report, d=self.book.digest()))
            if now - pruned_at >= PRUNE_INTERVAL_S:
                pruned_at = now
                if self.book.prune(time.time()):
                    self._known = {s["sig"] for s in self.book.statements()}
                    self._save()
            await asyncio.sleep(self._interval)


def key_from_fields(fields: dict[str, Any], now: float) -> tuple[str, ApiKey]:
    """A new key from an ``/api/keys`` body (:func:`parse_key_fields`): its text and its
    record.  Raises CommandError (400)."""
    try:
        return new_key(**parse_key_fields(fields, now), now=now)
    except ConfigError as exc:  # a bad model name, say
        raise CommandError(str(exc), 400) from None


def parse_key_fields(fields: dict[str, Any], now: float) -> dict[str, Any]:
    """The arguments of :func:`~meshllm.access.keys.new_key` from an ``/api/keys`` body:
    ``scope``, ``models`` (list or comma-separated), ``expires`` (a duration such as
    ``30d``, from now), ``rpm``, ``tpm``, ``name``.  Raises CommandError (400)."""
    unknown = set(fields) - {"scope", "models", "expires", "rpm", "tpm", "name"}
    if unknown:
        raise CommandError(f"unknown key fields: {', '.join(sorted(unknown))}", 400)
    scope = fields.get("scope", "inference")
    if scope not in SCOPES:
        raise CommandError(f"scope must be one of {', '.join(SCOPES)}", 400)
    models = fields.get("models") or []
    if isinstance(models, str):
        models = [m.strip() for m in models.split(",") if m.strip()]
    if not isinstance(models, list) or not all(isinstance(m, str) for m in models):
        raise CommandError("models must be a list of model names", 400)
    expires = fields.get("expires")
    if expires is not None:
        seconds = period(expires) if isinstance(expires, str) else _seconds(expires)
        if not seconds or seconds > MAX_EXPIRY_S:
            raise CommandError("expires must be a span of time ahead, such as 12h or 30d", 400)
        expires = now + seconds
    limits = {}
    for name in ("rpm", "tpm"):
        value = fields.get(name)
        if value is not None and (
            not isinstance(value, int) or isinstance(value, bool) or value <= 0
        ):
            raise CommandError(f"{name} must be a positive whole number", 400)
        limits[name] = value
    name = fields.get("name", "")
    if not isinstance(name, str):
        raise CommandError("name must be text", 400)
    return {"name": name, "scope": scope, "models": tuple(models), "expires": expires, **limits}


def _seconds(value: object) -> float | None:
    """A positive finite number of seconds, or None."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    return float(value) if 0 < value < math.inf else None
