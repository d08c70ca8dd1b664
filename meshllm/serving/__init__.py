"""Local serving: the GGUF catalog, the llama-server supervisor, external endpoints.

``meshllm.serving.install`` (llama-server build, default model) is a command
module and is imported on its own.
"""

from typing import Any

from meshllm.serving.chat_template import builtin_chat_template
from meshllm.serving.external import ExternalEndpoint
from meshllm.serving.launch import LlamaOptions, llama_argv
from meshllm.serving.llama import LlamaServer
from meshllm.serving.locate import find_llama_server
from meshllm.serving.model_file import ModelFile
from meshllm.serving.scan import scan_catalog

_CATALOG = ("read_model", "resolve_model", "scan_models")


def __getattr__(name: str) -> Any:
    # The catalog imports gguf (and numpy): load it only where it is used, so the
    # daemon, which scans through meshllm.serving.scan, never does.
    if name in _CATALOG:
        from meshllm.serving import catalog

        return getattr(catalog, name)
    raise AttributeError(name)


__all__ = [
    "ExternalEndpoint",
    "LlamaOptions",
    "LlamaServer",
    "ModelFile",
    "builtin_chat_template",
    "find_llama_server",
    "llama_argv",
    "read_model",
    "resolve_model",
    "scan_catalog",
    "scan_models",
]
