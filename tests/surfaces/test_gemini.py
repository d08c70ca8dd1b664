"""Tests of meshllm/surfaces/gemini.py: each translation on realistic inputs, hostile
requests and answers, the request read back by the google-genai SDK's types (which
forbid unknown fields), Gemini fixtures checked by them, and the output read back by
the openai SDK."""

from __future__ import annotations

import itertools
import json
import random
from typing import Any

import openai
import pytest
from google.genai import types
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from openai.types.chat import ChatCompletion, ChatCompletionChunk

from meshllm.surfaces.gemini import (
    _PLAIN,
    FINISH_REASONS,
    MAX_ERROR_CHARS,
    MAX_PENDING_BYTES,
    SKIP_SIGNATURE,
    GeminiToOpenAIStream,
    error_to_openai,
    gemini_to_openai,
    openai_to_gemini,
)
from tests.surfaces.doubles import mutate, openai_chunks, sdk_client

JSON = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=8),
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4)
    ),
    max_leaves=20,
)
WEATHER_SCHEMA = {
    "type": "object",
    "properties": {"city": {"type": "string"}},
    "required": ["city"],
    "additionalProperties": False,
}
SIGNATURE = "c2lnbmF0dXJlLW9uZQ=="  # base64, as Gemini sends thoughtSignature


# -- openai_to_gemini ------------------------------------------------------------------


OPENAI_CHAT = {
    "model": "gemini:gemini-2.5-flash",
    "messages": [
        {"role": "system", "content": "Be brief."},
        {"role": "developer", "content": [{"type": "text", "text": "Use metric units."}]},
        {
            "role": "user",
            "content": [
                {"type": "text", "text": "Weather here?"},
                {"type": "image_url", "image_url": {"url": "data:image/png;base64,iVBORw0KGgo="}},
                {"type": "image_url", "image_url": {"url": "https://example.com/sky.JPG?v=2"}},
            ],
        },
        {"role": "user", "content": "And in Oslo?"},
        {
            "role": "assistant",
            "content": "Checking.",
            "tool_calls": [
                {
                    "id": "call_1",
                    "type": "function",
                    "function": {"name": "get_weather", "arguments": '{"city":"Paris"}'},
                    "extra_content": {"google": {"thought_signature": SIGNATURE}},
                },
                {
                    "id": "call_2",
                    "type": "function",
                    "function": {"name": "get_time", "arguments": '{"city":"Oslo"}'},
                },
            ],
        },
        {"role": "tool", "tool_call_id": "call_1", "content": "18°C"},
        {"role": "tool", "tool_call_id": "call_2", "content": '{"time": "12:00"}'},
        {"role": "user", "content": "Thanks, summarise."},
        {
            "role": "assistant",
            "content": None,
            "tool_calls": [
                {
                    "id": "call_3",
                    "type": "function",
                    "function": {"name": "get_weather", "arguments": "not json"},
                }
            ],
        },
        {"role": "tool", "tool_call_id": "call_3", "content": [{"type": "text", "text": "3°C"}]},
    ],
    "tools": [
        {
            "type": "function",
            "function": {
                "name": "get_weather",
                "description": "Current weather in a city",
                "parameters": WEATHER_SCHEMA,
            },
        },
        {"type": "function", "function": {"name": "get_time"}},
    ],
    "tool_choice": {"type": "function", "function": {"name": "get_weather"}},
    "max_completion_tokens": 300,
    "max_tokens": 100,
    "temperature": 1.6,
    "top_p": 0.5,
    "n": 2,
    "presence_penalty": 0.5,
    "frequency_penalty": -0.5,
    "seed": 3,
    "stop": "\n\n",
    "response_format": {
        "type": "json_schema",
        "json_schema": {"name": "weather", "schema": WEATHER_SCHEMA, "strict": True},
    },
    "stream": True,
    "stream_options": {"include_usage": True},
    "user": "u-9",
    "parallel_tool_calls": True,
}

