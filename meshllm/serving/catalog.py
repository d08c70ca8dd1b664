"""The GGUF models on disk: which files are models, their architecture and size.

Only the GGUF header is read (key/values and tensor infos), from a memory map,
never the tensor data.  ``gguf.GGUFReader`` builds a numpy view of every array
element, which takes about 17 s on the 262,144-token vocabulary of Gemma 3
270M; this reader skips fixed-size arrays in one step and reads the header of
that file in well under a second.  Types and sizes come from the ``gguf``
package; the layout is the GGUF spec (ggml ``docs/gguf.md``).
"""

from __future__ import annotations

import logging
import mmap
import re
import struct
from dataclasses import dataclass
from math import prod
from pathlib import Path
from typing import Any

import gguf

from meshllm.errors import ServingError
from meshllm.serving.model_file import ModelFile

log = logging.getLogger(__name__)

# Files named like this are being written (downloads, peer copies): never models yet.
PARTIAL_SUFFIXES = (".part", ".partial", ".tmp", ".download")
# llama.cpp's gguf-split names: the first shard is what llama-server is given.
_SPLIT_RE = re.compile(r"^(?P<base>.+)-(?P<no>\d{5})-of-(?P<count>\d{5})$")
# general.type values that are not standalone models (LoRA adapters, vision projectors).
_NOT_MODELS = {"adapter", "mmproj", "imatrix"}
# The chat templates llama-server takes from a GGUF: the default one, else the
# tool-use one (common/chat.cpp common_chat_templates_init); without either it
# formats chats as ChatML.
_CHAT_TEMPLATE_KEYS = {
    gguf.Keys.Tokenizer.CHAT_TEMPLATE,
    gguf.Keys.Tokenizer.CHAT_TEMPLATE_N.format(name="tool_use"),
}

_SCALARS: dict[gguf.GGUFValueType, str] = {
    gguf.GGUFValueType.UINT8: "B",
    gguf.GGUFValueType.INT8: "b",
    gguf.GGUFValueType.UINT16: "H",
    gguf.GGUFValueType.INT16: "h",
    gguf.GGUFValueType.UINT32: "I",
    gguf.GGUFValueType.INT32: "i",
    gguf.GGUFValueType.FLOAT32: "f",
    gguf.GGUFValueType.BOOL: "?",
    gguf.GGUFValueType.UINT64: "Q",
    gguf.GGUFValueType.INT64: "q",
    gguf.GGUFValueType.FLOAT64: "d",
}


@dataclass(frozen=True, slots=True)
class _Header:
    metadata: dict[str, Any]  # scalars and strings; arrays are skipped (None)
    parameter_count: int
    has_chat_template: bool = False  # a non-empty string under _CHAT_TEMPLATE_KEYS


class _Cursor:
    """Reads little- or big-endian GGUF values from a buffer, bounds-checked."""

    def __init__(self, buf: Any, endian: str) -> None:
        self.buf, self.endian, self.pos, self.size = buf, endian, 0, len(buf)

    def need(self, n: int) -> None:
        if n < 0 or self.pos + n > self.size:
            raise ServingError("truncated GGUF header")

    def scalar(self, fmt: str) -> Any:
        s = struct.Struct(self.endian + fmt)
        self.need(s.size)
        (value,) = s.unpack_from(self.buf, self.pos)
        self.pos += s.size
        return value

    def string(self) -> str:
        n = self.scalar("Q")
        self.need(n)
        raw = bytes(self.buf[self.pos : self.pos + n])
        self.pos += n
        return raw.decode("utf-8", errors="replace")

    def skip_string(self) -> int:
        """Skip one string; its length in bytes."""
        n = self.scalar("Q")
        self.need(n)
        self.pos += n
        return n

    def value(self, vtype: int) -> Any:
        """One value; arrays are skipped and read as None."""
        if vtype == gguf.GGUFValueType.STRING:
            return self.string()
        if vtype == gguf.GGUFValueType.ARRAY:
            self.skip_array()
            return None
        try:
            return self.scalar(_SCALARS[gguf.GGUFValueType(vtype)])
        except (ValueError, KeyError):
            raise ServingError(f"unknown GGUF value type {vtype}") from None

    def skip_array(self) -> None:
        etype, count = self.scalar("I"), self.scalar("Q")
        if etype == gguf.GGUFValueType.STRING:
            self.need(count * 8)  # each string has at least its 8-byte length
            for _ in range(count):
                self.skip_string()
        elif etype == gguf.GGUFValueType.ARRAY:
            for _ in range(count):
                self.skip_array()
        else:
            try:
                size = struct.calcsize(_SCALARS[gguf.GGUFValueType(etype)])
            except (ValueError, KeyError):
                raise ServingError(f"unknown GGUF array type {etype}") from None
            self.need(count * size)
            self.pos += count * size


