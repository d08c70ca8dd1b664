"""API keys: owner-signed statements merged into a book that checks presented keys (pure).

A key's text is ``mk-<id>-<secret>``: ``id`` is 12 random lowercase hex chars (not secret: it
names the key in logs, listings and rate limits), ``secret`` 32 random bytes in base64url
without padding.  Only ``sha256(secret)`` is ever stored or gossiped.

The mesh owner creates and revokes keys with statements of kind :data:`KEY_KIND`
(:func:`meshllm.owner.sign_statement`)::

    {"op": "create", "id", "hash", "name", "scope", "models", "expires", "rpm", "tpm", "created"}
    {"op": "revoke", "id"}

:class:`KeyBook` merges them.  Merge rules (a grow-only set where revocation wins), so every node
that has seen the same statements agrees, whatever the order they came in:

* a create adds its key; the same create again (even re-signed) is old news;
* a revocation is final: it is kept even before its create arrives, and the create then stays
  revoked;
* a second create for an id with *different* content is refused.  Agreement holds for statement
  sets without such conflicts: the owner never signs two for one id (ids are 48 random bits);
* the book holds at most ``capacity`` records (ids, revoked ones included); a create beyond that
  is refused, a revocation is always taken;
* :meth:`KeyBook.prune` forgets keys expired more than :data:`EXPIRED_KEEP_S` ago with their
  revocations, and :meth:`KeyBook.add` ignores such creates, so pruning never fights gossip.

Statements never go stale (``max_age`` is infinite) and no nonce store guards them: they are
kept and re-gossiped forever, and a replay is harmless because the merge is idempotent.  Nothing
here reads a clock: ``now`` (unix seconds) is passed in.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import math
import re
import secrets
from dataclasses import dataclass
from typing import Any

import msgpack

from meshllm.errors import AuthError, ConfigError
from meshllm.owner import OwnerKey, sign_statement, verify_statement

KEY_KIND = "key"
KEY_PREFIX = "mk-"
SCOPES = ("inference", "admin")  # admin includes inference
ID_CHARS = 12  # hex chars of a key id: 48 random bits, unique among a mesh's keys
SECRET_BYTES = 32  # 256 random bits: no guessing, whatever the hash
SECRET_CHARS = 43  # base64url of SECRET_BYTES, unpadded
KEY_TEXT_CHARS = len(KEY_PREFIX) + ID_CHARS + 1 + SECRET_CHARS
HASH_BYTES = 32  # sha256
MAX_KEYS = 1024  # records a book holds, revoked included: far above any real mesh's keys
EXPIRED_KEEP_S = 7 * 86400  # an expired key is listed (as expired) this long, then forgotten
MAX_NAME_CHARS = 64  # a key's name, for listings and logs
MAX_MODELS = 64  # entries in a key's model allow-list
MAX_MODEL_CHARS = 200  # one allow-list entry
MAX_RATE = 10**9  # rpm and tpm: far above any real limit, small enough for any counter

_ID_START = len(KEY_PREFIX)
_ID_END = _ID_START + ID_CHARS
_ID = re.compile(r"[0-9a-f]{12}")
_SECRET = re.compile(r"[A-Za-z0-9_-]{43}")
_NAME = re.compile(r"(?:[A-Za-z0-9_][A-Za-z0-9_.:@+=,() -]*)?")  # may be empty
# Allow-list entries travel into logs and headers.  The charset is that of model names in
# announcements, spelt out here rather than imported: a key statement lives forever, so which
# ones are valid must not move when announcement rules do.
_MODEL_SEGMENT = r"[A-Za-z0-9_][A-Za-z0-9_.:@+=,()\[\] -]*"
_MODEL = re.compile(rf"{_MODEL_SEGMENT}(?:/{_MODEL_SEGMENT})*")
_CREATE_FIELDS = frozenset(
    {"op", "id", "hash", "name", "scope", "models", "expires", "rpm", "tpm", "created"}
)
_REVOKE_FIELDS = frozenset({"op", "id"})
_STATEMENT_FIELDS = ("kind", "mesh_id", "iat", "nonce", "body", "sig")


class KeyRefused(AuthError):
    """A request refused for its API key: ``status`` 401 (no valid key) or 403 (the key does
    not cover the request); ``code`` is the machine-readable reason.  The message never holds
    the secret."""

    def __init__(self, status: int, message: str, code: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.code = code


@dataclass(frozen=True)
class ApiKey:
    """One API key as the mesh knows it: everything but the secret itself."""

    id: str
    name: str
    scope: str
    models: tuple[str, ...]  # allowed models; empty: all of them
    expires: float | None  # unix seconds; None: never
    rpm: int | None  # requests per minute, mesh-wide; None: no limit
    tpm: int | None  # tokens per minute, mesh-wide; None: no limit
    created: float  # unix seconds
    secret_hash: bytes  # sha256 of the secret

    def public(self) -> dict[str, Any]:
        """What a listing shows: never the hash."""
        return {
            "id": self.id,
            "name": self.name,
            "scope": self.scope,
            "models": list(self.models),
            "expires": self.expires,
            "rpm": self.rpm,
            "tpm": self.tpm,
            "created": self.created,
        }

    def expired(self, now: float) -> bool:
        return self.expires is not None and now >= self.expires

    def covers(self, scope: str) -> bool:
        """Whether this key's scope includes ``scope`` (admin includes inference)."""
        if scope not in SCOPES:
            raise ValueError(f"unknown scope {scope!r}")
        return self.scope == "admin" or self.scope == scope

    def allows_model(self, model: str) -> bool:
        return not self.models or model in self.models


