"""Tests of meshllm/surfaces/anthropic.py: each translation on realistic inputs, hostile
requests, and the output read back by the official anthropic and openai SDKs."""

from __future__ import annotations

import json
import random
from typing import Any

import anthropic
import httpx2
import openai
import pydantic
import pytest
from anthropic.types import Message, RawMessageStreamEvent
from anthropic.types.shared import ErrorResponse
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from openai.types.chat import ChatCompletion

from meshllm.surfaces.anthropic import (
    DEFAULT_MAX_TOKENS,
    IMAGE_TOKENS,
    MAX_PENDING_BYTES,
    MESSAGE_OVERHEAD_TOKENS,
    AnthropicToOpenAIStream,
    StreamTranslator,
    count_tokens_request,
    error_body,
    estimate_tokens,
    message_answer,
    messages_request,
    messages_to_openai,
    openai_to_messages,
    wants_thinking,
)
from tests.surfaces.doubles import mutate, openai_chunks, sdk_client

EVENTS = pydantic.TypeAdapter(RawMessageStreamEvent)
WEATHER_TOOL = {
    "name": "get_weather",
    "description": "Current weather in a city",
    "input_schema": {
        "type": "object",
        "properties": {"city": {"type": "string"}},
        "required": ["city"],
    },
}


# -- helpers ---------------------------------------------------------------------------


def _chunk(delta: dict | None = None, finish: str | None = None, **extra: Any) -> bytes:
    """One llama-server-shaped streamed chunk, as an SSE event."""
    body: dict[str, Any] = {
        "id": "chatcmpl-abc",
        "object": "chat.completion.chunk",
        "created": 1700000000,
        "model": "qwen",
        "choices": [{"index": 0, "delta": delta or {}, "finish_reason": finish}],
    }
    body.update(extra)
    return b"data: " + json.dumps(body).encode() + b"\n\n"


def _tool_delta(index: int, *, ident: str = "", name: str = "", arguments: str = "") -> dict:
    call: dict[str, Any] = {"index": index, "function": {"arguments": arguments}}
    if ident:
        call["id"], call["type"] = ident, "function"
        call["function"]["name"] = name
    return {"tool_calls": [call]}


TIMINGS = {"prompt_n": 12, "cache_n": 30, "predicted_n": 9, "predicted_ms": 80.0}
LLAMA_STREAM = [
    b": loading model\n\n",
    _chunk({"role": "assistant", "content": None}),
    _chunk({"content": "Let me "}) + _chunk({"content": "check "}) + _chunk({"content": "é☃."}),
    _chunk(_tool_delta(0, ident="call_1", name="get_weather")),
    _chunk(_tool_delta(0, arguments='{"city": ')),
    _chunk(_tool_delta(0, arguments='"Paris"}')),
    _chunk(_tool_delta(1, ident="call_2", name="get_weather", arguments='{"city":"Oslo"}')),
    _chunk({}, "tool_calls", timings=TIMINGS),
    b"data: [DONE]\n\n",
]


def _events(sse: bytes) -> list[tuple[str, dict]]:
    """Anthropic SSE as (event name, data), each data checked by the SDK's event types."""
    out = []
    for raw in sse.split(b"\n\n"):
        if not raw:
            continue
        lines = raw.decode().split("\n")
        assert lines[0].startswith("event: ") and lines[1].startswith("data: "), raw
        name, data = lines[0][7:], json.loads(lines[1][6:])
        assert data["type"] == name
        if name not in ("ping", "error"):
            EVENTS.validate_python(data)
        out.append((name, data))
    return out


def _translate(pieces: list[bytes], **kwargs: Any) -> bytes:
    translator = StreamTranslator("qwen", "msg_test", **kwargs)
    return b"".join(translator.feed(piece) for piece in pieces) + translator.end()


def _sdk_final_message(sse: bytes) -> tuple[Message, str]:
    """What the official client's ``messages.stream`` makes of ``sse``."""
    client = sdk_client(sse, "text/event-stream", anthropic.Anthropic)
    with client.messages.stream(
        model="qwen", max_tokens=64, messages=[{"role": "user", "content": "hi"}]
    ) as stream:
        text = "".join(stream.text_stream)
        return stream.get_final_message(), text


def _request(**fields: Any) -> dict:
    body: dict[str, Any] = {
        "model": "qwen",
        "max_tokens": 256,
        "messages": [{"role": "user", "content": "Hello"}],
    }
    body.update(fields)
    return body


# -- messages_request ------------------------------------------------------------------


def test_messages_request_plain_chat() -> None:
    body = _request(
        system="Be brief.",
        stop_sequences=["\n\nHuman:"],
        temperature=0.2,
        top_p=0.9,
        top_k=40,
        metadata={"user_id": "u1"},
        messages=[
            {"role": "user", "content": "Hello"},
            {"role": "assistant", "content": "Hi!"},
            {"role": "user", "content": [{"type": "text", "text": "How are you?"}]},
        ],
    )
    assert messages_request(body) == {
        "model": "qwen",
        "messages": [
            {"role": "system", "content": "Be brief."},
            {"role": "user", "content": "Hello"},
            {"role": "assistant", "content": "Hi!"},
            {"role": "user", "content": "How are you?"},
        ],
        "max_tokens": 256,
        "temperature": 0.2,
        "top_p": 0.9,
        "stop": ["\n\nHuman:"],
    }


def test_messages_request_stream_asks_for_usage() -> None:
    out = messages_request(_request(stream=True))
    assert out["stream"] is True
    assert out["stream_options"] == {"include_usage": True}
    assert "stream" not in messages_request(_request(stream=False))


def test_messages_request_system_blocks_joined() -> None:
    system = [
        {"type": "text", "text": "You are Claude Code."},
        {"type": "text", "text": "Use tools.", "cache_control": {"type": "ephemeral"}},
    ]
    out = messages_request(_request(system=system))
    assert out["messages"][0] == {"role": "system", "content": "You are Claude Code.\n\nUse tools."}
    assert messages_request(_request(system=""))["messages"][0]["role"] == "user"


def test_messages_request_tool_conversation() -> None:
    body = _request(
        tools=[WEATHER_TOOL],
        tool_choice={"type": "auto", "disable_parallel_tool_use": True},
        messages=[
            {"role": "user", "content": "Weather in Paris and Oslo?"},
            {
                "role": "assistant",
                "content": [
                    {"type": "thinking", "thinking": "Two calls.", "signature": "sig"},
                    {"type": "text", "text": "Checking."},
                    {
                        "type": "tool_use",
                        "id": "toolu_1",
                        "name": "get_weather",
                        "input": {"city": "Paris"},
                    },
                    {
                        "type": "tool_use",
                        "id": "toolu_2",
                        "name": "get_weather",
                        "input": {"city": "Oslo"},
                    },
                ],
            },
            {
                "role": "user",
                "content": [
                    {"type": "tool_result", "tool_use_id": "toolu_1", "content": "18°C, sunny"},
                    {
                        "type": "tool_result",
                        "tool_use_id": "toolu_2",
                        "content": [{"type": "text", "text": "no data"}],
                        "is_error": True,
                    },
                    {"type": "text", "text": "Summarise."},
                ],
            },
        ],
    )
    out = messages_request(body)
    assert out["tools"] == [
        {
            "type": "function",
            "function": {
                "name": "get_weather",
                "description": "Current weather in a city",
                "parameters": WEATHER_TOOL["input_schema"],
            },
        }
    ]
    assert out["tool_choice"] == "auto"
    assert out["parallel_tool_calls"] is False
    assert out["messages"][1:] == [
        {
            "role": "assistant",
            "content": "Checking.",
            "tool_calls": [
                {
                    "id": "toolu_1",
                    "type": "function",
                    "function": {"name": "get_weather", "arguments": '{"city":"Paris"}'},
                },
                {
                    "id": "toolu_2",
                    "type": "function",
                    "function": {"name": "get_weather", "arguments": '{"city":"Oslo"}'},
                },
            ],
        },
        {"role": "tool", "tool_call_id": "toolu_1", "content": "18°C, sunny"},
        {"role": "tool", "tool_call_id": "toolu_2", "content": "Error: no data"},
        {"role": "user", "content": "Summarise."},
    ]


