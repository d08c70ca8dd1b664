"""GGUF catalog: which files are models, and what their headers say."""

from __future__ import annotations

import json
import struct
from pathlib import Path

import gguf
import numpy as np
import pytest

from meshllm.errors import ServingError
from meshllm.serving import (
    ModelFile,
    builtin_chat_template,
    read_model,
    resolve_model,
    scan_models,
)
from meshllm.serving.catalog import _read_header, main


def make_gguf(
    path: Path,
    arch: str = "llama",
    *,
    shapes: tuple[tuple[int, ...], ...] = ((4, 8), (8,)),
    context_length: int | None = 2048,
    file_type: gguf.LlamaFileType | None = gguf.LlamaFileType.ALL_F32,
    kind: str | None = None,
    split: tuple[int, int] | None = None,
    endian: gguf.GGUFEndian = gguf.GGUFEndian.LITTLE,
    chat_template: str | list[dict[str, str]] | None = None,
) -> Path:
    """A tiny GGUF model: float32 tensors of ``shapes`` and a few keys."""
    writer = gguf.GGUFWriter(path, arch, endianess=endian)
    writer.add_name(path.stem)
    if context_length is not None:
        writer.add_context_length(context_length)
    if file_type is not None:
        writer.add_file_type(file_type)
    if kind is not None:
        writer.add_type(kind)
    if split is not None:
        writer.add_uint16(gguf.Keys.Split.LLM_KV_SPLIT_NO, split[0])
        writer.add_uint16(gguf.Keys.Split.LLM_KV_SPLIT_COUNT, split[1])
    # A string array and a float array, as a tokenizer has: both must be skipped.
    writer.add_token_list(["<s>", "</s>", "hello", "wörld"])
    writer.add_token_scores([0.0, 0.0, -1.5, -2.5])
    if chat_template is not None:
        writer.add_chat_template(chat_template)
    for i, shape in enumerate(shapes):
        tensor = np.arange(int(np.prod(shape)), dtype=np.float32).reshape(shape)
        if endian == gguf.GGUFEndian.BIG:
            tensor = tensor.byteswap()
        writer.add_tensor(f"blk.{i}.weight", tensor)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path


def raw_gguf(kvs: list[tuple[str, int, bytes]], n_tensors: int = 0) -> bytes:
    """A GGUF v3 header written by hand (GGUFWriter always adds an architecture)."""
    out = b"GGUF" + struct.pack("<IQQ", 3, n_tensors, len(kvs))
    for key, vtype, value in kvs:
        out += struct.pack("<Q", len(key)) + key.encode() + struct.pack("<I", vtype) + value
    return out


def gguf_str(text: str) -> bytes:
    return struct.pack("<Q", len(text.encode())) + text.encode()


def test_scan_models_reads_header(tmp_path: Path) -> None:
    make_gguf(tmp_path / "tiny-llama.gguf", shapes=((4, 8), (8,), (2, 3, 5)))

    models = scan_models(tmp_path)

    assert list(models) == ["tiny-llama"]
    model = models["tiny-llama"]
    assert model == ModelFile(
        name="tiny-llama",
        path=tmp_path / "tiny-llama.gguf",
        size_bytes=(tmp_path / "tiny-llama.gguf").stat().st_size,
        architecture="llama",
        parameter_count=32 + 8 + 30,
        file_type="ALL_F32",
        context_length=2048,
    )


def test_scan_models_optional_fields_missing(tmp_path: Path) -> None:
    make_gguf(tmp_path / "bare.gguf", arch="qwen2", context_length=None, file_type=None)

    model = scan_models(tmp_path)["bare"]

    assert (model.architecture, model.context_length, model.file_type) == ("qwen2", None, None)


def test_scan_models_quantized_file_type_name(tmp_path: Path) -> None:
    make_gguf(tmp_path / "q.gguf", file_type=gguf.LlamaFileType.MOSTLY_Q4_K_M)

    assert scan_models(tmp_path)["q"].file_type == "Q4_K_M"


def test_scan_models_big_endian(tmp_path: Path) -> None:
    make_gguf(tmp_path / "be.gguf", endian=gguf.GGUFEndian.BIG)

    model = scan_models(tmp_path)["be"]

    assert (model.architecture, model.parameter_count, model.context_length) == (
        "llama",
        40,
        2048,
    )