GEMINI_REQUEST = {
    "contents": [
        {
            "role": "user",
            "parts": [
                {"text": "Weather here?"},
                {"inlineData": {"mimeType": "image/png", "data": "iVBORw0KGgo="}},
                {
                    "fileData": {
                        "mimeType": "image/jpeg",
                        "fileUri": "https://example.com/sky.JPG?v=2",
                    }
                },
                {"text": "And in Oslo?"},
            ],
        },
        {
            "role": "model",
            "parts": [
                {"text": "Checking."},
                {
                    "functionCall": {"name": "get_weather", "args": {"city": "Paris"}},
                    "thoughtSignature": SIGNATURE,
                },
                {"functionCall": {"name": "get_time", "args": {"city": "Oslo"}}},
            ],
        },
        {
            "role": "user",
            "parts": [
                {"functionResponse": {"name": "get_weather", "response": {"result": "18°C"}}},
                {"functionResponse": {"name": "get_time", "response": {"time": "12:00"}}},
                {"text": "Thanks, summarise."},
            ],
        },
        {
            "role": "model",
            "parts": [
                {
                    "functionCall": {"name": "get_weather", "args": {}},
                    "thoughtSignature": SKIP_SIGNATURE,
                }
            ],
        },
        {
            "role": "user",
            "parts": [{"functionResponse": {"name": "get_weather", "response": {"result": "3°C"}}}],
        },
    ],
    "systemInstruction": {"parts": [{"text": "Be brief.\n\nUse metric units."}]},
    "generationConfig": {
        "maxOutputTokens": 300,
        "temperature": 1.6,
        "topP": 0.5,
        "candidateCount": 2,
        "presencePenalty": 0.5,
        "frequencyPenalty": -0.5,
        "seed": 3,
        "stopSequences": ["\n\n"],
        "responseMimeType": "application/json",
        "responseJsonSchema": WEATHER_SCHEMA,
    },
    "tools": [
        {
            "functionDeclarations": [
                {
                    "name": "get_weather",
                    "description": "Current weather in a city",
                    "parametersJsonSchema": WEATHER_SCHEMA,
                },
                {"name": "get_time"},
            ]
        }
    ],
    "toolConfig": {
        "functionCallingConfig": {"mode": "ANY", "allowedFunctionNames": ["get_weather"]}
    },
}


def _check_with_sdk(request: dict) -> None:
    """Each part of a request body is what google-genai's types (unknown fields
    forbidden, camelCase aliases, bytes as base64) accept."""
    for content in request["contents"]:
        types.Content.model_validate_json(json.dumps(content))
    if "systemInstruction" in request:
        types.Content.model_validate_json(json.dumps(request["systemInstruction"]))
    if "generationConfig" in request:
        types.GenerationConfig.model_validate_json(json.dumps(request["generationConfig"]))
    for tool in request.get("tools", ()):
        types.Tool.model_validate_json(json.dumps(tool))
    if "toolConfig" in request:
        types.ToolConfig.model_validate_json(json.dumps(request["toolConfig"]))
    assert set(request) <= {
        "contents",
        "systemInstruction",
        "generationConfig",
        "tools",
        "toolConfig",
    }


def test_openai_to_gemini() -> None:
    out = openai_to_gemini(OPENAI_CHAT)
    assert out == GEMINI_REQUEST
    _check_with_sdk(out)
    json.dumps(out, allow_nan=False)


def test_openai_to_gemini_sdk_reads_the_fields_we_meant() -> None:
    out = openai_to_gemini(OPENAI_CHAT)
    config = types.GenerationConfig.model_validate_json(json.dumps(out["generationConfig"]))
    assert (config.max_output_tokens, config.top_p, config.candidate_count) == (300, 0.5, 2)
    assert config.response_json_schema == WEATHER_SCHEMA
    assert config.stop_sequences == ["\n\n"]
    model_turn = types.Content.model_validate_json(json.dumps(out["contents"][1]))
    call = model_turn.parts[1]  # type: ignore[index]
    assert call.function_call.args == {"city": "Paris"}  # type: ignore[union-attr]
    assert call.thought_signature == b"signature-one"
    tool_config = types.ToolConfig.model_validate_json(json.dumps(out["toolConfig"]))
    calling = tool_config.function_calling_config
    assert calling.mode == types.FunctionCallingConfigMode.ANY  # type: ignore[union-attr]


def test_openai_to_gemini_minimal() -> None:
    out = openai_to_gemini({"model": "g", "messages": [{"role": "user", "content": "hi"}]})
    assert out == {"contents": [{"role": "user", "parts": [{"text": "hi"}]}]}


@pytest.mark.parametrize(
    ("choice", "config"),
    [
        ("auto", {"mode": "AUTO"}),
        ("none", {"mode": "NONE"}),
        ("required", {"mode": "ANY"}),
        (
            {"type": "function", "function": {"name": "f"}},
            {"mode": "ANY", "allowedFunctionNames": ["f"]},
        ),
    ],
)
def test_openai_to_gemini_tool_choice(choice: Any, config: dict) -> None:
    body = {
        "messages": [{"role": "user", "content": "x"}],
        "tools": [{"type": "function", "function": {"name": "f", "parameters": {}}}],
        "tool_choice": choice,
    }
    out = openai_to_gemini(body)
    assert out["tools"] == [{"functionDeclarations": [{"name": "f"}]}]
    assert out["toolConfig"] == {"functionCallingConfig": config}
    _check_with_sdk(out)