def test_messages_request_tool_use_only_has_null_content() -> None:
    call = {"type": "tool_use", "id": "t", "name": "f", "input": {}}
    body = _request(
        messages=[{"role": "user", "content": "x"}, {"role": "assistant", "content": [call]}]
    )
    assistant = messages_request(body)["messages"][1]
    assert assistant["content"] is None
    assert assistant["tool_calls"][0]["function"]["arguments"] == "{}"


@pytest.mark.parametrize(
    ("choice", "expected"),
    [
        ({"type": "auto"}, "auto"),
        ({"type": "any"}, "required"),
        ({"type": "none"}, "none"),
        (
            {"type": "tool", "name": "get_weather"},
            {"type": "function", "function": {"name": "get_weather"}},
        ),
    ],
)
def test_messages_request_tool_choice(choice: dict, expected: Any) -> None:
    out = messages_request(_request(tools=[WEATHER_TOOL], tool_choice=choice))
    assert out["tool_choice"] == expected
    assert "parallel_tool_calls" not in out


def test_messages_request_tool_choice_without_tools_dropped() -> None:
    assert "tool_choice" not in messages_request(_request(tool_choice={"type": "any"}))


def test_messages_request_images_and_documents() -> None:
    content = [
        {
            "type": "image",
            "source": {"type": "base64", "media_type": "image/png", "data": "iVBORw0KGgo="},
        },
        {"type": "image", "source": {"type": "url", "url": "https://example.com/cat.jpg"}},
        {
            "type": "document",
            "source": {"type": "text", "media_type": "text/plain", "data": "notes"},
        },
        {"type": "text", "text": "Describe these."},
    ]
    out = messages_request(_request(messages=[{"role": "user", "content": content}]))
    assert out["messages"] == [
        {
            "role": "user",
            "content": [
                {"type": "image_url", "image_url": {"url": "data:image/png;base64,iVBORw0KGgo="}},
                {"type": "image_url", "image_url": {"url": "https://example.com/cat.jpg"}},
                {"type": "text", "text": "notes"},
                {"type": "text", "text": "Describe these."},
            ],
        }
    ]


def test_messages_request_tool_result_image_follows_in_user_message() -> None:
    image = {
        "type": "image",
        "source": {"type": "base64", "media_type": "image/jpeg", "data": "/9j/"},
    }
    result = {
        "type": "tool_result",
        "tool_use_id": "t",
        "content": [{"type": "text", "text": "a.jpg"}, image],
    }
    call = {"type": "tool_use", "id": "t", "name": "read", "input": {"path": "a.jpg"}}
    messages = [
        {"role": "user", "content": "Look at a.jpg"},
        {"role": "assistant", "content": [call]},
        {"role": "user", "content": [result]},
    ]
    out = messages_request(_request(messages=messages))["messages"]
    assert out[2] == {"role": "tool", "tool_call_id": "t", "content": "a.jpg"}
    assert out[3] == {
        "role": "user",
        "content": [{"type": "image_url", "image_url": {"url": "data:image/jpeg;base64,/9j/"}}],
    }


def test_messages_request_ignores_unknown_fields() -> None:
    out = messages_request(
        _request(service_tier="auto", thinking={"type": "enabled", "budget_tokens": 1024})
    )
    assert "service_tier" not in out and "thinking" not in out


def test_wants_thinking() -> None:
    assert wants_thinking({"thinking": {"type": "enabled", "budget_tokens": 2048}})
    assert wants_thinking({"thinking": {"type": "adaptive"}})
    assert not wants_thinking({"thinking": {"type": "disabled"}})
    assert not wants_thinking({})
    assert not wants_thinking([])  # type: ignore[arg-type]


BAD_REQUESTS: list[tuple[Any, str]] = [
    ([], "body"),
    ("hello", "body"),
    ({"max_tokens": 10, "messages": [{"role": "user", "content": "x"}]}, "model"),
    (_request(model=""), "model"),
    (_request(model=7), "model"),
    ({"model": "m", "messages": [{"role": "user", "content": "x"}]}, "max_tokens"),
    (_request(max_tokens=0), "max_tokens"),
    (_request(max_tokens=-5), "max_tokens"),
    (_request(max_tokens=1.5), "max_tokens"),
    (_request(max_tokens=True), "max_tokens"),
    (_request(max_tokens="100"), "max_tokens"),
    (_request(max_tokens=10**30), "max_tokens"),
    (_request(messages=[]), "messages"),
    (_request(messages="hi"), "messages"),
    (_request(messages=[None]), "messages.0"),
    (_request(messages=[{"role": "system", "content": "x"}]), "messages.0.role"),
    (_request(messages=[{"role": "user"}]), "messages.0.content"),
    (_request(messages=[{"role": "user", "content": []}]), "messages.0.content"),
    (
        _request(messages=[{"role": "user", "content": [{"text": "no type"}]}]),
        "messages.0.content.0",
    ),
    (
        _request(messages=[{"role": "user", "content": [{"type": "text"}]}]),
        "messages.0.content.0.text",
    ),
    (_request(messages=[{"role": "user", "content": [{"type": "text", "text": 5}]}]), "text"),
    (_request(messages=[{"role": "user", "content": [{"type": "audio"}]}]), "unsupported"),
    (
        _request(
            messages=[
                {
                    "role": "user",
                    "content": [{"type": "tool_use", "id": "a", "name": "b", "input": {}}],
                }
            ]
        ),
        "unsupported",
    ),
    (
        _request(messages=[{"role": "assistant", "content": [{"type": "image", "source": {}}]}]),
        "unsupported",
    ),
    (
        _request(
            messages=[{"role": "assistant", "content": [{"type": "thinking", "thinking": "x"}]}]
        ),
        "thinking",
    ),
    (_request(messages=[{"role": "user", "content": [{"type": "image"}]}]), "source"),
    (
        _request(
            messages=[{"role": "user", "content": [{"type": "image", "source": {"type": "file"}}]}]
        ),
        "source.type",
    ),
    (
        _request(
            messages=[
                {
                    "role": "user",
                    "content": [
                        {
                            "type": "image",
                            "source": {"type": "base64", "media_type": "image/tiff", "data": "AA"},
                        }
                    ],
                }
            ]
        ),
        "media_type",
    ),
    (
        _request(
            messages=[
                {
                    "role": "user",
                    "content": [
                        {
                            "type": "image",
                            "source": {"type": "base64", "media_type": "image/png", "data": ""},
                        }
                    ],
                }
            ]
        ),
        "data",
    ),
    (
        _request(
            messages=[
                {
                    "role": "user",
                    "content": [
                        {"type": "image", "source": {"type": "url", "url": "file:///etc/passwd"}}
                    ],
                }
            ]
        ),
        "url",
    ),
    (
        _request(
            messages=[
                {
                    "role": "user",
                    "content": [
                        {
                            "type": "document",
                            "source": {
                                "type": "base64",
                                "media_type": "application/pdf",
                                "data": "AA",
                            },
                        }
                    ],
                }
            ]
        ),
        "document",
    ),
    (_request(messages=[{"role": "user", "content": [{"type": "tool_result"}]}]), "tool_use_id"),
    (
        _request(
            messages=[
                {
                    "role": "user",
                    "content": [{"type": "tool_result", "tool_use_id": "t", "content": 5}],
                }
            ]
        ),
        "content",
    ),
    (
        _request(
            messages=[
                {
                    "role": "user",
                    "content": [
                        {"type": "tool_result", "tool_use_id": "t", "content": [{"type": "audio"}]}
                    ],
                }
            ]
        ),
        "content.0",
    ),
    (
        _request(
            messages=[
                {
                    "role": "user",
                    "content": [{"type": "tool_result", "tool_use_id": "t", "is_error": "yes"}],
                }
            ]
        ),
        "is_error",
    ),
    (
        _request(
            messages=[
                {"role": "assistant", "content": [{"type": "tool_use", "name": "f", "input": {}}]}
            ]
        ),
        ".id",
    ),
    (
        _request(
            messages=[
                {"role": "assistant", "content": [{"type": "tool_use", "id": "t", "input": {}}]}
            ]
        ),
        ".name",
    ),
    (
        _request(
            messages=[
                {
                    "role": "assistant",
                    "content": [{"type": "tool_use", "id": "t", "name": "f", "input": []}],
                }
            ]
        ),
        ".input",
    ),
    (
        _request(
            messages=[
                {
                    "role": "assistant",
                    "content": [
                        {"type": "tool_use", "id": "t", "name": "f", "input": {"x": float("nan")}}
                    ],
                }
            ]
        ),
        ".input",
    ),
    (_request(system=5), "system"),
    (_request(system=[{"type": "image"}]), "system.0"),
    (_request(system=[{"type": "text", "text": None}]), "system.0.text"),
    (_request(temperature=1.5), "temperature"),
    (_request(temperature="hot"), "temperature"),
    (_request(temperature=float("inf")), "temperature"),
    (_request(top_p=-0.1), "top_p"),
    (_request(top_k=-1), "top_k"),
    (_request(top_k=2.5), "top_k"),
    (_request(stop_sequences="STOP"), "stop_sequences"),
    (_request(stop_sequences=["a", 1]), "stop_sequences"),
    (_request(stream="yes"), "stream"),
    (_request(metadata="x"), "metadata"),
    (_request(tools={"name": "f"}), "tools"),
    (_request(tools=[None]), "tools.0"),
    (_request(tools=[{"input_schema": {}}]), "tools.0.name"),
    (_request(tools=[{"name": "f"}]), "tools.0.input_schema"),
    (_request(tools=[{"name": "f", "input_schema": {}, "description": 3}]), "tools.0.description"),
    (_request(tools=[{"type": "web_search_20250305", "name": "web_search"}]), "tools.0.type"),
    (_request(tool_choice="auto"), "tool_choice"),
    (_request(tool_choice={"type": "sometimes"}), "tool_choice.type"),
    (_request(tools=[WEATHER_TOOL], tool_choice={"type": "tool"}), "tool_choice.name"),
    (
        _request(
            tools=[WEATHER_TOOL], tool_choice={"type": "auto", "disable_parallel_tool_use": 1}
        ),
        "disable_parallel",
    ),
]