def hash_secret(secret: bytes) -> bytes:
    # A fast hash is right here: the secret is 256 random bits, so no hash speed makes
    # guessing it feasible.  Slow hashes (argon2, bcrypt) protect low-entropy passwords, and
    # would cost CPU on every request: a denial of service for free.
    return hashlib.sha256(secret).digest()


def new_key(
    *,
    name: str,
    scope: str,
    models: tuple[str, ...] | list[str] = (),
    expires: float | None = None,
    rpm: int | None = None,
    tpm: int | None = None,
    now: float,
) -> tuple[str, ApiKey]:
    """A fresh key: its text (shown once, to the owner) and its record.  Bad arguments raise
    :class:`ConfigError` with a one-line reason."""
    secret = secrets.token_bytes(SECRET_BYTES)
    key_id = secrets.token_hex(ID_CHARS // 2)
    body = {
        "op": "create",
        "id": key_id,
        "hash": hash_secret(secret),
        "name": name,
        "scope": scope,
        "models": list(models),
        "expires": None if expires is None else float(expires),
        "rpm": rpm,
        "tpm": tpm,
        "created": float(now),
    }
    try:
        key = parse_create(body)
    except AuthError as exc:
        raise ConfigError(f"bad key: {exc}") from None
    return f"{KEY_PREFIX}{key_id}-{_b64(secret)}", key


def create_statement(owner: OwnerKey, key: ApiKey, *, mesh_id: str, now: float) -> dict:
    """The owner-signed statement that creates ``key`` in mesh ``mesh_id``."""
    body = {
        "op": "create",
        "id": key.id,
        "hash": key.secret_hash,
        "name": key.name,
        "scope": key.scope,
        "models": list(key.models),
        "expires": key.expires,
        "rpm": key.rpm,
        "tpm": key.tpm,
        "created": key.created,
    }
    return sign_statement(owner, KEY_KIND, body, now, mesh_id=mesh_id)


def revoke_statement(owner: OwnerKey, key_id: str, *, mesh_id: str, now: float) -> dict:
    """The owner-signed statement that revokes the key ``key_id`` for good."""
    if not is_key_id(key_id):
        raise ConfigError(f"bad key id {key_id!r}: not {ID_CHARS} lowercase hex chars")
    return sign_statement(owner, KEY_KIND, {"op": "revoke", "id": key_id}, now, mesh_id=mesh_id)


def is_key_id(value: object) -> bool:
    return isinstance(value, str) and bool(_ID.fullmatch(value))


def key_id_of(text: str | None) -> str | None:
    """The id of a presented key, for logs, without its secret; None if it has none."""
    if not isinstance(text, str):
        return None
    text = text.strip()
    key_id, dash = text[_ID_START:_ID_END], text[_ID_END : _ID_END + 1]
    return key_id if text.startswith(KEY_PREFIX) and is_key_id(key_id) and dash == "-" else None


def parse_create(body: dict) -> ApiKey:
    """The key a create body describes; :class:`AuthError` unless every field is right."""
    if set(body) != _CREATE_FIELDS:
        # Unknown fields are refused, not ignored: a newer owner's restriction that an older
        # node skipped would let requests through.  Failing closed keeps keys no wider.
        raise AuthError(f"key statement fields {sorted(body)} are not {sorted(_CREATE_FIELDS)}")
    key_id = body["id"]
    if not is_key_id(key_id):
        raise AuthError(f"key id is not {ID_CHARS} lowercase hex chars")
    secret_hash = body["hash"]
    if not isinstance(secret_hash, bytes) or len(secret_hash) != HASH_BYTES:
        raise AuthError(f"key {key_id}: hash is not {HASH_BYTES} bytes")
    name = body["name"]
    if not (isinstance(name, str) and len(name) <= MAX_NAME_CHARS and _NAME.fullmatch(name)):
        raise AuthError(f"key {key_id}: name is not at most {MAX_NAME_CHARS} safe characters")
    scope = body["scope"]
    if not isinstance(scope, str) or scope not in SCOPES:
        raise AuthError(f"key {key_id}: scope is not one of {', '.join(SCOPES)}")
    return ApiKey(
        id=key_id,
        name=name,
        scope=scope,
        models=_models(key_id, body["models"]),
        expires=_time(key_id, "expires", body["expires"], optional=True),
        rpm=_rate(key_id, "rpm", body["rpm"]),
        tpm=_rate(key_id, "tpm", body["tpm"]),
        created=_time(key_id, "created", body["created"], optional=False),
        secret_hash=secret_hash,
    )


def parse_revoke(body: dict) -> str:
    """The id a revoke body names; :class:`AuthError` unless it is well formed."""
    if set(body) != _REVOKE_FIELDS:
        raise AuthError(f"key revocation fields {sorted(body)} are not {sorted(_REVOKE_FIELDS)}")
    if not is_key_id(body["id"]):
        raise AuthError(f"revoked key id is not {ID_CHARS} lowercase hex chars")
    return body["id"]


def _models(key_id: str, value: Any) -> tuple[str, ...]:
    if not isinstance(value, list | tuple) or len(value) > MAX_MODELS:
        raise AuthError(f"key {key_id}: models is not a list of at most {MAX_MODELS}")
    for model in value:
        if not (isinstance(model, str) and len(model) <= MAX_MODEL_CHARS):
            raise AuthError(f"key {key_id}: a model is not a name of {MAX_MODEL_CHARS} chars")
        if not _MODEL.fullmatch(model):
            raise AuthError(f"key {key_id}: a model name holds unsafe characters")
    if len(set(value)) != len(value):
        raise AuthError(f"key {key_id}: a model is listed twice")
    return tuple(value)


def _time(key_id: str, field: str, value: Any, *, optional: bool) -> float | None:
    if value is None and optional:
        return None
    if not isinstance(value, int | float) or isinstance(value, bool) or not math.isfinite(value):
        raise AuthError(f"key {key_id}: {field} is not a finite time")
    return float(value)


def _rate(key_id: str, field: str, value: Any) -> int | None:
    if value is None:
        return None
    if not isinstance(value, int) or isinstance(value, bool) or not 0 < value <= MAX_RATE:
        raise AuthError(f"key {key_id}: {field} is not a whole number in 1..{MAX_RATE}")
    return value


def _b64(raw: bytes) -> str:
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode()


def _parse_text(text: str) -> tuple[str, bytes] | None:
    """``(id, secret)`` of a key's text, or None if it is not one."""
    if len(text) != KEY_TEXT_CHARS or not text.startswith(KEY_PREFIX):
        return None
    key_id, dash, secret_text = text[_ID_START:_ID_END], text[_ID_END], text[_ID_END + 1 :]
    if not (_ID.fullmatch(key_id) and dash == "-" and _SECRET.fullmatch(secret_text)):
        return None
    try:
        secret = base64.urlsafe_b64decode(secret_text + "=")
    except (binascii.Error, ValueError):
        return None
    if _b64(secret) != secret_text:  # one text per key: unused low bits must be zero
        return None
    return key_id, secret


def _content(key: ApiKey) -> bytes:
    """What a create means, whoever signed it when: what books compare."""
    fields = [
        "create",
        key.id,
        key.secret_hash,
        key.name,
        key.scope,
        list(key.models),
        key.expires,
        key.rpm,
        key.tpm,
        key.created,
    ]
    return msgpack.packb(fields, use_bin_type=True)


def _long_expired(key: ApiKey, now: float) -> bool:
    return key.expires is not None and now - key.expires > EXPIRED_KEEP_S


def _copy(statement: dict) -> dict:
    body = statement["body"]
    copied = {k: (list(v) if isinstance(v, list) else v) for k, v in body.items()}
    return {**statement, "body": copied}


@dataclass(frozen=True)
class _Create:
    statement: dict
    key: ApiKey


class KeyBook:
    """The API keys of one mesh: the merge of the owner's key statements (see the module
    docstring for the rules), and the checks of presented keys."""

    def __init__(self, owner_public_key: bytes, mesh_id: str, capacity: int = MAX_KEYS) -> None:
        self.owner_public_key = owner_public_key
        self.mesh_id = mesh_id
        self.capacity = capacity
        self._creates: dict[str, _Create] = {}
        self._revokes: dict[str, dict] = {}  # key id -> its revocation statement
        self._digest: bytes | None = None  # digest(), until the book changes

    def __len__(self) -> int:
        """Records held: ids with a create, a revocation or both."""
        return len(self._creates.keys() | self._revokes.keys())

    def __bool__(self) -> bool:
        """Whether any key is configured: one that is not revoked (expired ones count: an
        expired key must not reopen a node that required keys)."""
        return any(key_id not in self._revokes for key_id in self._creates)

    def add(self, statement: object, now: float) -> bool:
        """Verify and merge one statement.  True when it changed the book (a new key or a new
        revocation); False for one already known, or a create so long expired that
        :meth:`prune` would drop it.  A bad or conflicting statement, or a new key when the
        book is full, raises :class:`AuthError`."""
        body = verify_statement(
            self.owner_public_key,
            statement,
            now,
            math.inf,
            mesh_id=self.mesh_id,
            kind=KEY_KIND,
        )
        assert isinstance(statement, dict)  # verify_statement checked it
        stored = _copy({field: statement[field] for field in _STATEMENT_FIELDS})
        stored["iat"] = float(stored["iat"])
        op = body.get("op")
        if op == "create":
            return self._add_create(_Create(stored, parse_create(body)), now)
        if op == "revoke":
            return self._add_revoke(parse_revoke(body), stored)
        raise AuthError("key statement op is neither create nor revoke")

    def _add_create(self, create: _Create, now: float) -> bool:
        key = create.key
        held = self._creates.get(key.id)
        if held is not None:
            if held.key != key:
                raise AuthError(f"key {key.id} already exists with other settings")
            return False
        if _long_expired(key, now):
            return False
        if key.id not in self._revokes and len(self) >= self.capacity:
            raise AuthError(f"key {key.id} refused: key book full ({self.capacity} keys)")
        self._creates[key.id] = create
        self._digest = None
        return True

    def _add_revoke(self, key_id: str, statement: dict) -> bool:
        if key_id in self._revokes:
            return False
        self._revokes[key_id] = statement  # even when full: a revocation must win
        self._digest = None
        return True

    def statements(self) -> list[dict]:
        """Every statement held, to persist and gossip: by key id, each create before its
        revocation."""
        held: list[tuple[str, int, dict]] = [(i, 0, c.statement) for i, c in self._creates.items()]
        held += [(i, 1, s) for i, s in self._revokes.items()]
        return [_copy(statement) for _, _, statement in sorted(held, key=lambda h: h[:2])]

    def digest(self) -> bytes:
        """16 bytes on which two books that mean the same agree (for anti-entropy).  It covers
        what the statements say, not their signatures: the same key signed twice is one.
        Kept until the book changes: every usage report a node gets is checked against it."""
        if self._digest is not None:
            return self._digest
        entries = [_content(c.key) for c in self._creates.values()]
        entries += [msgpack.packb(["revoke", key_id]) for key_id in self._revokes]
        packed = msgpack.packb(sorted(entries), use_bin_type=True)
        self._digest = hashlib.sha256(packed).digest()[:16]
        return self._digest

    def authenticate(self, text: str | None, now: float) -> ApiKey:
        """The key whose text was presented; :class:`KeyRefused` (401) if there is none, it is
        malformed, unknown, its secret wrong, or it is revoked or expired."""
        if text is None or not text.strip():
            raise KeyRefused(401, "no API key: send Authorization: Bearer KEY", "missing_api_key")
        parsed = _parse_text(text.strip())
        if parsed is None:
            raise KeyRefused(401, "malformed API key: expected mk-<id>-<secret>", "invalid_api_key")
        key_id, secret = parsed
        create = self._creates.get(key_id)
        # Unknown id and wrong secret read alike: the answer tells nobody which ids exist.
        if create is None or not hmac.compare_digest(hash_secret(secret), create.key.secret_hash):
            raise KeyRefused(401, f"invalid API key {key_id}", "invalid_api_key")
        if key_id in self._revokes:
            raise KeyRefused(401, f"API key {key_id} was revoked", "revoked_api_key")
        if create.key.expired(now):
            raise KeyRefused(401, f"API key {key_id} has expired", "expired_api_key")
        return create.key

    def check(self, key: ApiKey, *, scope: str, model: str | None) -> KeyRefused | None:
        """Why ``key`` may not make a request of ``scope`` for ``model`` (403), or None.

        ``model`` None means the request names no model (a listing, say), which any key with
        ``scope`` may make.  The caller must pass the model whenever the request names one:
        passing None for it would skip the allow-list.  A ``scope`` not in :data:`SCOPES` is
        the caller's bug: :class:`ValueError`."""
        if not key.covers(scope):
            return KeyRefused(
                403, f"API key {key.id} has scope {key.scope}, not {scope}", "insufficient_scope"
            )
        if model is not None and not key.allows_model(model):
            return KeyRefused(
                403, f"API key {key.id} may not use model {model!r}", "model_not_allowed"
            )
        return None

    def keys(self, now: float) -> list[dict[str, Any]]:
        """Every key's public listing, with ``revoked`` and ``expired``, oldest first."""
        creates = sorted(self._creates.values(), key=lambda c: (c.key.created, c.key.id))
        return [
            {**c.key.public(), "revoked": c.key.id in self._revokes, "expired": c.key.expired(now)}
            for c in creates
        ]

    def prune(self, now: float) -> int:
        """Forget keys that expired more than :data:`EXPIRED_KEEP_S` ago, with their
        revocations (an expired key never authenticates, so its revocation no longer
        matters).  Returns how many statements were dropped."""
        gone = [key_id for key_id, c in self._creates.items() if _long_expired(c.key, now)]
        dropped = 0
        for key_id in gone:
            del self._creates[key_id]
            dropped += 1 + (self._revokes.pop(key_id, None) is not None)
        if dropped:
            self._digest = None
        return dropped
