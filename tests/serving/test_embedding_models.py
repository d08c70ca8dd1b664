"""Embedding and rerank models: told apart by their GGUF header, run with the flags that
make llama-server answer their kind, and a generative model's embeddings on request."""

from __future__ import annotations

from pathlib import Path

import gguf
import numpy as np

from meshllm.serving import LlamaOptions, ModelFile
from meshllm.serving.catalog import read_model
from meshllm.serving.launch import embedding_argv, llama_argv


def model_with_pooling(path: Path, arch: str, pooling: int | None) -> Path:
    writer = gguf.GGUFWriter(path, arch)
    writer.add_name(path.stem)
    if pooling is not None:
        writer.add_uint32(f"{arch}.pooling_type", pooling)
    writer.add_tensor("blk.0.weight", np.zeros((4, 8), dtype=np.float32))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path


def test_the_header_says_which_models_embed_and_which_rerank(tmp_path: Path) -> None:
    assert read_model(model_with_pooling(tmp_path / "chat.gguf", "llama", None)).pooling is None
    embed = read_model(model_with_pooling(tmp_path / "bge.gguf", "bert", 2))
    assert embed.pooling == "cls"
    rerank = read_model(model_with_pooling(tmp_path / "reranker.gguf", "bert", 4))
    assert rerank.pooling == "rank"
    odd = read_model(model_with_pooling(tmp_path / "odd.gguf", "bert", 99))
    assert odd.pooling is None  # a pooling llama.cpp does not know is not trusted


def test_each_kind_runs_with_the_flags_for_its_answers() -> None:
    def argv(pooling: str | None, embeddings: bool = False) -> list[str]:
        model = ModelFile("m", Path("/m.gguf"), 1, "bert", pooling=pooling)
        return embedding_argv(model, LlamaOptions(embeddings=embeddings))

    assert argv(None) == []
    assert argv(None, embeddings=True) == ["--embeddings", "--pooling", "mean"]
    assert argv("cls") == ["--embeddings"]  # the model's own pooling
    assert argv("rank") == ["--reranking"]
    model = ModelFile("m", Path("/m.gguf"), 1, "bert", pooling="rank")
    full = llama_argv(Path("/bin/llama-server"), model, 8081, LlamaOptions())
    assert "--reranking" in full