@pytest.mark.parametrize(("body", "field"), BAD_REQUESTS)
def test_messages_request_rejects_malformed(body: Any, field: str) -> None:
    with pytest.raises(ValueError, match=None) as caught:
        messages_request(body)
    message = str(caught.value)
    assert field in message
    assert "\n" not in message


def test_messages_request_error_message_stays_short() -> None:
    body = _request(messages=[{"role": "user", "content": [{"type": "x" * 10_000}]}])
    with pytest.raises(ValueError) as caught:
        messages_request(body)
    assert len(str(caught.value)) < 200


JSON = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=8),
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4)
    ),
    max_leaves=20,
)
FIELDS = st.sampled_from(
    [
        "model",
        "max_tokens",
        "messages",
        "system",
        "tools",
        "tool_choice",
        "stream",
        "temperature",
        "top_p",
        "top_k",
        "stop_sequences",
        "metadata",
        "role",
        "content",
        "type",
        "text",
        "source",
        "tool_use_id",
        "input",
        "id",
        "name",
        "is_error",
        "input_schema",
        "data",
        "media_type",
        "url",
    ]
)


RICH_REQUEST = _request(
    system=[{"type": "text", "text": "sys"}],
    tools=[WEATHER_TOOL],
    tool_choice={"type": "tool", "name": "get_weather"},
    stop_sequences=["x"],
    temperature=0.5,
    stream=True,
    messages=[
        {
            "role": "user",
            "content": [
                {"type": "text", "text": "hi"},
                {"type": "image", "source": {"type": "url", "url": "https://x/y.png"}},
            ],
        },
        {
            "role": "assistant",
            "content": [
                {"type": "tool_use", "id": "t", "name": "get_weather", "input": {"city": "Rome"}}
            ],
        },
        {
            "role": "user",
            "content": [
                {
                    "type": "tool_result",
                    "tool_use_id": "t",
                    "content": [{"type": "text", "text": "ok"}],
                }
            ],
        },
    ],
)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(junk=JSON, seed=st.integers(0, 2**32), key=FIELDS)
def test_hostile_requests_raise_only_value_error(junk: Any, seed: int, key: str) -> None:
    rng = random.Random(seed)
    body = mutate(RICH_REQUEST, rng, junk)
    if isinstance(body, dict) and rng.random() < 0.3:
        body = {**body, key: junk}
    for translate in (messages_request, count_tokens_request):
        try:
            out = translate(body)
        except ValueError:
            continue
        json.dumps(out, allow_nan=False)  # what goes to the backend is JSON


def test_deeply_nested_tool_input_is_a_value_error() -> None:
    deep: Any = {}
    for _ in range(5000):
        deep = {"a": deep}
    call = {"type": "tool_use", "id": "t", "name": "f", "input": deep}
    body = _request(
        messages=[{"role": "user", "content": "x"}, {"role": "assistant", "content": [call]}]
    )
    with pytest.raises(ValueError, match="input"):
        messages_request(body)


# -- count_tokens ----------------------------------------------------------------------


def test_count_tokens_request_needs_no_max_tokens() -> None:
    body = {
        "model": "qwen",
        "system": "sys",
        "messages": [{"role": "user", "content": "hello"}],
        "tools": [WEATHER_TOOL],
    }
    out = count_tokens_request(body)
    assert out["messages"] == [
        {"role": "system", "content": "sys"},
        {"role": "user", "content": "hello"},
    ]
    assert out["tools"][0]["function"]["name"] == "get_weather"
    assert "max_tokens" not in out
    with pytest.raises(ValueError, match="messages"):
        count_tokens_request({"model": "qwen"})


def test_estimate_tokens() -> None:
    body = {"messages": [{"role": "user", "content": "a" * 400}]}
    assert estimate_tokens(body) == 100 + MESSAGE_OVERHEAD_TOKENS
    image = {"type": "image_url", "image_url": {"url": "data:image/png;base64,AA"}}
    body = {"messages": [{"role": "user", "content": [{"type": "text", "text": "abcd"}, image]}]}
    assert estimate_tokens(body) == 1 + MESSAGE_OVERHEAD_TOKENS + IMAGE_TOKENS
    with_tools = count_tokens_request(
        {"model": "m", "messages": [{"role": "user", "content": "hi"}], "tools": [WEATHER_TOOL]}
    )
    without = count_tokens_request({"model": "m", "messages": [{"role": "user", "content": "hi"}]})
    assert estimate_tokens(with_tools) > estimate_tokens(without) > 0
    assert estimate_tokens({}) == 0
    assert estimate_tokens({"messages": [None, {"content": 5}, {"content": "\ud800"}]}) >= 0


