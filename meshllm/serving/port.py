"""What serving needs from outside: its settings, and a small port onto the mesh.

Serving never imports the gossip service, the transport or the node's whole
Config: the node hands it a :class:`ServingSettings` and an object that
implements :class:`MeshPort` (DESIGN.md §2), and tests hand it fakes.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from meshllm.config import default
from meshllm.gossip import PeerAnnouncement
from meshllm.serving.file_server import DEFAULT_FILE_LIMITS, FileServerLimits
from meshllm.serving.pool import DEFAULT_IDLE_TTL
from meshllm.wire import FrameStream


@dataclass(frozen=True, slots=True)
class ServingSettings:
    """The part of the node's configuration that serving reads."""

    models_dir: Path
    """Where GGUF models are found and fetched to."""
    state_dir: Path
    """llama-server logs (``logs/``) and the model digest cache live here."""
    models: tuple[str, ...] = ()
    """``--model`` names or paths: the first that fits is served, the rest are requested."""
    endpoints: tuple[str, ...] = ()
    """OpenAI-compatible or Ollama servers this node fronts (``--endpoint``)."""
    endpoint_poll_interval: float = 10.0
    """Seconds between health polls of each endpoint (``--endpoint-poll-interval``)."""
    find_local_ollama: bool = True
    """Front an Ollama running on this machine (127.0.0.1:11434) when one answers."""
    llama_server: str | None = None
    """llama-server binary (else env, the proved build, then PATH)."""
    auto_install: bool = default("auto_install")
    """Build llama-server / install the default model when missing."""
    joined: bool = False
    """The node joined a mesh: peers may have what it lacks, auto-assignment runs."""
    max_tokens_default: int = default("max_tokens_default")
    """llama-server ``-n`` for requests without ``max_tokens``; 0: no cap."""
    embeddings: bool = default("embeddings")
    """Generative models answer embeddings too (``--embeddings --pooling mean``)."""
    file_limits: FileServerLimits = DEFAULT_FILE_LIMITS
    """Budgets of the model-file port (connections, handshake deadline)."""
    pins: tuple[str, ...] = ()
    """``--pin`` names or paths: loaded at start, never unloaded for idleness or room."""
    idle_ttl: float | None = DEFAULT_IDLE_TTL
    """Seconds an idle model stays loaded (``--ttl``); None: never."""
    max_loaded: int | None = None
    """Models loaded at once (``--max-loaded``); None: no limit."""
    memory_budget: int | None = None
    """Bytes the loaded models may take together (``--memory-budget``); None: no limit."""
    model_ports: tuple[int, int] | None = None
    """Ports of the model servers (``--model-ports``, inclusive); None: any free port."""
    model_ttls: Mapping[str, float] = field(default_factory=dict)
    """Per-model idle TTLs from ``--model-config``, in keep_alive terms (negative: never)."""


class MeshPort(Protocol):
    """Serving's view of the mesh: this node's announcement, its peers, streams to them."""

    @property
    def me(self) -> PeerAnnouncement:
        """This node's current announcement."""
        ...

    def peers(self) -> Mapping[str, PeerAnnouncement]:
        """The live peers' announcements by node id."""
        ...

    def publish(self, **changes: Any) -> None:
        """Change fields of this node's announcement and tell the mesh."""
        ...

    async def open_stream(self, node_id: str) -> FrameStream:
        """A new stream to ``node_id`` on its authenticated link; raises PeerError."""
        ...

    def file_address(self, node_id: str) -> tuple[str, int]:
        """Host and TCP port of ``node_id``'s model-file server (after ``open_stream``
        reached it); raises PeerError when it is unknown."""
        ...
