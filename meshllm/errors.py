"""Exceptions raised by meshllm.

    MeshError
    ├── AuthError        an owner statement that fails verification; an act only the owner may do
    ├── ConfigError      bad flags, environment or config file; bad join token or owner key
    ├── FrameError       a frame that cannot be decoded, is too large or has a bad shape
    ├── PeerError        a peer that failed the hello, timed out or closed the link
    │   └── HelloError   wrong mesh, wrong secret or wrong key in the membership hello
    ├── ServingError     llama-server or an external endpoint failed to start or answer
    │   └── InstallError llama-server could not be built or proved, a model not installed
    └── TransferError    a model copy that failed: refused, cut off, wrong size or sha256

Errors from aioquic, aiohttp and msgpack are translated into these at the edge
where they are raised; a misbehaving peer becomes a closed link, never an
exception escaping the daemon.
"""


class MeshError(Exception):
    """Base of every meshllm error."""


class AuthError(MeshError):
    """A mesh-owner statement refused (bad signature, stale, replayed, another mesh), or an
    admin act that only the holder of the mesh owner key may do."""


class ConfigError(MeshError):
    """Bad configuration: flags, environment, config file or join token."""


class FrameError(MeshError):
    """A frame that cannot be decoded or breaks the protocol."""


class PeerError(MeshError):
    """A peer link that failed or misbehaved."""


class HelloError(PeerError):
    """The membership hello failed: wrong mesh, secret or key."""


class ServingError(MeshError):
    """A model server (llama-server or external endpoint) failed."""


class InstallError(ServingError):
    """llama-server could not be built or proved here, or a model not installed."""


class TransferError(MeshError):
    """A model file copy between peers failed."""


class CommandError(MeshError):
    """A pool command that cannot be carried out; ``status`` is its HTTP status."""

    def __init__(self, message: str, status: int = 409) -> None:
        super().__init__(message)
        self.status = status