# -- message_answer --------------------------------------------------------------------


def _completion(message: dict, finish: str = "stop", **extra: Any) -> dict:
    body = {
        "id": "chatcmpl-XyZ123",
        "object": "chat.completion",
        "created": 1700000000,
        "model": "qwen",
        "choices": [
            {"index": 0, "message": {"role": "assistant", **message}, "finish_reason": finish}
        ],
        "usage": {"prompt_tokens": 42, "completion_tokens": 7, "total_tokens": 49},
    }
    body.update(extra)
    return body


def test_message_answer_text() -> None:
    answer = message_answer(_completion({"content": "Hello there."}), "qwen")
    assert answer == {
        "id": "msg_chatcmplXyZ123",
        "type": "message",
        "role": "assistant",
        "model": "qwen",
        "content": [{"type": "text", "text": "Hello there."}],
        "stop_reason": "end_turn",
        "stop_sequence": None,
        "usage": {"input_tokens": 42, "output_tokens": 7},
    }
    assert Message.model_validate(answer).content[0].text == "Hello there."  # type: ignore[union-attr]


def test_message_answer_tool_calls() -> None:
    calls = [
        {
            "id": "call_1",
            "type": "function",
            "function": {"name": "get_weather", "arguments": '{"city":"Paris"}'},
        },
        {
            "id": "call_2",
            "type": "function",
            "function": {"name": "get_weather", "arguments": "{not json"},
        },
        {"type": "function", "function": {"name": "noop", "arguments": "[1, 2]"}},
    ]
    answer = message_answer(
        _completion({"content": None, "tool_calls": calls}, "tool_calls"), "qwen"
    )
    message = Message.model_validate(answer)
    assert message.stop_reason == "tool_use"
    assert [(b.type, getattr(b, "input", None)) for b in message.content] == [
        ("tool_use", {"city": "Paris"}),
        ("tool_use", {}),
        ("tool_use", {}),
    ]
    assert answer["content"][2]["id"] == "toolu_2"


@pytest.mark.parametrize(
    ("finish", "stop_reason"),
    [
        ("stop", "end_turn"),
        ("length", "max_tokens"),
        ("tool_calls", "tool_use"),
        ("content_filter", "refusal"),
        (None, "end_turn"),
        ("something_new", "end_turn"),
    ],
)
def test_message_answer_stop_reasons(finish: str | None, stop_reason: str) -> None:
    answer = message_answer(_completion({"content": "x"}, finish), "qwen")  # type: ignore[arg-type]
    assert answer["stop_reason"] == stop_reason
    Message.model_validate(answer)


def test_message_answer_vllm_stop_string_is_a_stop_sequence() -> None:
    openai_answer = _completion({"content": "x"})
    openai_answer["choices"][0]["stop_reason"] = "###"
    answer = message_answer(openai_answer, "qwen")
    assert (answer["stop_reason"], answer["stop_sequence"]) == ("stop_sequence", "###")


def test_message_answer_usage_sources() -> None:
    cached = {
        "prompt_tokens": 42,
        "completion_tokens": 7,
        "prompt_tokens_details": {"cached_tokens": 40},
    }
    answer = message_answer(_completion({"content": "x"}, usage=cached), "qwen")
    assert answer["usage"] == {"input_tokens": 2, "output_tokens": 7, "cache_read_input_tokens": 40}
    llama = _completion({"content": "x"}, timings=TIMINGS)
    del llama["usage"]
    assert message_answer(llama, "qwen")["usage"] == {
        "input_tokens": 12,
        "output_tokens": 9,
        "cache_read_input_tokens": 30,
    }
    # llama-server sends both: usage's prompt counts the cache, timings say how much
    both = _completion(
        {"content": "x"}, timings=TIMINGS, usage={"prompt_tokens": 42, "completion_tokens": 9}
    )
    assert message_answer(both, "qwen")["usage"]["input_tokens"] == 12
    bare = _completion({"content": "x"})
    del bare["usage"]
    assert message_answer(bare, "qwen")["usage"] == {"input_tokens": 0, "output_tokens": 0}


def test_message_answer_reasoning_only_when_asked() -> None:
    openai_answer = _completion({"content": "42", "reasoning_content": "6*7"})
    assert [b["type"] for b in message_answer(openai_answer, "qwen")["content"]] == ["text"]
    answer = message_answer(openai_answer, "qwen", thinking=True, message_id="msg_given")
    assert [b.type for b in Message.model_validate(answer).content] == ["thinking", "text"]
    assert answer["id"] == "msg_given"


@pytest.mark.parametrize(
    "junk",
    [
        {},
        [],
        None,
        "x",
        {"choices": None},
        {"choices": [None]},
        {"choices": [{"message": "x"}]},
        {
            "choices": [{"message": {"content": 5, "tool_calls": [None, {"function": "f"}]}}],
            "usage": {"prompt_tokens": -1},
        },
        {
            "id": "\u2603\u2603",
            "choices": [{"message": {"content": [{"type": "text", "text": "parts"}]}}],
        },
    ],
)
def test_message_answer_odd_backend_answers(junk: Any) -> None:
    Message.model_validate(message_answer(junk, "qwen"))


def test_message_answer_ids_without_backend_id() -> None:
    first = message_answer({"choices": [{"message": {"content": "a"}}]}, "qwen")["id"]
    second = message_answer({"choices": [{"message": {"content": "b"}}]}, "qwen")["id"]
    assert first.startswith("msg_") and second.startswith("msg_") and first != second


# -- StreamTranslator ------------------------------------------------------------------


def test_stream_llama_server_answer_read_by_sdk() -> None:
    sse = _translate(LLAMA_STREAM)
    events = _events(sse)
    names = [name for name, _ in events]
    assert names == [
        "message_start",
        "ping",
        "content_block_start",
        "content_block_delta",
        "content_block_delta",
        "content_block_delta",
        "content_block_stop",
        "content_block_start",
        "content_block_delta",
        "content_block_delta",
        "content_block_stop",
        "content_block_start",
        "content_block_delta",
        "content_block_stop",
        "message_delta",
        "message_stop",
    ]
    assert events[0][1]["message"]["id"] == "msg_test"
    assert events[-2][1] == {
        "type": "message_delta",
        "delta": {"stop_reason": "tool_use", "stop_sequence": None},
        "usage": {"input_tokens": 12, "output_tokens": 9, "cache_read_input_tokens": 30},
    }
    message, text = _sdk_final_message(sse)
    assert text == "Let me check é☃."
    assert message.stop_reason == "tool_use"
    assert [b.type for b in message.content] == ["text", "tool_use", "tool_use"]
    assert message.content[0].text == text  # type: ignore[union-attr]
    assert [(b.id, b.name, b.input) for b in message.content[1:]] == [  # type: ignore[union-attr]
        ("call_1", "get_weather", {"city": "Paris"}),
        ("call_2", "get_weather", {"city": "Oslo"}),
    ]
    assert (message.usage.input_tokens, message.usage.output_tokens) == (12, 9)
    assert message.usage.cache_read_input_tokens == 30


def test_stream_same_output_however_the_bytes_are_cut() -> None:
    whole = b"".join(LLAMA_STREAM)
    expected = _translate([whole])
    assert expected == _translate(LLAMA_STREAM)
    rng = random.Random(7)
    for _ in range(20):
        cuts = sorted(rng.sample(range(1, len(whole)), 12))
        pieces = [whole[a:b] for a, b in zip([0, *cuts], [*cuts, len(whole)], strict=True)]
        assert _translate(pieces) == expected
    assert _translate([whole[i : i + 1] for i in range(len(whole))]) == expected


