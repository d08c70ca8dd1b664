"""ModelFile: a GGUF model on disk, as the catalog describes it."""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any


@dataclass(frozen=True, slots=True)
class ModelFile:
    """A GGUF model on disk."""

    name: str  # the file stem (split models: without "-00001-of-0000N")
    path: Path  # what llama-server is given with -m (first shard of a split model)
    size_bytes: int  # all shards together
    architecture: str  # general.architecture, e.g. "gemma3"
    parameter_count: int | None = None  # sum of tensor elements; None if unknown
    file_type: str | None = None  # e.g. "Q4_K_M", from general.file_type
    context_length: int | None = None  # {arch}.context_length (training context)
    # tokenizer.chat_template (or its .tool_use variant) is a non-empty string; without
    # one llama-server falls back to ChatML unless given a template
    # (see meshllm.serving.chat_template)
    has_chat_template: bool = False
    # KV cache bytes per token of context at f16: 2 bytes x layers x KV heads x (key +
    # value head width), from {arch}.block_count, .attention.head_count_kv and
    # .attention.key_length/.value_length (else embedding_length / head_count); None
    # when the header lacks them
    kv_bytes_per_token: int | None = None
    # {arch}.pooling_type, which embedding and rerank models have: "none", "mean",
    # "cls", "last" or "rank" (llama.cpp's enum); None for a generative model
    pooling: str | None = None

    def to_wire(self) -> dict[str, Any]:
        """Plain dict for JSON."""
        return {**asdict(self), "path": str(self.path)}

    @classmethod
    def from_wire(cls, data: dict[str, Any]) -> ModelFile:
        """Parse :meth:`to_wire` output; missing optional keys take their defaults and
        unknown keys are ignored."""
        known = {f.name for f in fields(cls)}
        return cls(**{**{k: v for k, v in data.items() if k in known}, "path": Path(data["path"])})


def model_name(spec: str) -> str:
    """The mesh name of a ``--model`` value: a path's file stem, else the name itself."""
    return Path(spec).stem if spec.lower().endswith(".gguf") else spec