@pytest.mark.parametrize(
    ("extra", "config"),
    [
        ({"max_tokens": 7}, {"maxOutputTokens": 7}),
        ({"stop": ["a", "b"]}, {"stopSequences": ["a", "b"]}),
        ({"stop": []}, None),
        ({"stop": ["", "x"]}, {"stopSequences": ["x"]}),
        ({"top_k": 40}, {"topK": 40}),
        ({"response_format": {"type": "json_object"}}, {"responseMimeType": "application/json"}),
        ({"response_format": {"type": "text"}}, None),
        ({"temperature": 0}, {"temperature": 0}),
    ],
)
def test_openai_to_gemini_generation_config(extra: dict, config: dict | None) -> None:
    out = openai_to_gemini({"messages": [{"role": "user", "content": "x"}], **extra})
    assert out.get("generationConfig") == config
    _check_with_sdk(out)


def test_openai_to_gemini_skips_empty_turns_and_keeps_tool_name_fallback() -> None:
    body = {
        "messages": [
            {"role": "user", "content": ""},
            {
                "role": "user",
                "content": [{"type": "text", "text": ""}, {"type": "text", "text": "a"}],
            },
            {"role": "assistant", "content": ""},
            {"role": "tool", "tool_call_id": "elsewhere", "name": "lookup", "content": None},
        ]
    }
    out = openai_to_gemini(body)
    assert out["contents"] == [
        {
            "role": "user",
            "parts": [
                {"text": "a"},
                {"functionResponse": {"name": "lookup", "response": {"result": ""}}},
            ],
        }
    ]
    _check_with_sdk(out)
    nan = {"messages": [*body["messages"][:1], {**body["messages"][3], "content": '{"a": NaN}'}]}
    response = openai_to_gemini(nan)["contents"][0]["parts"][0]["functionResponse"]["response"]
    assert response == {"result": '{"a": NaN}'}  # NaN is not JSON: the text goes as it is


def _user(content: Any) -> dict:
    return {"messages": [{"role": "user", "content": content}]}


def _image(url: Any) -> dict:
    return _user([{"type": "text", "text": "x"}, {"type": "image_url", "image_url": {"url": url}}])


@pytest.mark.parametrize(
    ("body", "field"),
    [
        (None, "body"),
        ({}, "messages"),
        ({"messages": []}, "messages"),
        ({"messages": ["hi"]}, "messages.0"),
        ({"messages": [{"role": "system", "content": "only"}]}, "messages"),
        ({"messages": [{"role": "function", "content": "x"}]}, "messages.0.role"),
        (_user(5), "messages.0.content"),
        (_user([{"type": "input_audio"}]), "messages.0.content.0"),
        (_user([{"type": "text", "text": 5}]), "messages.0.content.0.text"),
        (_image("data:image/png,raw"), "messages.0.content.1.image_url.url"),
        (_image("data:;base64,AAAA"), "messages.0.content.1.image_url.url"),
        (_image("ftp://example.com/a.png"), "messages.0.content.1.image_url.url"),
        (_image(None), "messages.0.content.1.image_url.url"),
        (_user([{"type": "image_url"}]), "messages.0.content.0.image_url.url"),
        (
            {"messages": [{"role": "system", "content": [{"type": "image_url"}]}]},
            "messages.0.content.0",
        ),
        ({"messages": [{"role": "assistant", "tool_calls": {"id": "x"}}]}, "messages.0.tool_calls"),
        (
            {"messages": [{"role": "assistant", "tool_calls": [{"id": "x"}]}]},
            "messages.0.tool_calls.0",
        ),
        ({"messages": [{"role": "tool", "content": "x"}]}, "messages.0.tool_call_id"),
        (
            {"messages": [{"role": "tool", "tool_call_id": "c9", "content": "x"}]},
            "messages.0.tool_call_id",
        ),
        ({**_user("x"), "max_tokens": 0}, "max_tokens"),
        ({**_user("x"), "max_completion_tokens": 1.5}, "max_completion_tokens"),
        ({**_user("x"), "n": 9}, "n"),
        ({**_user("x"), "temperature": -1}, "temperature"),
        ({**_user("x"), "temperature": float("nan")}, "temperature"),
        ({**_user("x"), "top_p": 2}, "top_p"),
        ({**_user("x"), "seed": "3"}, "seed"),
        ({**_user("x"), "presence_penalty": 3}, "presence_penalty"),
        ({**_user("x"), "stop": [1]}, "stop"),
        ({**_user("x"), "stop": ["a"] * 6}, "stop"),
        ({**_user("x"), "response_format": {"type": "xml"}}, "response_format.type"),
        (
            {**_user("x"), "response_format": {"type": "json_schema"}},
            "response_format.json_schema.schema",
        ),
        ({**_user("x"), "tools": "f"}, "tools"),
        ({**_user("x"), "tools": [{"type": "code_interpreter"}]}, "tools.0"),
        (
            {**_user("x"), "tools": [{"type": "function", "function": {"name": ""}}]},
            "tools.0.function.name",
        ),
        (
            {**_user("x"), "tools": [{"function": {"name": "f", "parameters": []}}]},
            "tools.0.function.parameters",
        ),
        ({**_user("x"), "tool_choice": "maybe"}, "tool_choice"),
        (
            {**_user("x"), "tool_choice": {"type": "function", "function": {}}},
            "tool_choice.function.name",
        ),
    ],
)
def test_openai_to_gemini_rejects_malformed(body: Any, field: str) -> None:
    with pytest.raises(ValueError) as caught:
        openai_to_gemini(body)
    message = str(caught.value)
    assert message.split(":", 1)[0] == field
    assert "\n" not in message


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(junk=JSON, seed=st.integers(0, 2**32))
def test_hostile_requests_raise_only_value_error(junk: Any, seed: int) -> None:
    body = mutate(OPENAI_CHAT, random.Random(seed), junk)
    try:
        out = openai_to_gemini(body)
    except ValueError as error:
        assert "\n" not in str(error)
        return
    json.dumps(out, allow_nan=False)


