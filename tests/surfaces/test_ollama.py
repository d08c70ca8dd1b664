"""Ollama's API translated to and from OpenAI's: by table, against the official ``ollama``
client's own types, end to end through ``ollama.Client`` on an in-memory transport, and
on hostile input (only ValueError, never another exception)."""

from __future__ import annotations

import contextlib
import json
from typing import Any

import httpx
import ollama as ollama_client
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from ollama._types import (
    ChatResponse,
    EmbeddingsResponse,
    EmbedResponse,
    GenerateResponse,
    ListResponse,
    ProcessResponse,
    ShowResponse,
)

from meshllm.surfaces import ollama
from meshllm.surfaces.ollama import LoadedModel, LocalModel, StreamTranslator

NOW = 1_700_000_000.25  # 2023-11-14T22:13:20.250000Z
STAMP = "2023-11-14T22:13:20.250000Z"
PNG = "iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mNk"
JPEG = "/9j/4AAQSkZJRgABAQAAAQABAAD"
TIMINGS = {
    "prompt_n": 10,
    "cache_n": 2,
    "prompt_ms": 35.25,
    "prompt_per_token_ms": 3.5,
    "prompt_per_second": 284.0,
    "predicted_n": 3,
    "predicted_ms": 60.5,
    "predicted_per_token_ms": 20.1,
    "predicted_per_second": 49.6,
}
DURATIONS = ("total_duration", "load_duration", "prompt_eval_duration", "eval_duration")


# ------------------------------------------------------------ llama-server shapes --------


def chunk(delta: dict[str, Any] | None = None, finish: str | None = None, **extra: Any) -> bytes:
    """One llama-server chat stream event."""
    event = {
        "choices": [{"finish_reason": finish, "index": 0, "delta": delta or {}}],
        "created": 1700000000,
        "id": "chatcmpl-x1",
        "model": "gemma-3-270m",
        "system_fingerprint": "b5000-abcdef",
        "object": "chat.completion.chunk",
        **extra,
    }
    return b"data: " + json.dumps(event, separators=(",", ":")).encode() + b"\n\n"


def text_chunk(text: str, finish: str | None = None, **extra: Any) -> bytes:
    """One llama-server /v1/completions stream event."""
    event = {
        "choices": [{"text": text, "index": 0, "logprobs": None, "finish_reason": finish}],
        "object": "text_completion",
        **extra,
    }
    return b"data: " + json.dumps(event).encode() + b"\n\n"


def chat_stream(words: list[str]) -> list[bytes]:
    """What llama-server streams for a chat answer of ``words``, as the proxy relays it:
    a comment, the role chunk, deltas (two in one piece), the finish with timings, the
    usage chunk, [DONE]."""
    deltas = [chunk({"content": w}) for w in words]
    return [
        b": loading model\n\n",
        chunk({"role": "assistant", "content": None}),
        deltas[0],
        b"".join(deltas[1:3]),
        *deltas[3:],
        chunk(finish="stop", timings=TIMINGS),
        b'data: {"choices":[],"usage":{"prompt_tokens":12,"completion_tokens":3}}\n\n',
        b"data: [DONE]\n\n",
    ]


def chat_completion(content: str | None = "Hello there.", **message: Any) -> dict[str, Any]:
    return {
        "id": "chatcmpl-x1",
        "object": "chat.completion",
        "created": 1700000000,
        "model": "gemma-3-270m",
        "choices": [
            {
                "index": 0,
                "finish_reason": message.pop("finish", "stop"),
                "message": {"role": "assistant", "content": content, **message},
            }
        ],
        "usage": {"prompt_tokens": 12, "completion_tokens": 3, "total_tokens": 15},
        "timings": TIMINGS,
    }


def lines(data: bytes) -> list[dict[str, Any]]:
    assert data.endswith(b"\n") or not data
    return [json.loads(line) for line in data.splitlines()]


def run_stream(kind: str, pieces: list[bytes], total_s: float = 0.5) -> list[dict[str, Any]]:
    translator = StreamTranslator(kind, "gemma:latest")  # type: ignore[arg-type]
    out = b"".join(translator.feed(p, NOW) for p in pieces) + translator.end(NOW, total_s)
    return lines(out)


# ---------------------------------------------------------------------- requests --------