def test_stream_crlf_and_multiline_events() -> None:
    sse = _translate(
        [_chunk({"content": "a"}).replace(b"\n", b"\r\n"), b"event: x\r\ndata: [DONE]\r\n\r\n"]
    )
    assert _sdk_final_message(sse)[1] == "a"


def test_stream_include_usage_chunk_wins() -> None:
    pieces = [
        _chunk({"role": "assistant", "content": ""}),
        _chunk({"content": "Hi"}),
        _chunk({}, "stop"),
        b'data: {"id":"c","choices":[],'
        b'"usage":{"prompt_tokens":20,"completion_tokens":3,"total_tokens":23}}\n\n',
        b"data: [DONE]\n\n",
    ]
    message, text = _sdk_final_message(_translate(pieces))
    assert text == "Hi"
    assert message.stop_reason == "end_turn"
    assert (message.usage.input_tokens, message.usage.output_tokens) == (20, 3)


def test_stream_without_counts_counts_deltas() -> None:
    pieces = [_chunk({"content": "a"}), _chunk({"content": "b"}), _chunk({}, "length")]
    message, _ = _sdk_final_message(_translate(pieces, input_tokens=17))
    assert message.stop_reason == "max_tokens"
    assert (message.usage.input_tokens, message.usage.output_tokens) == (17, 2)


def test_stream_nothing_at_all_is_still_a_message() -> None:
    sse = _translate([])
    assert [name for name, _ in _events(sse)] == ["message_start", "message_delta", "message_stop"]
    message, text = _sdk_final_message(sse)
    assert (text, message.content, message.stop_reason) == ("", [], "end_turn")
    only_done = _translate([b"data: [DONE]\n\n"])
    assert [name for name, _ in _events(only_done)] == [
        "message_start",
        "message_delta",
        "message_stop",
    ]


def test_stream_text_after_tool_call_opens_new_block() -> None:
    pieces = [
        _chunk(_tool_delta(0, ident="c", name="f", arguments="{}")),
        _chunk({"content": "done"}),
        _chunk({}, "stop"),
    ]
    message, text = _sdk_final_message(_translate(pieces))
    assert [b.type for b in message.content] == ["tool_use", "text"]
    assert text == "done"
    assert message.stop_reason == "tool_use"  # a tool was called, though the backend said stop


def test_stream_tool_calls_without_index_or_id() -> None:
    both = {
        "tool_calls": [
            {"id": "a", "function": {"name": "f", "arguments": '{"x":1}'}},
            {"id": "b", "function": {"name": "g", "arguments": '{"y":2}'}},
        ]
    }
    pieces = [
        _chunk(both),
        _chunk({"tool_calls": [{"function": {"arguments": "{}"}}]}),
        _chunk({}, "tool_calls"),
    ]
    message, _ = _sdk_final_message(_translate(pieces))
    assert [(b.id, b.input) for b in message.content] == [("a", {"x": 1}), ("b", {"y": 2})]  # type: ignore[union-attr]
    lone = _translate([_chunk({"tool_calls": [{"function": {"name": "h", "arguments": "{}"}}]})])
    block = next(d["content_block"] for n, d in _events(lone) if n == "content_block_start")
    assert block["id"] == "toolu_test_1"


def test_stream_reasoning_as_thinking_when_asked() -> None:
    pieces = [
        _chunk({"reasoning_content": "Hmm. "}),
        _chunk({"reasoning_content": "Yes."}),
        _chunk({"content": "42"}),
        _chunk({}, "stop"),
    ]
    message, text = _sdk_final_message(_translate(pieces, thinking=True))
    assert [b.type for b in message.content] == ["thinking", "text"]
    assert message.content[0].thinking == "Hmm. Yes."  # type: ignore[union-attr]
    assert text == "42"
    message, _ = _sdk_final_message(_translate(pieces))
    assert [b.type for b in message.content] == ["text"]


def test_stream_vllm_stop_string() -> None:
    finish = (
        b'data: {"choices":[{"index":0,"delta":{},"finish_reason":"stop","stop_reason":"END"}]}\n\n'
    )
    message, _ = _sdk_final_message(_translate([_chunk({"content": "a"}), finish]))
    assert (message.stop_reason, message.stop_sequence) == ("stop_sequence", "END")


def test_stream_backend_error_becomes_error_event() -> None:
    error = {
        "error": {
            "code": 400,
            "message": "the request exceeds the available context size",
            "type": "exceed_context_size_error",
        }
    }
    translator = StreamTranslator("qwen", "msg_e")
    sse = translator.feed(
        _chunk({"content": "partial"})
        + b"data: "
        + json.dumps(error).encode()
        + b"\n\n"
        + _chunk({"content": "late"})
    )
    assert translator.feed(_chunk({"content": "later"})) == b""
    assert translator.end() == b""
    events = _events(sse)
    assert events[-1] == (
        "error",
        {
            "type": "error",
            "error": {"type": "invalid_request_error", "message": error["error"]["message"]},
        },
    )
    ErrorResponse.model_validate(events[-1][1])
    with pytest.raises(anthropic.APIStatusError, match="context size"):
        _sdk_final_message(sse)


@pytest.mark.parametrize(
    "error", ['"boom"', '{"message": 5}', '{"code": 503, "message": "busy"}', "[1]"]
)
def test_stream_odd_errors_are_api_errors(error: str) -> None:
    sse = _translate([b'data: {"error": ' + error.encode() + b"}\n\n"])
    name, data = _events(sse)[-1]
    assert name == "error"
    assert data["error"]["type"] == "api_error"
    ErrorResponse.model_validate(data)


def test_stream_ignores_junk_events() -> None:
    junk = [
        b"data: {not json\n\n",
        b"data: [1, 2]\n\n",
        b'data: {"choices": "x"}\n\n',
        b'data: {"choices": [null]}\n\n',
        b'data: {"choices": [{"delta": {"content": 5, '
        b'"tool_calls": [null, {"index": 0, "function": "x"}]}}]}\n\n',
        b"retry: 100\n\n",
        b"\n\n\n\n",
        b"data: " + b"[" * 100_000 + b"\n\n",
    ]
    sse = _translate([*junk, _chunk({"content": "ok"})])
    assert _sdk_final_message(sse)[1] == "ok"


def test_stream_oversized_event_is_an_error() -> None:
    translator = StreamTranslator("qwen", "msg_big")
    sse = translator.feed(b"data: " + b"x" * (MAX_PENDING_BYTES + 1))
    assert _events(sse)[-1][0] == "error"
    assert translator.end() == b""


def test_stream_unfinished_last_event_is_read_at_end() -> None:
    sse = _translate([_chunk({"content": "a"}), _chunk({"content": "b"})[:-2]])
    assert _sdk_final_message(sse)[1] == "ab"


# -- error_body ------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("status", "kind"),
    [
        (400, "invalid_request_error"),
        (401, "authentication_error"),
        (403, "permission_error"),
        (404, "not_found_error"),
        (413, "request_too_large"),
        (422, "invalid_request_error"),
        (429, "rate_limit_error"),
        (500, "api_error"),
        (502, "api_error"),
        (503, "api_error"),
        (504, "timeout_error"),
        (529, "overloaded_error"),
    ],
)
def test_error_body(status: int, kind: str) -> None:
    body = error_body(status, "no model named x")
    assert body == {"type": "error", "error": {"type": kind, "message": "no model named x"}}
    if kind != "request_too_large":  # the SDK's ErrorObject union lacks this documented type
        ErrorResponse.model_validate(body)