# -- gemini_to_openai ------------------------------------------------------------------


GEMINI_ANSWER = {
    "candidates": [
        {
            "content": {
                "role": "model",
                "parts": [
                    {"text": "The user wants weather.", "thought": True},
                    {"text": "Let me "},
                    {"text": "check."},
                    {
                        "functionCall": {"name": "get_weather", "args": {"city": "Paris"}},
                        "thoughtSignature": SIGNATURE,
                    },
                    {"functionCall": {"name": "get_time", "args": {"city": "Paris", "tz": 1}}},
                ],
            },
            "finishReason": "STOP",
            "index": 0,
            "safetyRatings": [
                {"category": "HARM_CATEGORY_HARASSMENT", "probability": "NEGLIGIBLE"}
            ],
        }
    ],
    "usageMetadata": {
        "promptTokenCount": 40,
        "candidatesTokenCount": 12,
        "totalTokenCount": 80,
        "thoughtsTokenCount": 28,
        "cachedContentTokenCount": 16,
        "promptTokensDetails": [{"modality": "TEXT", "tokenCount": 40}],
    },
    "modelVersion": "gemini-2.5-flash",
    "responseId": "mK1oaN7uBZ6jz7IPhoa2oQQ",
}


def _sdk(answer: dict) -> types.GenerateContentResponse:
    """What google-genai makes of ``answer`` as the REST API sends it."""
    return types.GenerateContentResponse.model_validate_json(json.dumps(answer))


def test_gemini_to_openai_reads_what_the_sdk_reads() -> None:
    sdk = _sdk(GEMINI_ANSWER)
    out = gemini_to_openai(GEMINI_ANSWER, "gemini:gemini-2.5-flash", 1700000000, "chatcmpl-xy9")
    completion = ChatCompletion.model_validate(out)
    assert (completion.id, completion.model, completion.created) == (
        "chatcmpl-xy9",
        "gemini:gemini-2.5-flash",
        1700000000,
    )
    choice = completion.choices[0]
    candidate = sdk.candidates[0]  # type: ignore[index]
    texts = [p.text for p in candidate.content.parts if p.text and not p.thought]  # type: ignore[union-attr]
    assert choice.message.content == "".join(texts) == "Let me check."
    assert out["choices"][0]["message"]["reasoning_content"] == "The user wants weather."
    calls = choice.message.tool_calls or []
    assert [(c.function.name, json.loads(c.function.arguments)) for c in calls] == [  # type: ignore[union-attr]
        (f.name, f.args) for f in sdk.function_calls or ()
    ]
    assert [c.id for c in calls] == ["call_xy9_0", "call_xy9_1"]
    assert out["choices"][0]["message"]["tool_calls"][0]["extra_content"] == {
        "google": {"thought_signature": SIGNATURE}
    }
    assert "extra_content" not in out["choices"][0]["message"]["tool_calls"][1]
    assert candidate.finish_reason == types.FinishReason.STOP
    assert choice.finish_reason == "tool_calls"
    usage = sdk.usage_metadata
    assert completion.usage is not None and usage is not None
    assert completion.usage.prompt_tokens == usage.prompt_token_count == 40
    assert completion.usage.completion_tokens == 12 + 28
    assert completion.usage.total_tokens == 80
    assert completion.usage.prompt_tokens_details.cached_tokens == 16  # type: ignore[union-attr]
    assert completion.usage.completion_tokens_details.reasoning_tokens == 28  # type: ignore[union-attr]


def test_gemini_tool_call_ids_and_signatures_round_trip() -> None:
    """Gemini answer -> OpenAI answer -> the client sends it back -> Gemini request."""
    answer = gemini_to_openai(GEMINI_ANSWER, "m", 1, "chatcmpl-xy9")
    message = answer["choices"][0]["message"]
    results = [
        {"role": "tool", "tool_call_id": call["id"], "content": "ok"}
        for call in message["tool_calls"]
    ]
    body = {"messages": [{"role": "user", "content": "hi"}, message, *results]}
    out = openai_to_gemini(body)
    _check_with_sdk(out)
    assert out["contents"][1]["parts"][1:] == [
        {
            "functionCall": {"name": "get_weather", "args": {"city": "Paris"}},
            "thoughtSignature": SIGNATURE,
        },
        {"functionCall": {"name": "get_time", "args": {"city": "Paris", "tz": 1}}},
    ]
    assert [p["functionResponse"]["name"] for p in out["contents"][2]["parts"]] == [
        "get_weather",
        "get_time",
    ]


