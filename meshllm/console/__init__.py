"""`meshllm console`: a Textual terminal console of the mesh, through the local node's HTTP API.

from meshllm.console import run_console
run_console(port=9337, state_dir=Path("~/.meshllm"))
"""

from meshllm.console.app import MeshConsole, run_console
from meshllm.console.client import MeshStatus, NodeAPIError, NodeClient, NodeUnreachable

__all__ = [
    "MeshConsole",
    "MeshStatus",
    "NodeAPIError",
    "NodeClient",
    "NodeUnreachable",
    "run_console",
]