def test_chat_request_realistic_conversation() -> None:
    body = {
        "model": "gemma:latest",
        "messages": [
            {"role": "system", "content": "Be brief."},
            {"role": "user", "content": "What is in this picture?", "images": [PNG, JPEG]},
            {
                "role": "assistant",
                "content": "",
                "tool_calls": [
                    {"function": {"name": "weather", "arguments": {"city": "Paris"}}},
                    {"function": {"name": "time", "arguments": {}}},
                ],
            },
            {"role": "tool", "content": "12:00", "tool_name": "time"},
            {"role": "tool", "content": "sunny"},
            {"role": "user", "content": "Thanks", "images": None},
        ],
        "tools": [{"type": "function", "function": {"name": "weather", "parameters": {}}}],
        "options": {
            "temperature": 0.2,
            "top_p": 0.9,
            "top_k": 40,
            "seed": 7,
            "num_predict": 128,
            "stop": ["\n\n"],
            "presence_penalty": 0.5,
            "frequency_penalty": 0.25,
            "num_ctx": 8192,
            "repeat_penalty": 1.1,
            "mirostat": 2,
        },
        "format": "json",
        "keep_alive": "10m",
        "think": True,
    }
    assert ollama.chat_request(body) == {
        "model": "gemma:latest",
        "keep_alive": "10m",
        "messages": [
            {"role": "system", "content": "Be brief."},
            {
                "role": "user",
                "content": [
                    {"type": "text", "text": "What is in this picture?"},
                    {"type": "image_url", "image_url": {"url": f"data:image/png;base64,{PNG}"}},
                    {"type": "image_url", "image_url": {"url": f"data:image/jpeg;base64,{JPEG}"}},
                ],
            },
            {
                "role": "assistant",
                "content": "",
                "tool_calls": [
                    {
                        "id": "call_2_0",
                        "type": "function",
                        "function": {"name": "weather", "arguments": '{"city": "Paris"}'},
                    },
                    {
                        "id": "call_2_1",
                        "type": "function",
                        "function": {"name": "time", "arguments": "{}"},
                    },
                ],
            },
            # tool_name picks its call; the next result takes the one left, by order
            {"role": "tool", "content": "12:00", "name": "time", "tool_call_id": "call_2_1"},
            {"role": "tool", "content": "sunny", "tool_call_id": "call_2_0"},
            {"role": "user", "content": "Thanks"},
        ],
        "tools": [{"type": "function", "function": {"name": "weather", "parameters": {}}}],
        "stream": True,  # Ollama's default
        "stream_options": {"include_usage": True},
        "temperature": 0.2,
        "top_p": 0.9,
        "top_k": 40,
        "seed": 7,
        "max_tokens": 128,
        "stop": ["\n\n"],
        "presence_penalty": 0.5,
        "frequency_penalty": 0.25,
        "response_format": {"type": "json_object"},
    }


@pytest.mark.parametrize(
    ("extra", "expected"),
    [
        ({"stream": False}, {"stream": False}),
        ({"stream": None}, {"stream": True, "stream_options": {"include_usage": True}}),
        ({"stream": False, "format": ""}, {"stream": False}),
        (
            {"stream": False, "format": {"type": "object", "properties": {"age": {}}}},
            {
                "stream": False,
                "response_format": {
                    "type": "json_schema",
                    "json_schema": {
                        "name": "schema",
                        "schema": {"type": "object", "properties": {"age": {}}},
                    },
                },
            },
        ),
        (
            {"stream": False, "options": {"num_predict": -1, "stop": "END"}},
            {"stream": False, "stop": ["END"]},
        ),
        (
            {"stream": False, "options": {"seed": 3.0, "temperature": 0}},
            {"stream": False, "seed": 3, "temperature": 0},
        ),
        ({"stream": False, "options": {"stop": [], "num_predict": 0}}, {"stream": False}),
        ({"stream": False, "tools": [], "think": "high", "logprobs": True}, {"stream": False}),
    ],
)
def test_chat_request_stream_options_format(extra: dict[str, Any], expected: dict[str, Any]):
    body = {"model": "m", "messages": [{"role": "user", "content": "hi"}], **extra}
    assert ollama.chat_request(body) == {
        "model": "m",
        "messages": [{"role": "user", "content": "hi"}],
        **expected,
    }


def test_chat_request_tool_call_with_id_and_string_arguments_kept() -> None:
    body = {
        "model": "m",
        "messages": [
            {
                "role": "assistant",
                "tool_calls": [{"id": "abc", "function": {"name": "f", "arguments": '{"a":1}'}}],
            },
            {"role": "tool", "content": "2"},
        ],
    }
    messages = ollama.chat_request(body)["messages"]
    assert messages[0]["tool_calls"][0]["id"] == "abc"
    assert messages[0]["tool_calls"][0]["function"]["arguments"] == '{"a":1}'
    assert messages[1]["tool_call_id"] == "abc"


def test_chat_request_tool_without_type_is_a_function() -> None:
    tool = {"function": {"name": "f", "parameters": {"type": "object"}}}
    body = {"model": "m", "messages": [{"role": "user", "content": "x"}], "tools": [tool]}
    assert ollama.chat_request(body)["tools"] == [{"type": "function", **tool}]


@pytest.mark.parametrize("messages", [None, []])
def test_chat_request_without_messages_is_a_load(messages: Any) -> None:
    body = {"model": "m", "messages": messages, "keep_alive": 0, "stream": False}
    out = ollama.chat_request(body)
    assert out == {"model": "m", "keep_alive": 0}
    assert ollama.is_load(out)
    assert not ollama.is_load(ollama.chat_request({"model": "m", "messages": [{"role": "user"}]}))


def test_generate_request_chat_with_system_and_images() -> None:
    body = {
        "model": "llava",
        "prompt": "Describe",
        "system": "You see.",
        "images": [PNG],
        "options": {"temperature": 0.5},
        "suffix": "",
        "template": "",
        "context": [1, 2, 3],  # dropped
        "keep_alive": -1,
    }
    assert ollama.generate_request(body) == (
        "/v1/chat/completions",
        {
            "model": "llava",
            "keep_alive": -1,
            "messages": [
                {"role": "system", "content": "You see."},
                {
                    "role": "user",
                    "content": [
                        {"type": "text", "text": "Describe"},
                        {"type": "image_url", "image_url": {"url": f"data:image/png;base64,{PNG}"}},
                    ],
                },
            ],
            "stream": True,
            "stream_options": {"include_usage": True},
            "temperature": 0.5,
        },
    )


def test_generate_request_raw_is_a_completion() -> None:
    body = {
        "model": "m",
        "prompt": "[INST] hi [/INST]",
        "raw": True,
        "stream": False,
        "system": "ignored in raw mode",
        "options": {"num_predict": 5},
    }
    assert ollama.generate_request(body) == (
        "/v1/completions",
        {"model": "m", "prompt": "[INST] hi [/INST]", "stream": False, "max_tokens": 5},
    )