def test_gemini_to_openai_keeps_gemini_call_ids_and_candidates() -> None:
    answer = {
        "candidates": [
            {"content": {"parts": [{"functionCall": {"id": "fc_1", "name": "f"}}]}, "index": 0},
            {
                "content": {"parts": [{"functionCall": {"name": "f", "args": {}}}]},
                "finishReason": "MAX_TOKENS",
                "index": 1,
            },
            {"content": {"parts": [{"text": "cut"}]}, "finishReason": "MAX_TOKENS", "index": 2},
        ]
    }
    _sdk(answer)
    out = gemini_to_openai(answer, "m", 1, "chatcmpl-q")
    completion = ChatCompletion.model_validate(out)
    assert [c.index for c in completion.choices] == [0, 1, 2]
    ids = [c.message.tool_calls[0].id for c in completion.choices[:2]]  # type: ignore[index]
    assert ids == ["fc_1", "call_q_1"]
    assert completion.choices[0].message.tool_calls[0].function.arguments == "{}"  # type: ignore[index,union-attr]
    assert [c.finish_reason for c in completion.choices] == ["tool_calls", "tool_calls", "length"]
    assert completion.usage is not None and completion.usage.total_tokens == 0


@pytest.mark.parametrize(
    ("reason", "finish"),
    [
        *FINISH_REASONS.items(),
        ("OTHER", "stop"),
        ("MALFORMED_FUNCTION_CALL", "stop"),
        (None, "stop"),
        (7, "stop"),
    ],
)
def test_gemini_to_openai_finish_reasons(reason: Any, finish: str) -> None:
    answer = {"candidates": [{"content": {"parts": [{"text": "x"}]}, "finishReason": reason}]}
    out = gemini_to_openai(answer, "m", 1, "chatcmpl-1")
    assert ChatCompletion.model_validate(out).choices[0].finish_reason == finish


def test_gemini_to_openai_blocked_prompt() -> None:
    answer = {
        "promptFeedback": {
            "blockReason": "PROHIBITED_CONTENT",
            "safetyRatings": [{"category": "HARM_CATEGORY_HATE_SPEECH", "probability": "HIGH"}],
        },
        "usageMetadata": {"promptTokenCount": 9, "totalTokenCount": 9},
        "modelVersion": "gemini-2.5-flash",
    }
    assert _sdk(answer).prompt_feedback.block_reason == types.BlockedReason.PROHIBITED_CONTENT  # type: ignore[union-attr]
    out = gemini_to_openai(answer, "m", 1, "chatcmpl-1")
    choice = ChatCompletion.model_validate(out).choices[0]
    assert (choice.message.content, choice.finish_reason) == ("", "content_filter")
    assert out["usage"] == {"prompt_tokens": 9, "completion_tokens": 0, "total_tokens": 9}
    assert gemini_to_openai({}, "m", 1, "c")["choices"][0]["finish_reason"] == "stop"


@settings(max_examples=300, deadline=None)
@given(junk=JSON, seed=st.integers(0, 2**32))
def test_hostile_answers_never_raise(junk: Any, seed: int) -> None:
    for answer in (junk, mutate(GEMINI_ANSWER, random.Random(seed), junk)):
        out = gemini_to_openai(answer, "m", 1, "chatcmpl-1")
        ChatCompletion.model_validate(out)
        json.dumps(out, allow_nan=False)


# -- GeminiToOpenAIStream --------------------------------------------------------------


def _event(data: dict, end: bytes = b"\r\n\r\n") -> bytes:
    """One event as Gemini's ``alt=sse`` stream sends it (CRLF line ends)."""
    return b"data: " + json.dumps(data).encode() + end


GEMINI_STREAM_EVENTS = [
    {
        "candidates": [
            {
                "content": {
                    "parts": [{"text": "Thinking about ", "thought": True}],
                    "role": "model",
                },
                "index": 0,
            }
        ],
        "usageMetadata": {"promptTokenCount": 10, "totalTokenCount": 10},
        "modelVersion": "gemini-2.5-flash",
        "responseId": "r1",
    },
    {
        "candidates": [
            {"content": {"parts": [{"text": "Paris é☃ "}], "role": "model"}, "index": 0}
        ],
        "usageMetadata": {"promptTokenCount": 10, "candidatesTokenCount": 3, "totalTokenCount": 13},
        "modelVersion": "gemini-2.5-flash",
        "responseId": "r1",
    },
    {
        "candidates": [
            {
                "content": {
                    "parts": [
                        {"text": "is sunny."},
                        {
                            "functionCall": {"name": "get_weather", "args": {"city": "Paris"}},
                            "thoughtSignature": SIGNATURE,
                        },
                        {"functionCall": {"name": "get_time", "args": {"city": "Oslo"}}},
                    ],
                    "role": "model",
                },
                "finishReason": "STOP",
                "index": 0,
            }
        ],
        "usageMetadata": {
            "promptTokenCount": 10,
            "candidatesTokenCount": 20,
            "totalTokenCount": 35,
            "thoughtsTokenCount": 5,
        },
        "modelVersion": "gemini-2.5-flash",
        "responseId": "r1",
    },
]
GEMINI_STREAM = b"".join(_event(e) for e in GEMINI_STREAM_EVENTS)