def test_error_body_raised_by_sdk() -> None:
    def answer(request: httpx2.Request) -> httpx2.Response:
        return httpx2.Response(529, json=error_body(529, "busy"))

    http = httpx2.Client(transport=httpx2.MockTransport(answer))
    client = anthropic.Anthropic(
        api_key="t", base_url="http://mesh.test", http_client=http, max_retries=0
    )
    with pytest.raises(anthropic.APIStatusError) as caught:
        client.messages.create(model="m", max_tokens=1, messages=[{"role": "user", "content": "x"}])
    assert caught.value.status_code == 529
    assert caught.value.body["error"]["type"] == "overloaded_error"  # type: ignore[index]


# -- openai_to_messages / messages_to_openai -------------------------------------------


OPENAI_CHAT = {
    "model": "anthropic:claude-haiku-4-5",
    "messages": [
        {"role": "system", "content": "Be brief."},
        {"role": "developer", "content": [{"type": "text", "text": "Use metric units."}]},
        {
            "role": "user",
            "content": [
                {"type": "text", "text": "Weather here?"},
                {"type": "image_url", "image_url": {"url": "data:image/png;base64,iVBORw0KGgo="}},
                {"type": "image_url", "image_url": {"url": "https://example.com/sky.jpg"}},
            ],
        },
        {
            "role": "assistant",
            "content": "Checking.",
            "tool_calls": [
                {
                    "id": "toolu_1",
                    "type": "function",
                    "function": {"name": "get_weather", "arguments": '{"city":"Paris"}'},
                },
                {
                    "id": "toolu_2",
                    "type": "function",
                    "function": {"name": "get_weather", "arguments": '{"city":"Oslo"}'},
                },
            ],
        },
        {"role": "tool", "tool_call_id": "toolu_1", "content": "18°C"},
        {"role": "tool", "tool_call_id": "toolu_2", "content": [{"type": "text", "text": "3°C"}]},
        {"role": "user", "content": "Thanks, summarise."},
    ],
    "tools": [
        {
            "type": "function",
            "function": {
                "name": "get_weather",
                "description": "Current weather in a city",
                "parameters": WEATHER_TOOL["input_schema"],
            },
        }
    ],
    "tool_choice": "required",
    "parallel_tool_calls": False,
    "max_completion_tokens": 300,
    "temperature": 1.6,
    "top_p": 0.5,
    "stop": "\n\n",
    "stream": True,
    "user": "u-9",
    "seed": 3,
}


def test_openai_to_messages() -> None:
    out = openai_to_messages(OPENAI_CHAT, "claude-haiku-4-5")
    assert out == {
        "model": "claude-haiku-4-5",
        "max_tokens": 300,
        "system": "Be brief.\n\nUse metric units.",
        "messages": [
            {
                "role": "user",
                "content": [
                    {"type": "text", "text": "Weather here?"},
                    {
                        "type": "image",
                        "source": {
                            "type": "base64",
                            "media_type": "image/png",
                            "data": "iVBORw0KGgo=",
                        },
                    },
                    {
                        "type": "image",
                        "source": {"type": "url", "url": "https://example.com/sky.jpg"},
                    },
                ],
            },
            {
                "role": "assistant",
                "content": [
                    {"type": "text", "text": "Checking."},
                    {
                        "type": "tool_use",
                        "id": "toolu_1",
                        "name": "get_weather",
                        "input": {"city": "Paris"},
                    },
                    {
                        "type": "tool_use",
                        "id": "toolu_2",
                        "name": "get_weather",
                        "input": {"city": "Oslo"},
                    },
                ],
            },
            {
                "role": "user",
                "content": [
                    {"type": "tool_result", "tool_use_id": "toolu_1", "content": "18°C"},
                    {"type": "tool_result", "tool_use_id": "toolu_2", "content": "3°C"},
                    {"type": "text", "text": "Thanks, summarise."},
                ],
            },
        ],
        "temperature": 1.0,
        "top_p": 0.5,
        "stop_sequences": ["\n\n"],
        "stream": True,
        "metadata": {"user_id": "u-9"},
        "tools": [WEATHER_TOOL],
        "tool_choice": {"type": "any", "disable_parallel_tool_use": True},
    }


def test_openai_to_messages_defaults() -> None:
    out = openai_to_messages({"messages": [{"role": "user", "content": "hi"}]}, "claude-x")
    assert out == {
        "model": "claude-x",
        "max_tokens": DEFAULT_MAX_TOKENS,
        "messages": [{"role": "user", "content": [{"type": "text", "text": "hi"}]}],
    }
    tools = {
        "messages": [{"role": "user", "content": "hi"}],
        "tools": [{"type": "function", "function": {"name": "f"}}],
    }
    out = openai_to_messages(tools, "claude-x")
    assert out["tools"] == [{"name": "f", "input_schema": {"type": "object", "properties": {}}}]
    assert "tool_choice" not in out
    named = {**tools, "tool_choice": {"type": "function", "function": {"name": "f"}}}
    assert openai_to_messages(named, "c")["tool_choice"] == {"type": "tool", "name": "f"}
    assert openai_to_messages({**tools, "tool_choice": "none"}, "c")["tool_choice"] == {
        "type": "none"
    }


@pytest.mark.parametrize(
    ("body", "field"),
    [
        (None, "body"),
        ({}, "messages"),
        ({"messages": [{"role": "system", "content": "only"}]}, "messages"),
        ({"messages": [{"role": "function", "content": "x"}]}, "role"),
        ({"messages": [{"role": "user", "content": 5}]}, "content"),
        ({"messages": [{"role": "user", "content": [{"type": "input_audio"}]}]}, "content.0"),
        (
            {
                "messages": [
                    {
                        "role": "user",
                        "content": [
                            {"type": "image_url", "image_url": {"url": "data:image/png,raw"}}
                        ],
                    }
                ]
            },
            "url",
        ),
        (
            {
                "messages": [
                    {
                        "role": "user",
                        "content": [
                            {"type": "image_url", "image_url": {"url": "data:image/bmp;base64,AA"}}
                        ],
                    }
                ]
            },
            "url",
        ),
        ({"messages": [{"role": "user", "content": [{"type": "image_url"}]}]}, "url"),
        ({"messages": [{"role": "system", "content": [{"type": "image_url"}]}]}, "content.0"),
        ({"messages": [{"role": "assistant", "tool_calls": {"id": "x"}}]}, "tool_calls"),
        ({"messages": [{"role": "assistant", "tool_calls": [{"id": "x"}]}]}, "tool_calls.0"),
        ({"messages": [{"role": "tool", "content": "x"}]}, "tool_call_id"),
        ({"messages": [{"role": "user", "content": "x"}], "max_tokens": 0}, "max_tokens"),
        ({"messages": [{"role": "user", "content": "x"}], "n": 2}, "n"),
        ({"messages": [{"role": "user", "content": "x"}], "temperature": -1}, "temperature"),
        ({"messages": [{"role": "user", "content": "x"}], "top_p": 2}, "top_p"),
        ({"messages": [{"role": "user", "content": "x"}], "stop": [1]}, "stop"),
        ({"messages": [{"role": "user", "content": "x"}], "stream": 1}, "stream"),
        ({"messages": [{"role": "user", "content": "x"}], "tools": "f"}, "tools"),
        (
            {
                "messages": [{"role": "user", "content": "x"}],
                "tools": [{"type": "code_interpreter"}],
            },
            "tools.0",
        ),
        (
            {
                "messages": [{"role": "user", "content": "x"}],
                "tools": [{"type": "function", "function": {"name": ""}}],
            },
            "name",
        ),
        (
            {
                "messages": [{"role": "user", "content": "x"}],
                "tools": [{"type": "function", "function": {"name": "f", "parameters": []}}],
            },
            "parameters",
        ),
        (
            {
                "messages": [{"role": "user", "content": "x"}],
                "tools": [{"type": "function", "function": {"name": "f"}}],
                "tool_choice": "maybe",
            },
            "tool_choice",
        ),
        (
            {
                "messages": [{"role": "user", "content": "x"}],
                "tools": [{"type": "function", "function": {"name": "f"}}],
                "tool_choice": {"type": "function", "function": {}},
            },
            "tool_choice",
        ),
    ],
)
def test_openai_to_messages_rejects_malformed(body: Any, field: str) -> None:
    with pytest.raises(ValueError) as caught:
        openai_to_messages(body, "claude-x")
    assert field in str(caught.value)


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(junk=JSON, seed=st.integers(0, 2**32))
def test_hostile_openai_requests_raise_only_value_error(junk: Any, seed: int) -> None:
    body = mutate(OPENAI_CHAT, random.Random(seed), junk)
    try:
        out = openai_to_messages(body, "claude-x")
    except ValueError:
        return
    json.dumps(out, allow_nan=False)