@pytest.mark.parametrize("prompt", [None, ""])
def test_generate_request_without_prompt_is_a_load(prompt: str | None) -> None:
    path, body = ollama.generate_request({"model": "m", "prompt": prompt, "keep_alive": "5m"})
    assert (path, body) == ("", {"model": "m", "keep_alive": "5m"})
    assert ollama.is_load(body)
    assert ollama.generate_request({"model": "m"}) == ("", {"model": "m"})


@pytest.mark.parametrize(
    ("extra", "words"),
    [
        ({"suffix": "return x"}, "suffix"),
        ({"template": "{{ .Prompt }}"}, "template"),
        ({"raw": True, "images": [PNG]}, "images"),
        ({"raw": True, "format": "json"}, "format"),
        ({"raw": "yes"}, "raw"),
    ],
)
def test_generate_request_refuses_what_it_cannot_honour(extra: dict[str, Any], words: str):
    with pytest.raises(ValueError, match=words):
        ollama.generate_request({"model": "m", "prompt": "p", **extra})


def test_embed_request() -> None:
    assert ollama.embed_request(
        {
            "model": "e",
            "input": ["a", "b"],
            "truncate": True,
            "dimensions": 256,
            "keep_alive": "1m",
            "options": {"temperature": 1},
        }
    ) == {
        "model": "e",
        "keep_alive": "1m",
        "input": ["a", "b"],
        "encoding_format": "float",
        "dimensions": 256,
    }
    assert ollama.embed_request({"model": "e", "input": "a"})["input"] == "a"
    for empty in ("", [], None):
        assert ollama.is_load(ollama.embed_request({"model": "e", "input": empty}))


def test_legacy_embeddings_request() -> None:
    assert ollama.legacy_embeddings_request({"model": "e", "prompt": "hello"}) == {
        "model": "e",
        "input": "hello",
        "encoding_format": "float",
    }
    assert ollama.is_load(ollama.legacy_embeddings_request({"model": "e", "prompt": ""}))


# ----------------------------------------------------------------------- answers --------


def test_chat_answer_parses_as_the_official_type() -> None:
    answer = ollama.chat_answer(chat_completion(), "gemma:latest", NOW, total_s=0.25)
    parsed = ChatResponse.model_validate(answer)
    assert parsed.message.content == "Hello there."
    assert parsed.created_at == STAMP
    assert (parsed.done, parsed.done_reason) == (True, "stop")
    assert (parsed.prompt_eval_count, parsed.eval_count) == (12, 3)
    assert answer["prompt_eval_duration"] == 35_250_000
    assert answer["eval_duration"] == 60_500_000
    assert answer["total_duration"] == 250_000_000
    assert answer["load_duration"] == 0
    assert all(type(answer[k]) is int for k in DURATIONS)


def test_chat_answer_tool_calls_and_thinking() -> None:
    openai = chat_completion(
        None,
        finish="tool_calls",
        reasoning_content="Let me look.",
        tool_calls=[
            {
                "id": "c1",
                "type": "function",
                "function": {"name": "weather", "arguments": '{"city":"Paris"}'},
            },
            {"type": "function", "function": {"name": "time", "arguments": ""}},
        ],
    )
    answer = ollama.chat_answer(openai, "m", NOW)
    parsed = ChatResponse.model_validate(answer)
    assert parsed.done_reason == "stop"  # Ollama's word after tool calls
    assert parsed.message.thinking == "Let me look."
    assert parsed.message.content == ""
    calls = parsed.message.tool_calls or []
    assert [(c.function.name, dict(c.function.arguments)) for c in calls] == [
        ("weather", {"city": "Paris"}),
        ("time", {}),
    ]
    assert answer["message"]["tool_calls"][0]["id"] == "c1"


def test_chat_answer_refuses_arguments_that_are_not_an_object() -> None:
    openai = chat_completion(None, tool_calls=[{"function": {"name": "f", "arguments": "[1, 2"}}])
    with pytest.raises(ValueError, match="'f'"):
        ollama.chat_answer(openai, "m", NOW)


@pytest.mark.parametrize(
    ("usage", "timings", "total_s", "load_s", "expected"),
    [
        # timings give the counts (prompt_n + cache_n) and evaluation times; total: the caller's
        (None, TIMINGS, 1.0, 0.5, (12, 3, 1_000_000_000, 500_000_000, 35_250_000, 60_500_000)),
        # no total given: the sum
        (None, TIMINGS, None, 0.0, (12, 3, 95_750_000, 0, 35_250_000, 60_500_000)),
        # no timings: the wait after loading counts as generating
        (
            {"prompt_tokens": 4, "completion_tokens": 9},
            None,
            2.0,
            0.5,
            (4, 9, 2_000_000_000, 500_000_000, 0, 1_500_000_000),
        ),
        # nothing at all: zeros, still integers
        (None, None, None, 0.0, (0, 0, 0, 0, 0, 0)),
        # garbage from a peer: zeros, never an overflow
        (
            None,
            {"prompt_ms": float("inf"), "predicted_ms": "x", "prompt_n": -1, "cache_n": 2},
            float("nan"),
            -3,
            (2, 0, 0, 0, 0, 0),
        ),
        (
            {"prompt_tokens": True, "completion_tokens": 1 << 50},
            None,
            1e300,
            0.0,
            (0, 0, (1 << 63) - 1, 0, 0, (1 << 63) - 1),
        ),
    ],
)
def test_generate_answer_counts_and_durations(
    usage: Any, timings: Any, total_s: Any, load_s: Any, expected: tuple[int, ...]
) -> None:
    openai: dict[str, Any] = {"choices": [{"text": "Hi", "index": 0, "finish_reason": "length"}]}
    if usage is not None:
        openai["usage"] = usage
    if timings is not None:
        openai["timings"] = timings
    answer = ollama.generate_answer(openai, "m", NOW, total_s, load_s)
    parsed = GenerateResponse.model_validate(answer)
    assert (parsed.response, parsed.done, parsed.done_reason) == ("Hi", True, "length")
    got = tuple(
        answer[k]
        for k in (
            "prompt_eval_count",
            "eval_count",
            "total_duration",
            "load_duration",
            "prompt_eval_duration",
            "eval_duration",
        )
    )
    assert got == expected
    assert all(type(v) is int for v in got)