def _translate(pieces: list[bytes], include_usage: bool = True) -> bytes:
    stream = GeminiToOpenAIStream("gemini:flash", "chatcmpl-s1", 1700000000, include_usage)
    return b"".join(stream.feed(piece) for piece in pieces) + stream.end()


def _calls(chunks: list[ChatCompletionChunk]) -> dict[int, tuple[str, str, Any]]:
    calls: dict[int, tuple[str, str, Any]] = {}
    for chunk in chunks:
        for call in chunk.choices[0].delta.tool_calls or () if chunk.choices else ():
            name, arguments = call.function.name, call.function.arguments  # type: ignore[union-attr]
            calls[call.index] = (call.id or "", name or "", json.loads(arguments or "{}"))
    return calls


def _check_sse(sse: bytes) -> None:
    """Each event is a chunk the openai SDK reads, or an error event, then ``[DONE]``."""
    events = sse.split(b"\n\n")
    assert events.pop() == b""
    for raw in events:
        assert raw.startswith(b"data: "), raw
        if raw == b"data: [DONE]":
            assert raw is events[-1]
            continue
        data = json.loads(raw[6:])
        if "error" in data:
            assert raw is events[-1] and set(data["error"]) == {"message", "type", "code"}
        else:
            ChatCompletionChunk.model_validate(data)


def test_stream_fixture_is_what_gemini_sends() -> None:
    for data in GEMINI_STREAM_EVENTS:
        _sdk(data)


def test_stream_translation() -> None:
    sse = _translate([GEMINI_STREAM])
    assert sse.endswith(b"data: [DONE]\n\n")
    chunks = openai_chunks(sse)
    assert chunks[0].choices[0].delta.role == "assistant"
    assert all(c.id == "chatcmpl-s1" and c.model == "gemini:flash" for c in chunks)
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == "Paris é☃ is sunny."
    reasoning = "".join(
        (c.choices[0].delta.model_extra or {}).get("reasoning_content", "")
        for c in chunks
        if c.choices
    )
    assert reasoning == "Thinking about "
    assert _calls(chunks) == {
        0: ("call_s1_0", "get_weather", {"city": "Paris"}),
        1: ("call_s1_1", "get_time", {"city": "Oslo"}),
    }
    finishes = [c.choices[0].finish_reason for c in chunks if c.choices]
    assert finishes.count("tool_calls") == 1 and finishes[-1] == "tool_calls"
    assert chunks[-1].choices == []
    assert chunks[-1].usage is not None
    usage = chunks[-1].usage
    assert (usage.prompt_tokens, usage.completion_tokens, usage.total_tokens) == (10, 25, 35)
    assert b"thought_signature" in sse

    client = sdk_client(sse, "text/event-stream")
    stream = client.chat.completions.create(
        model="m", messages=[{"role": "user", "content": "x"}], stream=True
    )
    assert "".join(c.choices[0].delta.content or "" for c in stream if c.choices) == text


def test_stream_without_usage_and_with_lf_line_ends() -> None:
    lf = b"".join(_event(e, b"\n\n") for e in GEMINI_STREAM_EVENTS)
    sse = _translate([lf], include_usage=False)
    assert sse == _translate([GEMINI_STREAM], include_usage=False)
    assert sse.endswith(b"data: [DONE]\n\n")
    # No usage chunk of its own (the client asked none), but the finish chunk carries
    # the usage, for the mesh's records.
    chunks = [json.loads(e[6:]) for e in sse.split(b"\n\n") if e.startswith(b"data: {")]
    assert all(c["choices"] for c in chunks)
    assert [bool(c.get("usage")) for c in chunks] == [
        c["choices"][0]["finish_reason"] is not None for c in chunks
    ]


@settings(max_examples=200, deadline=None)
@given(cuts=st.lists(st.integers(0, len(GEMINI_STREAM)), max_size=30))
def test_stream_however_the_bytes_are_cut(cuts: list[int]) -> None:
    bounds = [0, *sorted(cuts), len(GEMINI_STREAM)]
    pieces = [GEMINI_STREAM[a:b] for a, b in itertools.pairwise(bounds)]
    assert _translate(pieces) == _translate([GEMINI_STREAM])