def _parse(buf: Any) -> _Header:
    if len(buf) < 24 or bytes(buf[:4]) != b"GGUF":
        raise ServingError("not a GGUF file (bad magic)")
    endian = "<"
    version = struct.unpack_from("<I", buf, 4)[0]
    if version & 0xFFFF == 0:  # a big-endian file reads as 0x03000000
        endian, version = ">", struct.unpack_from(">I", buf, 4)[0]
    if version not in (2, 3):
        raise ServingError(f"unsupported GGUF version {version}")
    cur = _Cursor(buf, endian)
    cur.pos = 8
    n_tensors, n_kv = cur.scalar("Q"), cur.scalar("Q")
    metadata: dict[str, Any] = {}
    has_chat_template = False
    for _ in range(n_kv):
        key, vtype = cur.string(), cur.scalar("I")
        if key in _CHAT_TEMPLATE_KEYS and vtype == gguf.GGUFValueType.STRING:
            # Only whether there is one matters: the text (often many KB) is not read.
            has_chat_template |= cur.skip_string() > 0
            continue
        metadata[key] = cur.value(vtype)
    params, data_end = 0, 0
    for _ in range(n_tensors):
        cur.skip_string()
        n_dims = cur.scalar("I")
        if n_dims > 8:
            raise ServingError(f"bad tensor rank {n_dims}")
        dims = [cur.scalar("Q") for _ in range(n_dims)]
        qtype, offset = cur.scalar("I"), cur.scalar("Q")
        elements = prod(dims)
        params += elements
        block = gguf.GGML_QUANT_SIZES.get(_quant_type(qtype))
        if block:
            data_end = max(data_end, offset + elements // block[0] * block[1])
    align = metadata.get(gguf.Keys.General.ALIGNMENT) or gguf.GGUF_DEFAULT_ALIGNMENT
    data_start = -(-cur.pos // align) * align
    if data_end and data_start + data_end > cur.size:
        raise ServingError("truncated GGUF (tensor data past the end of the file)")
    return _Header(metadata, params, has_chat_template)


def _quant_type(value: int) -> gguf.GGMLQuantizationType | None:
    try:
        return gguf.GGMLQuantizationType(value)
    except ValueError:  # a type newer than our gguf package: skip its size check
        return None


def _read_header(path: Path) -> _Header:
    try:
        with path.open("rb") as f:
            if path.stat().st_size < 24:
                raise ServingError("not a GGUF file (too small)")
            with mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as mm:
                return _parse(mm)
    except OSError as exc:
        raise ServingError(f"cannot read {path}: {exc}") from None


def _file_type_name(value: Any) -> str | None:
    if not isinstance(value, int):
        return None
    try:
        return gguf.LlamaFileType(value).name.removeprefix("MOSTLY_")
    except ValueError:
        return str(value)


def read_model(path: Path) -> ModelFile:
    """Read one GGUF model's header; raise ServingError when it is not a usable model."""
    path = Path(path).expanduser()
    header = _read_header(path)
    meta = header.metadata
    arch = meta.get(gguf.Keys.General.ARCHITECTURE)
    if not isinstance(arch, str) or not arch:
        raise ServingError("GGUF without general.architecture")
    kind = meta.get(gguf.Keys.General.TYPE)
    if kind in _NOT_MODELS:
        raise ServingError(f"GGUF of type {kind!r}, not a model")
    name, size, params = path.stem, path.stat().st_size, header.parameter_count
    split_count = meta.get(gguf.Keys.Split.LLM_KV_SPLIT_COUNT) or 0
    if split_count > 1:
        if meta.get(gguf.Keys.Split.LLM_KV_SPLIT_NO):
            raise ServingError("not the first shard of a split GGUF")
        name, size, params = _split_totals(path, split_count, header)
    ctx = meta.get(gguf.Keys.LLM.CONTEXT_LENGTH.format(arch=arch))
    return ModelFile(
        kv_bytes_per_token=kv_bytes_per_token(meta, arch),
        name=name,
        path=path,
        size_bytes=size,
        architecture=arch,
        parameter_count=params or None,
        file_type=_file_type_name(meta.get(gguf.Keys.General.FILE_TYPE)),
        context_length=ctx if isinstance(ctx, int) else None,
        has_chat_template=header.has_chat_template,
        pooling=_pooling(meta.get(f"{arch}.pooling_type")),
    )


_POOLING = ("none", "mean", "cls", "last", "rank")  # llama.cpp's llama_pooling_type, 0-4


def _pooling(value: Any) -> str | None:
    """The pooling an embedding or rerank model's header names (None: a generative one)."""
    if isinstance(value, int) and not isinstance(value, bool) and 0 <= value < len(_POOLING):
        return _POOLING[value]
    return None


def kv_bytes_per_token(meta: dict[str, Any], arch: str) -> int | None:
    """Bytes of f16 KV cache one token of context takes (K and V, every layer), from the
    header's shape keys; None when they are missing or make no sense."""

    def key(name: str) -> Any:
        return meta.get(f"{arch}.{name}")

    layers, heads, kv_heads = (
        key("block_count"),
        key("attention.head_count"),
        key("attention.head_count_kv"),
    )
    if isinstance(heads, list):  # per-layer counts (some hybrid models)
        heads = max(heads, default=None)
    if kv_heads is None:
        kv_heads = heads
    if not isinstance(layers, int) or layers <= 0:
        return None
    per_layer = kv_heads if isinstance(kv_heads, list) else [kv_heads] * layers
    width = key("embedding_length")
    head_dim = (
        width // heads if isinstance(width, int) and isinstance(heads, int) and heads else None
    )
    k_len, v_len = (
        key("attention.key_length") or head_dim,
        key("attention.value_length") or head_dim,
    )
    if not all(isinstance(n, int) and n >= 0 for n in (*per_layer, k_len, v_len)):
        return None
    return 2 * sum(per_layer) * (k_len + v_len)


def _split_totals(first: Path, count: int, header: _Header) -> tuple[str, int, int | None]:
    match = _SPLIT_RE.match(first.stem)
    if not match:
        raise ServingError("split GGUF not named NAME-00001-of-0000N")
    base = match["base"]
    size, params = 0, header.parameter_count
    for no in range(1, count + 1):
        shard = first.with_name(f"{base}-{no:05d}-of-{count:05d}{first.suffix}")
        if not shard.is_file():
            raise ServingError(f"split GGUF is missing shard {shard.name}")
        size += shard.stat().st_size
        if no > 1:
            params += _read_header(shard).parameter_count
    return base, size, params


def _is_candidate(path: Path) -> bool:
    name = path.name.lower()
    return (
        name.endswith(".gguf")
        and not name.startswith(".")
        and not name.endswith(PARTIAL_SUFFIXES)
        and path.is_file()
    )


def scan_models(models_dir: Path) -> dict[str, ModelFile]:
    """The GGUF models directly in ``models_dir``, by name; anything else is skipped."""
    models_dir = Path(models_dir).expanduser()
    found: dict[str, ModelFile] = {}
    try:
        entries = sorted(models_dir.iterdir())
    except OSError as exc:
        log.debug("models dir %s unreadable: %s", models_dir, exc)
        return found
    for path in entries:
        if not _is_candidate(path):
            continue
        try:
            model = read_model(path)
        except ServingError as exc:
            log.debug("skipping %s: %s", path.name, exc)
            continue
        found.setdefault(model.name, model)
    return found


def resolve_model(spec: str, models_dir: Path) -> ModelFile | None:
    """A ``--model`` value: a name (file stem in ``models_dir``) or a path to a .gguf file."""
    models_dir = Path(models_dir).expanduser()
    as_path = Path(spec).expanduser()
    if "/" in spec or spec.lower().endswith(".gguf") or as_path.is_absolute():
        if as_path.is_file():
            try:
                return read_model(as_path)
            except ServingError as exc:
                log.warning("%s is not a usable model: %s", as_path, exc)
                return None
        if "/" in spec:
            return None
        spec = as_path.stem  # "name.gguf" given as a bare file name: look it up by name
    direct = models_dir / f"{spec}.gguf"
    if _is_candidate(direct):
        try:
            return read_model(direct)
        except ServingError as exc:
            log.debug("skipping %s: %s", direct.name, exc)
    return scan_models(models_dir).get(spec)


def main(argv: list[str] | None = None) -> int:
    """``python -m meshllm.serving.catalog DIR [SPEC...]``: JSON of the scan and of each
    ``--model`` spec resolved; what :mod:`meshllm.serving.scan` runs in a child process."""
    import json
    import sys

    args = sys.argv[1:] if argv is None else argv
    models_dir, specs = Path(args[0]), args[1:]
    result = {
        "models": [m.to_wire() for m in scan_models(models_dir).values()],
        "resolved": {
            spec: (m.to_wire() if (m := resolve_model(spec, models_dir)) else None)
            for spec in specs
        },
    }
    json.dump(result, sys.stdout)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