def test_generate_answer_from_a_chat_completion() -> None:
    answer = ollama.generate_answer(chat_completion("Yes."), "m", NOW)
    assert GenerateResponse.model_validate(answer).response == "Yes."


def test_embed_answers() -> None:
    openai = {
        "object": "list",
        "data": [
            {"object": "embedding", "index": 1, "embedding": [0.5, 0.25]},
            {"object": "embedding", "index": 0, "embedding": [0.1, 0.2]},
        ],
        "usage": {"prompt_tokens": 6, "total_tokens": 6},
    }
    answer = ollama.embed_answer(openai, "e", total_s=0.125, load_s=0.0)
    parsed = EmbedResponse.model_validate(answer)
    assert [list(e) for e in parsed.embeddings] == [[0.1, 0.2], [0.5, 0.25]]
    assert (answer["prompt_eval_count"], answer["total_duration"]) == (6, 125_000_000)
    legacy = ollama.legacy_embeddings_answer(openai)
    assert list(EmbeddingsResponse.model_validate(legacy).embedding) == [0.1, 0.2]
    with pytest.raises(ValueError):
        ollama.embed_answer({"data": [{"embedding": "AAAA"}]}, "e", 0.1)  # base64: refused


@pytest.mark.parametrize(
    ("kind", "keep_alive", "reason"),
    [
        ("chat", None, "load"),
        ("chat", 0, "unload"),
        ("generate", "0s", "unload"),
        ("generate", "5m", "load"),
        ("chat", -1, "load"),
    ],
)
def test_load_answer(kind: Any, keep_alive: Any, reason: str) -> None:
    answer = ollama.load_answer(kind, "m", keep_alive, NOW)
    cls = ChatResponse if kind == "chat" else GenerateResponse
    parsed = cls.model_validate(answer)
    assert (parsed.done, parsed.done_reason) == (True, reason)
    assert (
        EmbedResponse.model_validate(ollama.load_answer("embed", "e", None, NOW)).embeddings == []
    )
    with pytest.raises(ValueError, match="keep_alive"):
        ollama.load_answer("chat", "m", "soon", NOW)


def test_errors() -> None:
    assert ollama.error_body("model 'x' not found") == {"error": "model 'x' not found"}
    openai = {"error": {"message": "context too long", "type": "invalid_request_error"}}
    assert ollama.error_from_openai(openai) == {"error": "context too long"}
    assert ollama.error_from_openai("<html>", "backend said 502") == {"error": "backend said 502"}


# ----------------------------------------------------------------------- streams --------


def test_stream_chat_from_llama_server_events() -> None:
    out = run_stream("chat", chat_stream(["Hel", "lo", ",", " wor", "ld"]))
    *deltas, final = out
    parsed = [ChatResponse.model_validate(line) for line in out]
    assert "".join(p.message.content or "" for p in parsed[:-1]) == "Hello, world"
    assert [d["done"] for d in deltas] == [False] * 5
    assert deltas[0] == {
        "model": "gemma:latest",
        "created_at": STAMP,
        "message": {"role": "assistant", "content": "Hel"},
        "done": False,
    }
    assert final["done"] is True and final["done_reason"] == "stop"
    assert final["message"] == {"role": "assistant", "content": ""}
    assert (final["prompt_eval_count"], final["eval_count"]) == (12, 3)  # usage beats timings
    assert (final["prompt_eval_duration"], final["eval_duration"]) == (35_250_000, 60_500_000)
    assert final["total_duration"] == 500_000_000
    assert all(type(final[k]) is int for k in DURATIONS)


def test_stream_generate_from_completion_events_and_length() -> None:
    pieces = [
        text_chunk("Once"),
        text_chunk(" upon") + text_chunk(" a"),
        text_chunk("", "length", timings=TIMINGS),
        b"data: [DONE]\n\n",
    ]
    out = run_stream("generate", pieces)
    parsed = [GenerateResponse.model_validate(line) for line in out]
    assert "".join(p.response or "" for p in parsed) == "Once upon a"
    assert (parsed[-1].done, parsed[-1].done_reason) == (True, "length")
    assert (parsed[-1].prompt_eval_count, parsed[-1].eval_count) == (12, 3)  # timings: 10 + 2


def test_stream_generate_from_chat_events() -> None:
    out = run_stream("generate", chat_stream(["a", "b", "c"]))
    assert [line.get("response") for line in out] == ["a", "b", "c", ""]
    assert all("message" not in line for line in out)