def test_stream_crlf_cut_between_cr_and_lf() -> None:
    pieces = []
    for event in GEMINI_STREAM_EVENTS:
        raw = _event(event)
        pieces += [raw[:-3], raw[-3:-2], raw[-2:-1], raw[-1:]]  # ...\r | \n | \r | \n
    assert _translate(pieces) == _translate([GEMINI_STREAM])


def test_stream_text_only_finishes_with_stop_and_length() -> None:
    events = [
        {"candidates": [{"content": {"parts": [{"text": "a"}]}}]},
        {"candidates": [{"content": {"parts": [{"text": ""}]}, "finishReason": "MAX_TOKENS"}]},
    ]
    chunks = openai_chunks(_translate([b"".join(_event(e) for e in events)]))
    assert [c.choices[0].finish_reason for c in chunks if c.choices] == [None, None, "length"]


def test_stream_several_candidates() -> None:
    events = [
        {
            "candidates": [
                {"content": {"parts": [{"text": "a"}]}, "index": 0},
                {"content": {"parts": [{"text": "b"}]}, "index": 1},
            ]
        },
        {
            "candidates": [
                {
                    "content": {"parts": [{"functionCall": {"name": "f"}}]},
                    "index": 1,
                    "finishReason": "STOP",
                }
            ]
        },
        {
            "candidates": [
                {"content": {"parts": [{"text": "c"}]}, "index": 0, "finishReason": "STOP"}
            ]
        },
    ]
    chunks = openai_chunks(_translate([b"".join(_event(e) for e in events)]))
    by_choice: dict[int, str] = {}
    for c in chunks:
        for choice in c.choices:
            by_choice[choice.index] = by_choice.get(choice.index, "") + (choice.delta.content or "")
    assert by_choice == {0: "ac", 1: "b"}
    finish = {ch.index: ch.finish_reason for c in chunks for ch in c.choices if ch.finish_reason}
    assert finish == {0: "stop", 1: "tool_calls"}


def test_stream_blocked_prompt() -> None:
    blocked = {
        "promptFeedback": {"blockReason": "SAFETY"},
        "usageMetadata": {"promptTokenCount": 4},
    }
    _sdk(blocked)
    sse = _translate([_event(blocked)])
    chunks = openai_chunks(sse)
    assert chunks[0].choices[0].delta.role == "assistant"
    assert chunks[1].choices[0].finish_reason == "content_filter"
    assert chunks[2].usage.prompt_tokens == 4  # type: ignore[union-attr]
    assert sse.endswith(b"data: [DONE]\n\n")


def test_stream_error_event() -> None:
    error = {"error": {"code": 503, "message": "The model is overloaded.", "status": "UNAVAILABLE"}}
    stream = GeminiToOpenAIStream("m", "chatcmpl-e", 1)
    sse = stream.feed(
        _event(GEMINI_STREAM_EVENTS[0]) + _event(error) + _event(GEMINI_STREAM_EVENTS[1])
    )
    sse += stream.feed(_event(GEMINI_STREAM_EVENTS[2])) + stream.end()
    assert b"[DONE]" not in sse and b"Paris" not in sse
    last = json.loads(sse.split(b"\n\n")[-2][6:])
    assert last == {
        "error": {"message": "The model is overloaded.", "type": "api_error", "code": "UNAVAILABLE"}
    }
    client = sdk_client(sse, "text/event-stream")
    with pytest.raises(openai.APIError, match="overloaded"):
        list(
            client.chat.completions.create(
                model="m", messages=[{"role": "user", "content": "x"}], stream=True
            )
        )
    bad = _translate([_event({"error": {"code": 400, "message": "Bad"}})])
    assert json.loads(bad[6:])["error"]["type"] == "invalid_request_error"


def test_stream_cut_off_and_oversized() -> None:
    cut = _translate([_event(GEMINI_STREAM_EVENTS[0]), _event(GEMINI_STREAM_EVENTS[1])[:-9]])
    assert b"ended before finishReason" in cut and b"[DONE]" not in cut
    assert _translate([]).startswith(b'data: {"error"')
    # The last event may come without its blank line: end() reads it.
    assert _translate([GEMINI_STREAM[:-4]]) == _translate([GEMINI_STREAM])
    stream = GeminiToOpenAIStream("m", "c", 1)
    big = stream.feed(b"data: " + b"x" * (MAX_PENDING_BYTES + 1))
    assert b"oversized" in big
    assert stream.feed(GEMINI_STREAM) == b"" and stream.end() == b""


def test_stream_ignores_junk() -> None:
    junk = [
        b": keep-alive\r\n\r\n",
        b"data: {bad\r\n\r\n",
        b"event: x\r\n\r\n",
        b"data: 7\r\n\r\n",
        b"data: [1, 2]\r\n\r\n",
        _event({"candidates": "x"}),
        _event({"candidates": [None, {"content": {"parts": [None, {"functionCall": 3}]}}]}),
        _event({"candidates": [{"index": 99, "content": {"parts": [{"text": "far"}]}}]}),
    ]
    chunks = openai_chunks(_translate([*junk, GEMINI_STREAM]))
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == "far" + "Paris é☃ is sunny."  # index 99 is out of range: its position, 0


