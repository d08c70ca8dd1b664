"""Node configuration: one dataclass, filled from flags > ``MESHLLM_*`` env > defaults."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

DEFAULT_HTTP_PORT = 9337
DEFAULT_QUIC_PORT = 9338


@dataclass
class Config:
    """Everything a node needs to start."""

    port: int = DEFAULT_HTTP_PORT
    """Local HTTP port: the OpenAI-compatible proxy and the node API."""
    listen_all: bool = False
    """Expose the HTTP port on every interface instead of 127.0.0.1 only."""
    bind: str = f"0.0.0.0:{DEFAULT_QUIC_PORT}"
    """QUIC (UDP) address; model copies use TCP on the same port number."""
    advertise: list[str] = field(default_factory=list)
    """Addresses peers should dial (``host:port``); derived from ``bind`` if empty."""
    state_dir: Path = field(default_factory=lambda: Path.home() / ".meshllm")
    """Node key, mesh credentials, admin token and logs."""
    models_dir: Path = field(default_factory=lambda: Path.home() / ".models")
    """Where GGUF models are found and fetched to."""
    join: str | None = None
    """Join token of the mesh to join; none seeds a new mesh (or rejoins the saved one)."""
    client: bool = False
    """Lite client: ephemeral identity, serves nothing, never elected."""
    models: list[str] = field(default_factory=list)
    """Models to serve (the first that fits); the others seed the mesh catalog."""
    endpoints: list[str] = field(default_factory=list)
    """Existing OpenAI-compatible or Ollama servers this node fronts."""
    llama_server: str | None = None
    """Path of the llama-server binary (else env, cache, then PATH)."""
    split: bool = False
    """Ask for split serving across nodes (llama.cpp RPC); not yet built."""
    probe_interval: float = 15.0
    """Seconds between health probes of each peer."""
    probe_timeout: float = 5.0
    """Seconds without a pong before a peer is declared dead."""
    gossip_interval: float = 5.0
    """Seconds between anti-entropy digests (changes are pushed at once anyway)."""
    auto_install: bool = True
    """Build llama-server / install the default model when they are missing."""
    max_tokens_default: int = 1024
    """Tokens generated for a request without ``max_tokens`` (llama-server ``-n``); 0: no
    cap.  The default model is a base model that never stops by itself: 1,024 tokens
    end within half a minute on 2 cores (about 44 tokens/s)."""
    load_timeout: float = 120.0
    """Seconds a request for a model that is starting or being fetched somewhere in the
    mesh waits for it before a 503 with Retry-After."""