def test_stream_tool_calls_arrive_whole() -> None:
    pieces = [
        chunk({"role": "assistant", "content": None}),
        chunk(
            {
                "tool_calls": [
                    {
                        "index": 0,
                        "id": "call_9",
                        "type": "function",
                        "function": {"name": "weather", "arguments": ""},
                    }
                ]
            }
        ),
        chunk({"tool_calls": [{"index": 0, "function": {"arguments": '{"city":'}}]}),
        chunk({"tool_calls": [{"index": 0, "function": {"arguments": ' "Paris"}'}}]}),
        chunk(
            {
                "tool_calls": [
                    {
                        "index": 1,
                        "id": "call_10",
                        "type": "function",
                        "function": {"name": "time", "arguments": "{}"},
                    }
                ]
            }
        ),
        chunk(finish="tool_calls", timings=TIMINGS),
        b"data: [DONE]\n\n",
    ]
    out = run_stream("chat", pieces)
    assert len(out) == 2
    calls = ChatResponse.model_validate(out[0]).message.tool_calls or []
    assert [(c.function.name, dict(c.function.arguments)) for c in calls] == [
        ("weather", {"city": "Paris"}),
        ("time", {}),
    ]
    assert [c["id"] for c in out[0]["message"]["tool_calls"]] == ["call_9", "call_10"]
    assert out[1]["done"] is True and out[1]["done_reason"] == "stop"


def test_stream_reasoning_is_thinking() -> None:
    out = run_stream("chat", [chunk({"reasoning_content": "hmm"}), chunk({"content": "ok"})])
    parsed = [ChatResponse.model_validate(line) for line in out]
    assert (parsed[0].message.thinking, parsed[0].message.content) == ("hmm", "")
    assert parsed[1].message.content == "ok"


@pytest.mark.parametrize(
    "event",
    [
        b'data: {"error":{"code":500,"message":"the model crashed","type":"server_error"}}\n\n',
        b'error: {"code":500,"message":"the model crashed","type":"server_error"}\n\n',
    ],
)
def test_stream_error_event_becomes_an_error_line(event: bytes) -> None:
    translator = StreamTranslator("chat", "m")
    translator.feed(chunk({"content": "Hi"}), NOW)
    assert lines(translator.feed(event, NOW)) == [{"error": "the model crashed"}]
    assert translator.end(NOW, 1.0) == b""


def test_stream_counts_events_when_the_backend_says_nothing() -> None:
    out = run_stream(
        "chat", [chunk({"content": "a"}), chunk({"content": "b"}), chunk(finish="stop")]
    )
    assert (out[-1]["eval_count"], out[-1]["prompt_eval_count"]) == (2, 0)
    assert out[-1]["eval_duration"] == 500_000_000  # the whole wait, so a rate is a rate


def test_stream_crlf_keepalives_and_junk_are_skipped() -> None:
    pieces = [
        b": ping\r\n\r\n",
        b'data: {"choices":[{"delta":{"content":"x"}}]}\r\n\r\n',
        b"data: not json\n\n",
        b"data: [1, 2]\n\n",
        b"data:\n\n",
        b'event: message\nid: 3\ndata: {"choices":[{"delta":{"content":"y"}}]}\n\n',
        b"data: " + b"[" * 100_000 + b"\n\n",
    ]
    out = run_stream("chat", pieces)
    assert [line["message"]["content"] for line in out] == ["x", "y", ""]


def test_stream_unicode_and_escapes_survive() -> None:
    text = 'naïve "quotes" \\ \n 日本 \U0001f600'
    out = run_stream("chat", [chunk({"content": text})])
    assert out[0]["message"]["content"] == text


def test_stream_timestamp_per_event() -> None:
    translator = StreamTranslator("generate", "m")
    first = lines(translator.feed(text_chunk("a"), NOW))[0]["created_at"]
    second = lines(translator.feed(text_chunk("b"), NOW + 1.5))[0]["created_at"]
    assert (first, second) == (STAMP, "2023-11-14T22:13:21.750000Z")


def test_stream_bad_tool_arguments_become_an_error_line() -> None:
    pieces = [
        chunk({"tool_calls": [{"index": 0, "function": {"name": "f", "arguments": "{"}}]}),
        chunk(finish="tool_calls"),
    ]
    assert run_stream("chat", pieces) == [
        {"error": "the model called tool 'f' with arguments that are not an object"}
    ]


def test_stream_nameless_tool_call_and_too_many_calls_are_error_lines() -> None:
    nameless = [chunk({"tool_calls": [{"index": 0, "function": {"arguments": "{}"}}]})]
    assert run_stream("chat", nameless) == [{"error": "the model called a tool without naming it"}]
    many = [
        {"index": i, "function": {"name": "f", "arguments": "{}"}}
        for i in range(ollama.MAX_TOOL_CALLS + 1)
    ]
    out = run_stream("chat", [chunk({"tool_calls": many}), chunk({"content": "late"})])
    assert out == [{"error": f"the model made more than {ollama.MAX_TOOL_CALLS} tool calls"}]


def test_stream_translator_kind() -> None:
    with pytest.raises(ValueError):
        StreamTranslator("embed", "m")  # type: ignore[arg-type]


# ---------------------------------------------------------------------- listings --------

LLAMA = LocalModel(
    name="llama3",
    size=4_920_753_328,
    sha256="365c0bd3c000a25d28ddbf732fe1c6add414de7275464c4e4d1c3b5fcb5d8ad1",
    family="llama",
    quantization="Q4_K_M",
    parameter_size="8.0B",
    modified_at=NOW,
    context_length=8192,
    parameter_count=8_030_261_248,
    capabilities=("tools",),
)
NOMIC = LocalModel(
    "nomic-embed:v1.5", 274_302_450, "", "nomic-bert", "F16", "137M", NOW, embedding=True
)