@settings(max_examples=300, deadline=None)
@given(
    pieces=st.lists(
        st.binary(max_size=64) | JSON.map(lambda v: b"data: " + json.dumps(v).encode() + b"\n\n"),
        max_size=8,
    ),
    usage=st.booleans(),
)
def test_hostile_streams_never_raise(pieces: list[bytes], usage: bool) -> None:
    _check_sse(_translate(pieces, include_usage=usage))


@settings(max_examples=200, deadline=None)
@given(junk=JSON, seed=st.integers(0, 2**32))
def test_hostile_stream_events_never_raise(junk: Any, seed: int) -> None:
    events = [mutate(e, random.Random(seed), junk) for e in GEMINI_STREAM_EVENTS]
    _check_sse(_translate([b"".join(_event(e) for e in events)]))


# -- error_to_openai -------------------------------------------------------------------


@pytest.mark.parametrize(
    ("status", "body", "expected"),
    [
        (
            400,
            b'{"error": {"code": 400, "message": "API key not valid.",'
            b' "status": "INVALID_ARGUMENT"}}',
            {
                "message": "API key not valid.",
                "type": "invalid_request_error",
                "code": "INVALID_ARGUMENT",
            },
        ),
        (
            429,
            b'[{"error": {"code": 429, "message": "Quota exceeded",'
            b' "status": "RESOURCE_EXHAUSTED"}}]',
            {
                "message": "Quota exceeded",
                "type": "invalid_request_error",
                "code": "RESOURCE_EXHAUSTED",
            },
        ),
        (
            503,
            b"<html>Service Unavailable</html>\n",
            {"message": "<html>Service Unavailable</html>", "type": "api_error", "code": None},
        ),
        (500, b"", {"message": "upstream error (HTTP 500)", "type": "api_error", "code": None}),
        (
            404,
            b'{"error": {"message": 7}}',
            {"message": "upstream error (HTTP 404)", "type": "invalid_request_error", "code": None},
        ),
    ],
)
def test_error_to_openai(status: int, body: bytes, expected: dict) -> None:
    out = error_to_openai(status, body)
    assert out == {"error": expected}
    client = sdk_client(json.dumps(out).encode(), "application/json", status=status)
    with pytest.raises(openai.APIStatusError) as caught:
        client.chat.completions.create(model="m", messages=[{"role": "user", "content": "x"}])
    assert caught.value.status_code == status
    assert expected["message"] in caught.value.message
    assert caught.value.code == expected["code"]


def test_error_to_openai_caps_the_message() -> None:
    body = json.dumps({"error": {"message": "x" * 10_000}}).encode()
    assert len(error_to_openai(400, body)["error"]["message"]) == MAX_ERROR_CHARS


@settings(max_examples=300, deadline=None)
@given(
    status=st.integers() | st.none(),
    body=st.binary(max_size=64) | JSON.map(lambda v: json.dumps(v).encode()),
)
def test_hostile_errors_never_raise(status: Any, body: bytes) -> None:
    out = error_to_openai(status, body)
    assert set(out["error"]) == {"message", "type", "code"}
    assert out["error"]["type"] in ("invalid_request_error", "api_error")
    json.dumps(out)


@settings(max_examples=200, deadline=None)
@given(st.text(min_size=1), st.booleans())
def test_the_fast_read_of_a_text_event_says_what_a_whole_parse_says(
    text: str, ascii_only: bool
) -> None:
    """A plain text event is relayed without a parse: the same chunk, read back, as an
    event the parse reads (here, its fields in another order)."""
    quoted = json.dumps(text, ensure_ascii=ascii_only)
    first = b'data: {"candidates":[{"content":{"parts":[{"text":"a"}],"role":"model"},"index":0}]}'
    fast = (
        '{"candidates": [{"content": {"parts": [{"text": ' + quoted + '}],"role": "model"},'
        '"index": 0}],"usageMetadata": {"promptTokenCount": 3,"totalTokenCount": 3}}'
    )
    slow = (
        '{"candidates": [{"index": 0, "content": {"role": "model", "parts": [{"text": '
        + quoted
        + "}]}}]}"
    )
    assert _PLAIN.match(fast.encode()) and not _PLAIN.match(slow.encode())
    outputs = []
    for event in (fast, slow):
        stream = GeminiToOpenAIStream("m", "chatcmpl-1", 1)
        stream.feed(first + b"\r\n\r\n")
        sse = stream.feed(b"data: " + event.encode() + b"\r\n\r\n")
        outputs.append(json.loads(sse.removeprefix(b"data: ")))
    assert outputs[0] == outputs[1]
    assert outputs[0]["choices"][0]["delta"]["content"] == text