def test_scan_models_skips_what_is_not_a_model(tmp_path: Path) -> None:
    make_gguf(tmp_path / "good.gguf")
    (tmp_path / "text.gguf").write_text("this is not a GGUF file at all, just text\n")
    (tmp_path / "empty.gguf").write_bytes(b"")
    (tmp_path / "magic-only.gguf").write_bytes(b"GGUF")
    whole = make_gguf(tmp_path / "whole.gguf", shapes=((64, 64),)).read_bytes()
    (tmp_path / "cut-in-data.gguf").write_bytes(whole[: len(whole) - 100])
    (tmp_path / "cut-in-header.gguf").write_bytes(whole[:40])
    (tmp_path / "whole.gguf").unlink()
    make_gguf(tmp_path / "download.gguf.part")
    make_gguf(tmp_path / "lora.gguf", kind="adapter")
    make_gguf(tmp_path / "not-gguf-suffix.bin")
    (tmp_path / "subdir.gguf").mkdir()
    no_arch = raw_gguf([("general.name", gguf.GGUFValueType.STRING, gguf_str("x"))])
    (tmp_path / "no-arch.gguf").write_bytes(no_arch)
    bad_version = bytearray(make_gguf(tmp_path / "v9.gguf").read_bytes())
    bad_version[4:8] = struct.pack("<I", 9)
    (tmp_path / "v9.gguf").write_bytes(bytes(bad_version))

    assert list(scan_models(tmp_path)) == ["good"]


def test_scan_models_rejects_huge_string_array_count(tmp_path: Path) -> None:
    # An array claiming 2**40 strings in a tiny file must fail fast, not loop.
    bogus = struct.pack("<IQ", gguf.GGUFValueType.STRING, 1 << 40)
    path = tmp_path / "bogus.gguf"
    path.write_bytes(
        raw_gguf(
            [
                ("general.architecture", gguf.GGUFValueType.STRING, gguf_str("llama")),
                ("tokenizer.ggml.tokens", gguf.GGUFValueType.ARRAY, bogus),
            ]
        )
    )

    with pytest.raises(ServingError, match="truncated"):
        read_model(path)


def test_read_model_reasons(tmp_path: Path) -> None:
    (tmp_path / "text.gguf").write_text("hello there, this is not a model file")
    no_arch = raw_gguf([("general.name", gguf.GGUFValueType.STRING, gguf_str("x"))])
    (tmp_path / "no-arch.gguf").write_bytes(no_arch)

    with pytest.raises(ServingError, match="bad magic"):
        read_model(tmp_path / "text.gguf")
    with pytest.raises(ServingError, match=r"general\.architecture"):
        read_model(tmp_path / "no-arch.gguf")
    with pytest.raises(ServingError, match="cannot read"):
        read_model(tmp_path / "missing.gguf")
    whole = make_gguf(tmp_path / "whole.gguf", shapes=((64, 64),)).read_bytes()
    for cut in (30, 100, len(whole) - 1):
        (tmp_path / "cut.gguf").write_bytes(whole[:cut])
        with pytest.raises(ServingError, match="truncated"):
            read_model(tmp_path / "cut.gguf")


def test_scan_models_missing_dir(tmp_path: Path) -> None:
    assert scan_models(tmp_path / "nowhere") == {}


def test_scan_models_split_model(tmp_path: Path) -> None:
    for no in range(3):
        make_gguf(tmp_path / f"big-0000{no + 1}-of-00003.gguf", shapes=((10,),), split=(no, 3))
    sizes = sum(p.stat().st_size for p in tmp_path.iterdir())

    models = scan_models(tmp_path)

    assert list(models) == ["big"]
    assert models["big"].path == tmp_path / "big-00001-of-00003.gguf"
    assert (models["big"].size_bytes, models["big"].parameter_count) == (sizes, 30)


def test_scan_models_split_model_missing_shard(tmp_path: Path) -> None:
    make_gguf(tmp_path / "big-00001-of-00002.gguf", split=(0, 2))

    assert scan_models(tmp_path) == {}