def test_tags() -> None:
    answer = ollama.tags([LLAMA, NOMIC])
    parsed = ListResponse.model_validate(answer)
    assert [m.model for m in parsed.models] == ["llama3:latest", "nomic-embed:v1.5"]
    first = answer["models"][0]
    assert first["name"] == "llama3:latest"
    assert first["modified_at"] == STAMP
    assert first["details"] == {
        "parent_model": "",
        "format": "gguf",
        "family": "llama",
        "families": ["llama"],
        "parameter_size": "8.0B",
        "quantization_level": "Q4_K_M",
    }
    assert parsed.models[0].size == LLAMA.size


def test_ps() -> None:
    loaded = [
        LoadedModel("llama3", 6_000_000_000, 5_500_000_000, NOW + 300, context_length=4096),
        LoadedModel("pinned", 100, 0, None),
    ]
    answer = ollama.ps(loaded, [LLAMA])
    parsed = ProcessResponse.model_validate(answer)
    assert [m.name for m in parsed.models] == ["llama3:latest", "pinned:latest"]
    assert parsed.models[0].expires_at is not None
    assert parsed.models[0].expires_at.year == 2023
    assert parsed.models[0].digest == LLAMA.sha256
    assert parsed.models[0].context_length == 4096
    assert parsed.models[1].expires_at is not None and parsed.models[1].expires_at.year > 2300
    assert answer["models"][1]["details"]["format"] == "gguf"


def test_show() -> None:
    parsed = ShowResponse.model_validate(ollama.show(LLAMA))
    assert parsed.capabilities == ["completion", "tools"]
    assert parsed.modelinfo == {
        "general.architecture": "llama",
        "llama.context_length": 8192,
        "general.parameter_count": 8_030_261_248,
    }
    assert parsed.details is not None and parsed.details.quantization_level == "Q4_K_M"
    assert "FROM llama3" in (parsed.modelfile or "")
    assert ShowResponse.model_validate(ollama.show(NOMIC)).capabilities == ["embedding"]


def test_version() -> None:
    assert ollama.version("0.1.0") == {"version": "0.5.0", "meshllm_version": "0.1.0"}


@pytest.mark.parametrize(
    ("requested", "known", "expected"),
    [
        ("llama3", ["llama3"], "llama3"),
        ("llama3:latest", ["llama3"], "llama3"),
        ("llama3", ["llama3:latest"], "llama3:latest"),
        ("llama3:8b", ["llama3", "llama3:8b"], "llama3:8b"),
        ("llama3:8b", ["llama3"], None),
        ("llama3:latest", ["llama3:latest", "llama3"], "llama3:latest"),
        ("other", ["llama3"], None),
    ],
)
def test_resolve_name(requested: str, known: list[str], expected: str | None) -> None:
    assert ollama.resolve_name(requested, iter(known)) == expected
    assert ollama.resolve_name(requested, set(known)) == expected


def test_tagged() -> None:
    assert ollama.tagged("gemma") == "gemma:latest"
    assert ollama.tagged("gemma:2b") == "gemma:2b"
    assert ollama.tagged("host:5000/ns/gemma") == "host:5000/ns/gemma:latest"


# ------------------------------------------- end to end: the official client -------------


def fake_node(request: httpx.Request) -> httpx.Response:
    """A node's Ollama routes in miniature: translate, 'forward' to a llama-server that
    answers from fixtures, translate back."""
    path = request.url.path
    if request.method == "GET":
        if path == "/api/tags":
            return httpx.Response(200, json=ollama.tags([LLAMA, NOMIC]))
        if path == "/api/ps":
            return httpx.Response(200, json=ollama.ps([LoadedModel("llama3", 1, 1, None)]))
    body = json.loads(request.content)
    try:
        if path == "/api/show":
            return httpx.Response(200, json=ollama.show(LLAMA))
        if path in ("/api/embed", "/api/embeddings"):
            embed = path == "/api/embed"
            openai = (ollama.embed_request if embed else ollama.legacy_embeddings_request)(body)
            inputs = openai["input"] if isinstance(openai["input"], list) else [openai["input"]]
            answer = {"data": [{"index": i, "embedding": [0.5] * 4} for i in range(len(inputs))]}
            if embed:
                return httpx.Response(200, json=ollama.embed_answer(answer, body["model"], 0.1))
            return httpx.Response(200, json=ollama.legacy_embeddings_answer(answer))
        kind = "chat" if path == "/api/chat" else "generate"
        if kind == "chat":
            openai, target = ollama.chat_request(body), "/v1/chat/completions"
        else:
            target, openai = ollama.generate_request(body)
        if ollama.is_load(openai):
            answer = ollama.load_answer(kind, body["model"], openai.get("keep_alive"), NOW)
            return httpx.Response(200, json=answer)
    except ValueError as exc:
        return httpx.Response(400, json=ollama.error_body(str(exc)))
    if not openai["stream"]:
        if target == "/v1/completions":
            reply = {"choices": [{"text": "raw!", "finish_reason": "stop"}], "timings": TIMINGS}
        elif openai.get("tools"):
            reply = chat_completion(
                None,
                tool_calls=[
                    {"id": "c", "function": {"name": "add", "arguments": '{"a": 1, "b": 2}'}}
                ],
            )
        else:
            reply = chat_completion("Hi!")
        answer_for = ollama.chat_answer if kind == "chat" else ollama.generate_answer
        return httpx.Response(200, json=answer_for(reply, body["model"], NOW, 0.3))
    translator = StreamTranslator(kind, body["model"])
    ndjson = b"".join(translator.feed(e, NOW) for e in chat_stream(["Hi", " ", "there", "!"]))
    return httpx.Response(200, content=ndjson + translator.end(NOW, 0.3))


