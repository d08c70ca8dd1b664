"""Cloud models by prefix (DESIGN.md §7b): the providers a node holds a key for, and the
model names that reach them.  :mod:`meshllm.proxy.cloud` forwards the requests.

A model named ``provider:name`` (``openai:gpt-4o-mini``, ``anthropic:claude-sonnet-4-5``,
``google:gemini-2.5-flash``) goes to that provider's API, through a node whose
environment holds its key (DESIGN.md §7b).  The variables are the providers' own SDKs'
(``OPENAI_API_KEY``, ``OPENAI_BASE_URL``, ...), so a shell set up for one of them sets
up a node too.  Pure: the environment comes in as a mapping.

A key is a secret of the node that holds it: it goes in the provider's auth header and
nowhere else (not in ``repr``, logs, announcements or status).  The name after the
prefix travels into a URL (Gemini puts it in the path), so it must be a plain model id.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field

from meshllm.serving.external import check_api_key, normalize_url


@dataclass(frozen=True, slots=True)
class ProviderKind:
    """What a provider's API is and where a node finds its key."""

    name: str  # the model prefix
    key_vars: tuple[str, ...]  # environment variables holding the key, first set wins
    base_url_var: str  # environment variable overriding the API's root
    default_base_url: str


OPENAI = ProviderKind("openai", ("OPENAI_API_KEY",), "OPENAI_BASE_URL", "https://api.openai.com")
ANTHROPIC = ProviderKind(
    "anthropic", ("ANTHROPIC_API_KEY",), "ANTHROPIC_BASE_URL", "https://api.anthropic.com"
)
GOOGLE = ProviderKind(
    "google",
    ("GOOGLE_API_KEY", "GEMINI_API_KEY"),  # google-genai's order
    "GOOGLE_GEMINI_BASE_URL",
    "https://generativelanguage.googleapis.com",
)
KINDS: dict[str, ProviderKind] = {kind.name: kind for kind in (OPENAI, ANTHROPIC, GOOGLE)}
PROVIDER_NAMES = frozenset(KINDS)

MAX_UPSTREAM_NAME_CHARS = 120  # a provider's model id (theirs are well under 64)
_UPSTREAM_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._@-]*")  # no '/', ':' or '%'

UP = "up"  # announced states (meshllm.gossip.announcement.PROVIDER_STATES)
REFUSED = "refused"  # the provider refused this node's key (401/403): the others' are tried


@dataclass(frozen=True, slots=True)
class Provider:
    """One provider this node can reach: its API root and this node's key for it."""

    kind: ProviderKind
    base_url: str  # the API root, no trailing slash and no /v1
    api_key: str = field(repr=False)

    @property
    def name(self) -> str:
        return self.kind.name


def providers_from_env(env: Mapping[str, str]) -> dict[str, Provider]:
    """The providers whose key ``env`` holds, by name.  Raises ValueError (naming the
    variable, never quoting the key) for a key that cannot go in an HTTP header."""
    found: dict[str, Provider] = {}
    for kind in KINDS.values():
        var = next((v for v in kind.key_vars if env.get(v, "").strip()), None)
        if var is None:
            continue
        try:
            key = check_api_key(env[var].strip())
        except ValueError as exc:
            raise ValueError(f"{var}: {exc}") from None
        base_url = normalize_url(env.get(kind.base_url_var, "").strip() or kind.default_base_url)
        found[kind.name] = Provider(kind, base_url, key)
    return found


def split_model(model: str) -> tuple[str, str] | None:
    """``(provider, upstream name)`` of a ``provider:name`` model, or None when ``model``
    names no provider.  Raises ValueError for a provider model whose name after the
    prefix is not a plain model id (it goes into a URL)."""
    provider, colon, name = model.partition(":")
    if not colon or provider not in KINDS:
        return None
    name = name.removeprefix("models/")  # Gemini's own spelling of its ids
    if len(name) > MAX_UPSTREAM_NAME_CHARS or not _UPSTREAM_NAME.fullmatch(name):
        raise ValueError(
            f"model {model[:MAX_UPSTREAM_NAME_CHARS]!r}: after {provider + ':'!r} comes the "
            "provider's model id (letters, digits, '.', '_', '-', '@')"
        )
    return provider, name


def is_provider_model(model: str | None) -> bool:
    """Whether ``model`` names a cloud provider's model (``provider:...``)."""
    if not model:
        return False
    provider, colon, _ = model.partition(":")
    return bool(colon) and provider in KINDS