def test_resolve_model_by_name_and_path(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    models_dir = tmp_path / "models"
    models_dir.mkdir()
    make_gguf(models_dir / "alpha.gguf")
    elsewhere = make_gguf(tmp_path / "beta.gguf")
    (tmp_path / "junk.gguf").write_text("junk, not a model")
    monkeypatch.chdir(tmp_path)

    assert resolve_model("alpha", models_dir).path == models_dir / "alpha.gguf"
    assert resolve_model("alpha.gguf", models_dir).name == "alpha"  # not in cwd: by name
    assert resolve_model(str(elsewhere), models_dir).name == "beta"
    assert resolve_model("./beta.gguf", models_dir).name == "beta"
    assert resolve_model("beta.gguf", models_dir).name == "beta"  # in cwd
    assert resolve_model("beta", models_dir) is None
    assert resolve_model("nope", models_dir) is None
    assert resolve_model(str(tmp_path / "nope.gguf"), models_dir) is None
    assert resolve_model(str(tmp_path / "junk.gguf"), models_dir) is None


def test_resolve_model_name_of_split_model(tmp_path: Path) -> None:
    for no in range(2):
        make_gguf(tmp_path / f"big-0000{no + 1}-of-00002.gguf", split=(no, 2))

    assert resolve_model("big", tmp_path).path == tmp_path / "big-00001-of-00002.gguf"


# A Jinja chat template of several KB, as instruct models carry.
LONG_TEMPLATE = (
    "{% for message in messages %}<start_of_turn>{{ message['role'] }}\n"
    "{{ message['content'] | trim }}<end_of_turn>\n{% endfor %}"
    + "{# padding, as long templates have #}" * 200
    + "{% if add_generation_prompt %}<start_of_turn>model\n{% endif %}"
)


@pytest.mark.parametrize(
    ("template", "expected"),
    [
        (None, False),
        # named ones: llama-server takes tokenizer.chat_template.tool_use where there is
        # no default, and no other name
        ([{"name": "tool_use", "template": "{{ x }}"}], True),
        ([{"name": "rag", "template": "{{ x }}"}], False),
        ("chatml", True),
        (LONG_TEMPLATE, True),
    ],
)
def test_read_model_chat_template(
    tmp_path: Path, template: str | list[dict[str, str]] | None, expected: bool
) -> None:
    assert len(LONG_TEMPLATE) > 7000
    path = make_gguf(tmp_path / "m.gguf", chat_template=template)

    model = read_model(path)

    assert model.has_chat_template is expected
    assert (model.architecture, model.context_length, model.parameter_count) == ("llama", 2048, 40)
    # Only its presence is kept, never the text.
    metadata = _read_header(path).metadata
    assert gguf.Keys.Tokenizer.CHAT_TEMPLATE not in metadata
    assert "tokenizer.chat_template.tool_use" not in metadata


def test_read_model_empty_chat_template(tmp_path: Path) -> None:
    # GGUFWriter drops empty strings: written by hand.  llama-server takes an empty
    # template for none (ChatML).
    arch = ("general.architecture", gguf.GGUFValueType.STRING, gguf_str("gemma3"))
    for key, text, expected in [
        ("tokenizer.chat_template", "", False),
        ("tokenizer.chat_template.tool_use", "", False),
        ("tokenizer.chat_template", "x" * 50_000, True),
        ("tokenizer.chat_template.tool_use", "t", True),
    ]:
        path = tmp_path / "raw.gguf"
        path.write_bytes(raw_gguf([arch, (key, gguf.GGUFValueType.STRING, gguf_str(text))]))
        assert read_model(path).has_chat_template is expected, (key, len(text))


def test_read_model_chat_template_big_endian(tmp_path: Path) -> None:
    path = make_gguf(tmp_path / "be.gguf", endian=gguf.GGUFEndian.BIG, chat_template=LONG_TEMPLATE)

    assert read_model(path).has_chat_template


def test_catalog_main_json_round_trip(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    make_gguf(tmp_path / "with.gguf", chat_template=LONG_TEMPLATE)
    make_gguf(tmp_path / "without.gguf")

    assert main([str(tmp_path), "with", "nope"]) == 0

    data = json.loads(capsys.readouterr().out)
    models = {m["name"]: ModelFile.from_wire(m) for m in data["models"]}
    assert models == scan_models(tmp_path)
    assert (models["with"].has_chat_template, models["without"].has_chat_template) == (True, False)
    assert ModelFile.from_wire(data["resolved"]["with"]) == models["with"]
    assert data["resolved"]["nope"] is None
    # Wire dicts from before the field existed still parse.
    old = {k: v for k, v in data["models"][0].items() if k != "has_chat_template"}
    assert ModelFile.from_wire(old).has_chat_template is False


def test_scan_models_default_model(default_model: ModelFile) -> None:
    models = scan_models(default_model.path.parent)

    model = models["gemma-3-270m-q4_k_m"]
    assert model.architecture == "gemma3"
    assert model.file_type == "Q4_K_M"
    assert model.context_length == 32768
    assert 260_000_000 < model.parameter_count < 280_000_000  # 268,098,176
    assert 240_000_000 < model.size_bytes < 270_000_000
    # A base model: no chat template in the GGUF, so llama.cpp's Gemma one is used.
    assert model.has_chat_template is False
    assert builtin_chat_template(model.architecture, model.name) == "gemma"


def test_the_kv_cache_width_is_read_from_the_header() -> None:
    from meshllm.serving.catalog import kv_bytes_per_token

    gemma = {
        "g.block_count": 18, "g.attention.head_count": 4, "g.attention.head_count_kv": 1,
        "g.attention.key_length": 256, "g.attention.value_length": 256,
        "g.embedding_length": 640,
    }  # fmt: skip
    assert kv_bytes_per_token(gemma, "g") == 2 * 18 * 1 * 512
    llama = {"l.block_count": 32, "l.attention.head_count": 32, "l.attention.head_count_kv": 8,
             "l.embedding_length": 4096}  # fmt: skip
    assert kv_bytes_per_token(llama, "l") == 2 * 32 * 8 * (128 + 128)  # 128 KiB a token
    per_layer = {"h.block_count": 2, "h.attention.head_count": 8,
                 "h.attention.head_count_kv": [0, 4], "h.embedding_length": 512}  # fmt: skip
    assert kv_bytes_per_token(per_layer, "h") == 2 * 4 * (64 + 64)
    assert kv_bytes_per_token({}, "x") is None
    assert kv_bytes_per_token({"x.block_count": 4, "x.attention.head_count": "?"}, "x") is None