@pytest.fixture
def client() -> ollama_client.Client:
    return ollama_client.Client(host="http://node:11434", transport=httpx.MockTransport(fake_node))


def add(a: int, b: int) -> int:
    """Add two numbers.

    Args:
      a: The first number
      b: The second number

    Returns:
      int: The sum
    """
    return a + b


def test_client_chat(client: ollama_client.Client) -> None:
    streamed = list(client.chat("llama3", [{"role": "user", "content": "hi"}], stream=True))
    assert "".join(p.message.content or "" for p in streamed) == "Hi there!"
    assert streamed[-1].done and streamed[-1].eval_count == 3
    answer = client.chat(
        "llama3",
        [{"role": "user", "content": "hi", "images": [PNG.encode()]}],
        options={"temperature": 0, "num_ctx": 4096},
        format="json",
    )
    assert answer.message.content == "Hi!"
    tooled = client.chat("llama3", [{"role": "user", "content": "1+2?"}], tools=[add])
    calls = tooled.message.tool_calls or []
    assert [(c.function.name, dict(c.function.arguments)) for c in calls] == [
        ("add", {"a": 1, "b": 2})
    ]
    loaded = client.chat("llama3", [], keep_alive=0)
    assert loaded.done_reason == "unload"


def test_client_generate(client: ollama_client.Client) -> None:
    streamed = list(client.generate("llama3", "hi", stream=True))
    assert "".join(p.response for p in streamed) == "Hi there!"
    assert client.generate("llama3", "hi", system="brief").response == "Hi!"
    assert client.generate("llama3", "[INST]hi", raw=True).response == "raw!"
    assert client.generate("llama3").done_reason == "load"
    with pytest.raises(ollama_client.ResponseError, match="suffix"):
        client.generate("llama3", "def f(", suffix="return x")


def test_client_embed_and_listings(client: ollama_client.Client) -> None:
    assert len(client.embed("nomic-embed:v1.5", ["a", "b"]).embeddings) == 2
    assert list(client.embeddings("nomic-embed:v1.5", "a").embedding) == [0.5] * 4
    assert [m.model for m in client.list().models] == ["llama3:latest", "nomic-embed:v1.5"]
    assert client.ps().models[0].name == "llama3:latest"
    assert client.show("llama3").capabilities == ["completion", "tools"]


# ----------------------------------------------------------------------- hostile --------


def nested(depth: int) -> Any:
    value: Any = {}
    for _ in range(depth):
        value = {"a": [value]}
    return value


HOSTILE_CHAT = [
    None,
    [],
    "chat",
    {},
    {"model": ""},
    {"model": 3, "messages": []},
    {"model": "m", "messages": "hi"},
    {"model": "m", "messages": {"role": "user"}},
    {"model": "m", "messages": [None]},
    {"model": "m", "messages": [["user", "hi"]]},
    {"model": "m", "messages": [{"role": "wizard", "content": "hi"}]},
    {"model": "m", "messages": [{"role": ["user"], "content": "hi"}]},
    {"model": "m", "messages": [{"role": "user", "content": ["hi"]}]},
    {"model": "m", "messages": [{"role": "user", "content": {"text": "hi"}}]},
    {"model": "m", "messages": [{"role": "user", "content": "x", "images": "abc"}]},
    {"model": "m", "messages": [{"role": "user", "content": "x", "images": [1]}]},
    {"model": "m", "messages": [{"role": "assistant", "content": "x", "images": [PNG]}]},
    {"model": "m", "messages": [{"role": "assistant", "tool_calls": "f"}]},
    {"model": "m", "messages": [{"role": "assistant", "tool_calls": [{"function": "f"}]}]},
    {"model": "m", "messages": [{"role": "assistant", "tool_calls": [{"function": {}}]}]},
    {
        "model": "m",
        "messages": [
            {"role": "assistant", "tool_calls": [{"function": {"name": "f", "arguments": 3}}]}
        ],
    },
    {
        "model": "m",
        "messages": [
            {
                "role": "assistant",
                "tool_calls": [{"function": {"name": "f", "arguments": nested(5000)}}],
            }
        ],
    },
    {
        "model": "m",
        "messages": [
            {
                "role": "assistant",
                "tool_calls": [{"function": {"name": "f", "arguments": {"x": {1, 2}}}}],
            }
        ],
    },
    {
        "model": "m",
        "messages": [
            {"role": "assistant", "tool_calls": [{"function": {"name": "f", "arguments": "[1]"}}]}
        ],
    },
    {
        "model": "m",
        "messages": [
            {"role": "assistant", "tool_calls": [{"function": {"name": "f", "arguments": "{"}}]}
        ],
    },
    {"model": "m", "messages": [{"role": "user"}], "stream": "yes"},
    {"model": "m", "messages": [{"role": "user"}], "options": [1]},
    {"model": "m", "messages": [{"role": "user"}], "options": {"temperature": "hot"}},
    {"model": "m", "messages": [{"role": "user"}], "options": {"temperature": True}},
    {"model": "m", "messages": [{"role": "user"}], "options": {"seed": 1.5}},
    {"model": "m", "messages": [{"role": "user"}], "options": {"seed": float("inf")}},
    {"model": "m", "messages": [{"role": "user"}], "options": {"stop": [1]}},
    {"model": "m", "messages": [{"role": "user"}], "format": "yaml"},
    {"model": "m", "messages": [{"role": "user"}], "format": ["json"]},
    {"model": "m", "messages": [{"role": "user"}], "tools": {"name": "f"}},
    {"model": "m", "messages": [{"role": "user"}], "tools": [{"type": "function"}]},
]