def test_openai_round_trip_keeps_the_conversation() -> None:
    """OpenAI -> Anthropic (to the cloud) -> OpenAI (as a mesh node would send it on)."""
    body = {key: value for key, value in OPENAI_CHAT.items() if key not in ("user", "seed")}
    anthropic_body = openai_to_messages(body, "claude-haiku-4-5")
    back = messages_request(anthropic_body)
    assert back["messages"][0] == {"role": "system", "content": "Be brief.\n\nUse metric units."}
    assert back["messages"][1]["content"] == [
        {"type": "text", "text": "Weather here?"},
        {"type": "image_url", "image_url": {"url": "data:image/png;base64,iVBORw0KGgo="}},
        {"type": "image_url", "image_url": {"url": "https://example.com/sky.jpg"}},
    ]
    assistant = back["messages"][2]
    assert assistant["content"] == "Checking."
    original_calls = body["messages"][3]["tool_calls"]
    assert [
        (c["id"], c["function"]["name"], json.loads(c["function"]["arguments"]))
        for c in assistant["tool_calls"]
    ] == [
        (c["id"], c["function"]["name"], json.loads(c["function"]["arguments"]))
        for c in original_calls
    ]
    assert back["messages"][3:] == [
        {"role": "tool", "tool_call_id": "toolu_1", "content": "18°C"},
        {"role": "tool", "tool_call_id": "toolu_2", "content": "3°C"},
        {"role": "user", "content": "Thanks, summarise."},
    ]
    assert back["tools"] == body["tools"]
    assert back["tool_choice"] == "required" and back["parallel_tool_calls"] is False
    assert (back["max_tokens"], back["stop"], back["top_p"]) == (300, ["\n\n"], 0.5)


CLOUD_MESSAGE = {
    "id": "msg_01AbC",
    "type": "message",
    "role": "assistant",
    "model": "claude-haiku-4-5",
    "content": [
        {"type": "thinking", "thinking": "Call the tool.", "signature": "EqQB"},
        {"type": "text", "text": "Let me check."},
        {"type": "tool_use", "id": "toolu_9", "name": "get_weather", "input": {"city": "Paris"}},
    ],
    "stop_reason": "tool_use",
    "stop_sequence": None,
    "usage": {
        "input_tokens": 10,
        "cache_read_input_tokens": 100,
        "cache_creation_input_tokens": 5,
        "output_tokens": 20,
    },
}


def test_messages_to_openai() -> None:
    Message.model_validate(CLOUD_MESSAGE)
    out = messages_to_openai(CLOUD_MESSAGE, "anthropic:claude-haiku-4-5", 1700000000)
    completion = ChatCompletion.model_validate(out)
    assert completion.id == "chatcmpl-01AbC"
    choice = completion.choices[0]
    assert choice.finish_reason == "tool_calls"
    assert choice.message.content == "Let me check."
    assert out["choices"][0]["message"]["reasoning_content"] == "Call the tool."
    call = choice.message.tool_calls[0]  # type: ignore[index]
    assert (call.id, call.function.name, json.loads(call.function.arguments)) == (
        "toolu_9",
        "get_weather",
        {"city": "Paris"},
    )  # type: ignore[union-attr]
    assert out["usage"] == {
        "prompt_tokens": 115,
        "completion_tokens": 20,
        "total_tokens": 135,
        "prompt_tokens_details": {"cached_tokens": 100},
    }


@pytest.mark.parametrize(
    ("stop_reason", "finish"),
    [
        ("end_turn", "stop"),
        ("stop_sequence", "stop"),
        ("max_tokens", "length"),
        ("tool_use", "tool_calls"),
        ("refusal", "content_filter"),
        ("pause_turn", "stop"),
        ("model_context_window_exceeded", "length"),
        (None, "stop"),
    ],
)
def test_messages_to_openai_finish_reasons(stop_reason: str | None, finish: str) -> None:
    message = {
        **CLOUD_MESSAGE,
        "content": [{"type": "text", "text": "x"}],
        "stop_reason": stop_reason,
    }
    assert (
        ChatCompletion.model_validate(messages_to_openai(message, "m", 1)).choices[0].finish_reason
        == finish
    )


@pytest.mark.parametrize(
    "junk",
    [
        None,
        {},
        {"content": "x"},
        {"content": [None, {"type": "tool_use"}]},
        {"usage": {"input_tokens": "x"}},
    ],
)
def test_messages_to_openai_odd_answers(junk: Any) -> None:
    ChatCompletion.model_validate(messages_to_openai(junk, "m", 1))


def test_answer_round_trip_keeps_content() -> None:
    """OpenAI completion -> Anthropic Message -> OpenAI completion."""
    calls = [
        {
            "id": "call_1",
            "type": "function",
            "function": {"name": "get_weather", "arguments": '{"city": "Rome"}'},
        }
    ]
    original = _completion({"content": "On it.", "tool_calls": calls}, "tool_calls")
    back = messages_to_openai(message_answer(original, "qwen"), "qwen", 1700000000)
    message = back["choices"][0]["message"]
    assert message["content"] == "On it."
    assert json.loads(message["tool_calls"][0]["function"]["arguments"]) == {"city": "Rome"}
    assert back["choices"][0]["finish_reason"] == "tool_calls"
    assert (back["usage"]["prompt_tokens"], back["usage"]["completion_tokens"]) == (42, 7)


# -- AnthropicToOpenAIStream -----------------------------------------------------------


def _anthropic_sse(name: str, data: dict) -> bytes:
    return f"event: {name}\ndata: {json.dumps(data)}\n\n".encode()


