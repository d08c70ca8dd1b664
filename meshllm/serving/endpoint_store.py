"""External endpoints added at run time, kept in ``<state-dir>/endpoints.json``.

The file holds API keys, so it is written with mode 0600, atomically (a temp
file in the same directory, fsynced, then renamed over the old one): a crash
leaves the old list or the new one, never half of either.  Format::

    {"version": 1, "endpoints": [{"id", "url", "kind", "name", "api_key"}]}

An endpoint's id is a hash of its normalized URL, so adding the same server
again (``h:11434``, ``http://H:11434/v1/``) replaces it.  Every field is checked
on the way in (ValueError) and when read back (ConfigError: a file edited by hand).
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from meshllm.errors import ConfigError
from meshllm.gossip.announcement import MAX_ENDPOINTS as ANNOUNCED_MAX
from meshllm.serving.external import AUTO, KINDS, check_api_key, normalize_url

log = logging.getLogger(__name__)

ENDPOINTS_FILE = "endpoints.json"
FORMAT_VERSION = 1
MAX_ENDPOINTS = ANNOUNCED_MAX  # one node fronts no more than its announcement may list
MAX_URL_CHARS = 2048
MAX_NAME_CHARS = 64
ID_CHARS = 12
_NAME = re.compile(rf"[A-Za-z0-9][A-Za-z0-9_.:@+-]{{0,{MAX_NAME_CHARS - 1}}}")


@dataclass(frozen=True, slots=True)
class EndpointRecord:
    """One stored endpoint.  ``api_key`` is a secret: left out of ``repr`` and ``public()``."""

    id: str
    url: str
    kind: str = AUTO
    name: str | None = None
    api_key: str | None = field(default=None, repr=False)

    def public(self) -> dict[str, Any]:
        """The record for an API answer or a log: ``has_api_key`` instead of the key."""
        return {
            "id": self.id,
            "url": self.url,
            "kind": self.kind,
            "name": self.name,
            "has_api_key": self.api_key is not None,
        }

    def to_json(self) -> dict[str, Any]:
        """The record as stored, key included."""
        return {
            "id": self.id,
            "url": self.url,
            "kind": self.kind,
            "name": self.name,
            "api_key": self.api_key,
        }


def canonical_url(url: str) -> str:
    """``url`` as stored: the server root (see ``normalize_url``), scheme and host in
    lower case.  ValueError: not http(s), no host, credentials, a query, too long."""
    if not isinstance(url, str) or not url.strip():
        raise ValueError("endpoint url is empty")
    if len(url) > MAX_URL_CHARS:
        raise ValueError(f"endpoint url is longer than {MAX_URL_CHARS} characters")
    if not url.isprintable() or any(c.isspace() for c in url.strip()):
        raise ValueError("endpoint url has spaces or control characters")
    raw = url.strip() if "://" in url else "http://" + url.strip()
    try:
        parts = urlsplit(raw)
        port = parts.port
        if parts.hostname:  # the host as given; then the path without a trailing /v1
            parts = parts._replace(path=urlsplit(normalize_url(raw)).path)
    except ValueError as exc:
        raise ValueError(f"endpoint url is not a valid URL: {exc}") from None
    if parts.scheme.lower() not in ("http", "https"):
        raise ValueError(f"endpoint url must be http:// or https://, not {parts.scheme}://")
    if parts.username is not None or parts.password is not None:
        raise ValueError("endpoint url must not hold credentials; give an api_key instead")
    host = parts.hostname
    if not host:
        raise ValueError("endpoint url has no host")
    if parts.query or parts.fragment:
        raise ValueError("endpoint url must not have a query or a fragment")
    netloc = f"[{host}]" if ":" in host else host
    if port is not None:
        netloc += f":{port}"
    return f"{parts.scheme.lower()}://{netloc}{parts.path}"


def endpoint_id(url: str) -> str:
    """A short stable id for the endpoint at ``url`` (any spelling of it)."""
    return hashlib.sha256(canonical_url(url).encode()).hexdigest()[:ID_CHARS]


def check_kind(kind: Any) -> str:
    if kind not in KINDS:
        raise ValueError(f"endpoint kind must be one of {', '.join(KINDS)}, not {kind!r}")
    return kind


def check_name(name: Any) -> str | None:
    if name is None:
        return None
    if not isinstance(name, str) or not _NAME.fullmatch(name):
        raise ValueError(
            f"endpoint name must be 1-{MAX_NAME_CHARS} letters, digits or _.:@+- "
            "starting with a letter or digit"
        )
    return name


def make_record(
    url: str, kind: str = AUTO, name: str | None = None, api_key: str | None = None
) -> EndpointRecord:
    """A checked record; ValueError with what is wrong."""
    root = canonical_url(url)
    return EndpointRecord(
        id=endpoint_id(root),
        url=root,
        kind=check_kind(kind),
        name=check_name(name),
        api_key=None if api_key is None else check_api_key(api_key),
    )


class EndpointStore:
    """The endpoints file: read with :meth:`load`, changed with :meth:`add` and :meth:`remove`."""

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        self._records: list[EndpointRecord] | None = None

    @classmethod
    def in_state_dir(cls, state_dir: Path) -> EndpointStore:
        """The store at ``<state_dir>/endpoints.json``."""
        return cls(Path(state_dir) / ENDPOINTS_FILE)

    def load(self) -> list[EndpointRecord]:
        """Read the file (none yet: no endpoints).  ConfigError: unreadable or malformed."""
        self._records = self._read()
        return list(self._records)

    def list(self) -> list[EndpointRecord]:
        """The endpoints, read from the file on first use."""
        if self._records is None:
            return self.load()
        return list(self._records)

    def get(self, endpoint_id: str) -> EndpointRecord | None:
        return next((r for r in self.list() if r.id == endpoint_id), None)

    def add(
        self, url: str, kind: str = AUTO, name: str | None = None, api_key: str | None = None
    ) -> EndpointRecord:
        """Store an endpoint, replacing one with the same URL.  ValueError: a bad field or
        ``MAX_ENDPOINTS`` stored already."""
        record = make_record(url, kind, name, api_key)
        records = [r for r in self.load() if r.id != record.id]
        if len(records) >= MAX_ENDPOINTS:
            raise ValueError(f"at most {MAX_ENDPOINTS} endpoints may be stored")
        records.append(record)
        self._write(records)
        return record

    def remove(self, endpoint_id: str) -> bool:
        """Forget an endpoint; False if there was none with that id."""
        records = self.load()
        kept = [r for r in records if r.id != endpoint_id]
        if len(kept) == len(records):
            return False
        self._write(kept)
        return True

    # the file

    def _read(self) -> list[EndpointRecord]:
        try:
            text = self.path.read_text(encoding="utf-8")
            mode = self.path.stat().st_mode
        except FileNotFoundError:
            return []
        except (OSError, UnicodeDecodeError) as exc:
            raise ConfigError(f"cannot read {self.path}: {exc}") from None
        if mode & 0o077:
            log.warning("%s holds API keys but others may read it (chmod 600 it)", self.path)
        try:
            data = json.loads(text)
        except (ValueError, RecursionError) as exc:
            raise ConfigError(f"{self.path} is not valid JSON ({exc}); fix or remove it") from None
        if (
            not isinstance(data, dict)
            or data.get("version") != FORMAT_VERSION
            or not isinstance(data.get("endpoints"), list)
        ):
            raise ConfigError(
                f"{self.path}: expected {{'version': {FORMAT_VERSION}, 'endpoints': [...]}}"
            )
        return [self._record(i, entry) for i, entry in enumerate(data["endpoints"])]

    def _record(self, index: int, entry: Any) -> EndpointRecord:
        where = f"{self.path}: endpoint {index}"
        if not isinstance(entry, dict):
            raise ConfigError(f"{where} is not an object")
        try:
            record = make_record(
                entry.get("url"), entry.get("kind", AUTO), entry.get("name"), entry.get("api_key")
            )
        except ValueError as exc:
            raise ConfigError(f"{where}: {exc}") from None
        if entry.get("id") is not None and entry.get("id") != record.id:
            raise ConfigError(f"{where}: id {entry.get('id')!r} does not match its url")
        return record

    def _write(self, records: list[EndpointRecord]) -> None:
        body = {"version": FORMAT_VERSION, "endpoints": [r.to_json() for r in records]}
        text = json.dumps(body, indent=2) + "\n"
        self.path.parent.mkdir(parents=True, exist_ok=True)
        # mkstemp creates the file with mode 0600, before any secret is in it.
        fd, tmp = tempfile.mkstemp(dir=self.path.parent, prefix=f".{self.path.name}.")
        try:
            with os.fdopen(fd, "w", encoding="utf-8") as f:
                f.write(text)
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, self.path)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
        _fsync_dir(self.path.parent)
        self._records = list(records)


def _fsync_dir(path: Path) -> None:
    """Make the rename durable (best effort: not every platform opens directories)."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)
