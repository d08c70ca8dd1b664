"""Local serving: the GGUF catalog, the llama-server supervisor, external endpoints.

``meshllm.serving.install`` (llama-server build, default model) is a command
module and is imported on its own.
"""

from meshllm.serving.catalog import ModelFile, read_model, resolve_model, scan_models
from meshllm.serving.external import ExternalEndpoint
from meshllm.serving.llama import LlamaOptions, LlamaServer, llama_argv
from meshllm.serving.locate import find_llama_server

__all__ = [
    "ExternalEndpoint",
    "LlamaOptions",
    "LlamaServer",
    "ModelFile",
    "find_llama_server",
    "llama_argv",
    "read_model",
    "resolve_model",
    "scan_models",
]