CLOUD_STREAM = [
    _anthropic_sse(
        "message_start",
        {
            "type": "message_start",
            "message": {
                **CLOUD_MESSAGE,
                "content": [],
                "stop_reason": None,
                "usage": {"input_tokens": 10, "cache_read_input_tokens": 100, "output_tokens": 1},
            },
        },
    ),
    _anthropic_sse(
        "content_block_start",
        {
            "type": "content_block_start",
            "index": 0,
            "content_block": {"type": "thinking", "thinking": "", "signature": ""},
        },
    ),
    _anthropic_sse(
        "content_block_delta",
        {
            "type": "content_block_delta",
            "index": 0,
            "delta": {"type": "thinking_delta", "thinking": "Tool."},
        },
    ),
    _anthropic_sse(
        "content_block_delta",
        {
            "type": "content_block_delta",
            "index": 0,
            "delta": {"type": "signature_delta", "signature": "EqQB"},
        },
    ),
    _anthropic_sse("content_block_stop", {"type": "content_block_stop", "index": 0}),
    _anthropic_sse("ping", {"type": "ping"}),
    _anthropic_sse(
        "content_block_start",
        {"type": "content_block_start", "index": 1, "content_block": {"type": "text", "text": ""}},
    ),
    _anthropic_sse(
        "content_block_delta",
        {
            "type": "content_block_delta",
            "index": 1,
            "delta": {"type": "text_delta", "text": "Let me "},
        },
    )
    + _anthropic_sse(
        "content_block_delta",
        {
            "type": "content_block_delta",
            "index": 1,
            "delta": {"type": "text_delta", "text": "check."},
        },
    ),
    _anthropic_sse("content_block_stop", {"type": "content_block_stop", "index": 1}),
    _anthropic_sse(
        "content_block_start",
        {
            "type": "content_block_start",
            "index": 2,
            "content_block": {
                "type": "tool_use",
                "id": "toolu_9",
                "name": "get_weather",
                "input": {},
            },
        },
    ),
    _anthropic_sse(
        "content_block_delta",
        {
            "type": "content_block_delta",
            "index": 2,
            "delta": {"type": "input_json_delta", "partial_json": ""},
        },
    ),
    _anthropic_sse(
        "content_block_delta",
        {
            "type": "content_block_delta",
            "index": 2,
            "delta": {"type": "input_json_delta", "partial_json": '{"city": "Par'},
        },
    ),
    _anthropic_sse(
        "content_block_delta",
        {
            "type": "content_block_delta",
            "index": 2,
            "delta": {"type": "input_json_delta", "partial_json": 'is"}'},
        },
    ),
    _anthropic_sse("content_block_stop", {"type": "content_block_stop", "index": 2}),
    _anthropic_sse(
        "message_delta",
        {
            "type": "message_delta",
            "delta": {"stop_reason": "tool_use", "stop_sequence": None},
            "usage": {"output_tokens": 25},
        },
    ),
    _anthropic_sse("message_stop", {"type": "message_stop"}),
]


def _reverse(pieces: list[bytes]) -> bytes:
    stream = AnthropicToOpenAIStream("anthropic:claude-haiku-4-5", "chatcmpl-1", 1700000000)
    return b"".join(stream.feed(piece) for piece in pieces) + stream.end()


def test_reverse_stream_read_by_openai_sdk() -> None:
    for event in CLOUD_STREAM:
        name, data = (
            event.decode().split("\n")[0][7:],
            json.loads(event.decode().split("\n")[1][6:]),
        )
        if name != "ping":
            EVENTS.validate_python(data)  # the fixture is what Anthropic sends
    sse = _reverse(CLOUD_STREAM)
    assert sse.endswith(b"data: [DONE]\n\n")
    assert b": ping\n\n" in sse
    chunks = openai_chunks(sse, comments=True)
    assert chunks[0].choices[0].delta.role == "assistant"
    text = "".join(c.choices[0].delta.content or "" for c in chunks)
    arguments = "".join(
        call.function.arguments or ""
        for c in chunks
        for call in c.choices[0].delta.tool_calls or ()
        if call.function
    )
    assert text == "Let me check."
    assert json.loads(arguments) == {"city": "Paris"}
    assert (
        "".join(c.choices[0].delta.model_extra.get("reasoning_content", "") for c in chunks)
        == "Tool."
    )  # type: ignore[union-attr]
    last = chunks[-1]
    assert last.choices[0].finish_reason == "tool_calls"
    assert last.usage is not None
    assert (last.usage.prompt_tokens, last.usage.completion_tokens) == (110, 25)

    client = sdk_client(sse, "text/event-stream", openai.OpenAI)
    stream = client.chat.completions.create(
        model="m", messages=[{"role": "user", "content": "x"}], stream=True
    )
    assert "".join(c.choices[0].delta.content or "" for c in stream if c.choices) == "Let me check."


def test_reverse_stream_however_the_bytes_are_cut() -> None:
    whole = b"".join(CLOUD_STREAM)
    expected = _reverse([whole])
    rng = random.Random(11)
    for _ in range(10):
        cuts = sorted(rng.sample(range(1, len(whole)), 15))
        assert (
            _reverse([whole[a:b] for a, b in zip([0, *cuts], [*cuts, len(whole)], strict=True)])
            == expected
        )


def test_reverse_stream_error_and_cut_off() -> None:
    overloaded = _anthropic_sse(
        "error", {"type": "error", "error": {"type": "overloaded_error", "message": "Overloaded"}}
    )
    sse = _reverse([CLOUD_STREAM[0], overloaded, CLOUD_STREAM[-1]])
    assert sse.count(b"data: ") == 2
    assert json.loads(sse.split(b"\n\n")[1][6:]) == {
        "error": {"message": "Overloaded", "type": "overloaded_error", "code": None}
    }
    client = sdk_client(sse, "text/event-stream", openai.OpenAI)
    with pytest.raises(openai.APIError, match="Overloaded"):
        list(
            client.chat.completions.create(
                model="m", messages=[{"role": "user", "content": "x"}], stream=True
            )
        )
    cut = _reverse(CLOUD_STREAM[:5])
    assert b"ended before message_stop" in cut
    assert b"[DONE]" not in cut


def test_reverse_stream_ignores_junk() -> None:
    junk = [
        b"data: {bad\n\n",
        b"event: x\n\n",
        b'data: {"type": "content_block_delta", "delta": null}\n\n',
        b'data: {"type": "content_block_start", "content_block": "x"}\n\n',
        b'data: {"type": "future_event"}\n\n',
        b"data: 7\n\n",
    ]
    sse = _reverse([*junk, *CLOUD_STREAM])
    assert (
        "".join(c.choices[0].delta.content or "" for c in openai_chunks(sse, comments=True))
        == "Let me check."
    )


def test_stream_round_trip_keeps_content() -> None:
    """llama-server stream -> Anthropic SSE -> OpenAI SSE: same text and tool calls."""
    chunks = openai_chunks(_reverse([_translate(LLAMA_STREAM)]), comments=True)
    assert "".join(c.choices[0].delta.content or "" for c in chunks) == "Let me check é☃."
    calls: dict[int, str] = {}
    for c in chunks:
        for call in c.choices[0].delta.tool_calls or ():
            calls[call.index] = calls.get(call.index, "") + (
                call.function.arguments or "" if call.function else ""
            )
    assert {i: json.loads(a) for i, a in calls.items()} == {
        0: {"city": "Paris"},
        1: {"city": "Oslo"},
    }
    assert chunks[-1].choices[0].finish_reason == "tool_calls"
    assert (chunks[-1].usage.prompt_tokens, chunks[-1].usage.completion_tokens) == (42, 9)  # type: ignore[union-attr]


@settings(max_examples=200, deadline=None)
@given(st.text(), st.booleans())
def test_a_text_delta_read_without_a_parse_says_what_a_parse_says(
    text: str, ascii_only: bool
) -> None:
    quoted = json.dumps(text, ensure_ascii=ascii_only)
    fast = '{"type":"content_block_delta","index":0,"delta":{"type":"text_delta","text":%s}}'
    slow = '{"index":0,"type":"content_block_delta","delta":{"text":%s,"type":"text_delta"}}'
    outputs = []
    for shape in (fast, slow):
        stream = AnthropicToOpenAIStream("m", "chatcmpl-1", 1)
        event = b"event: content_block_delta\ndata: " + (shape % quoted).encode() + b"\n\n"
        outputs.append(json.loads(stream.feed(event).removeprefix(b"data: ")))
    assert outputs[0] == outputs[1]
    assert outputs[0]["choices"][0]["delta"] == {"content": text}