@pytest.mark.parametrize("body", HOSTILE_CHAT)
def test_hostile_chat_request_is_a_value_error(body: Any) -> None:
    with pytest.raises(ValueError) as caught:
        ollama.chat_request(body)
    assert type(caught.value) is ValueError
    assert "\n" not in str(caught.value)


@pytest.mark.parametrize(
    "body",
    [
        {"model": "m", "prompt": 3},
        {"model": "m", "prompt": "p", "system": ["s"]},
        {"model": "m", "prompt": "p", "images": "abc"},
        {"model": "m", "prompt": "p", "suffix": 3},
        {"model": "m", "prompt": "p", "stream": 1},
        {"model": "m", "prompt": "p", "options": {"num_predict": "10"}},
        {"prompt": "p"},
    ],
)
def test_hostile_generate_request_is_a_value_error(body: Any) -> None:
    with pytest.raises(ValueError):
        ollama.generate_request(body)


@pytest.mark.parametrize(
    "body",
    [
        {"model": "e", "input": 3},
        {"model": "e", "input": ["a", 3]},
        {"model": "e", "input": [["a"]]},
        {"model": "e", "input": "a", "dimensions": -1},
        {"model": "e", "input": "a", "dimensions": True},
        {"model": "e", "input": "a", "truncate": "no"},
        {"input": "a"},
    ],
)
def test_hostile_embed_request_is_a_value_error(body: Any) -> None:
    with pytest.raises(ValueError):
        ollama.embed_request(body)


@pytest.mark.parametrize(
    "body",
    [
        {"model": "e", "prompt": 3},
        {"model": "e", "prompt": ["a"]},
        {"prompt": "a"},
        {"model": None, "prompt": "a"},
    ],
)
def test_hostile_legacy_embeddings_request_is_a_value_error(body: Any) -> None:
    with pytest.raises(ValueError):
        ollama.legacy_embeddings_request(body)


def test_deep_format_and_tools_pass_through_untouched() -> None:
    deep = nested(5000)
    body = {
        "model": "m",
        "messages": [{"role": "user", "content": "x"}],
        "format": deep,
        "tools": [{"type": "function", "function": deep}],
    }
    out = ollama.chat_request(body)
    assert out["response_format"]["json_schema"]["schema"] is deep


@pytest.mark.parametrize(
    "openai",
    [
        None,
        [],
        {},
        {"choices": []},
        {"choices": [None]},
        {"choices": "x"},
        {"choices": [{"message": "hi"}]},
        {"choices": [{"message": {"tool_calls": "f"}}]},
        {"choices": [{"message": {"tool_calls": [{"function": {"name": 3}}]}}]},
        {
            "choices": [
                {"message": {"tool_calls": [{"function": {"name": "f", "arguments": "[]"}}]}}
            ]
        },
    ],
)
def test_hostile_answers_are_value_errors(openai: Any) -> None:
    with pytest.raises(ValueError):
        ollama.chat_answer(openai, "m", NOW)
    with pytest.raises(ValueError):
        ollama.embed_answer(openai, "m", 0.0)


JSON = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=8),
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4)
    ),
    max_leaves=16,
)
FIELDS = [
    "model",
    "messages",
    "role",
    "content",
    "images",
    "tool_calls",
    "function",
    "name",
    "arguments",
    "options",
    "format",
    "tools",
    "stream",
    "prompt",
    "raw",
    "system",
    "input",
    "dimensions",
    "truncate",
    "keep_alive",
    "suffix",
    "choices",
    "message",
    "delta",
    "text",
    "usage",
    "timings",
    "data",
    "embedding",
    "error",
    "finish_reason",
]
BODY = st.dictionaries(
    st.sampled_from(FIELDS),
    JSON | st.lists(st.dictionaries(st.sampled_from(FIELDS), JSON, max_size=4), max_size=3),
    max_size=6,
)


@settings(max_examples=300, deadline=None)
@given(body=BODY | JSON)
def test_fuzzed_requests_raise_only_value_error(body: Any) -> None:
    for translate in (
        ollama.chat_request,
        ollama.generate_request,
        ollama.embed_request,
        ollama.legacy_embeddings_request,
    ):
        with contextlib.suppress(ValueError):
            translate(body)


@settings(max_examples=300, deadline=None)
@given(answer=BODY | JSON)
def test_fuzzed_answers_raise_only_value_error_and_feed_never_raises(answer: Any) -> None:
    for translate in (ollama.chat_answer, ollama.generate_answer):
        with contextlib.suppress(ValueError):
            translate(answer, "m", NOW)
    with contextlib.suppress(ValueError):
        ollama.embed_answer(answer, "m", 0.1)
    for kind in ("chat", "generate"):
        translator = StreamTranslator(kind, "m")  # type: ignore[arg-type]
        payload = json.dumps(answer).encode()
        out = translator.feed(b"data: " + payload + b"\n\n" + payload + b"\n\n", NOW)
        out += translator.end(NOW, 0.1)
        for line in lines(out):
            assert isinstance(line, dict)
