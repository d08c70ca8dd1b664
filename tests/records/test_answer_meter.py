"""The answer meter: first token and token counts from what backends really send."""

from __future__ import annotations

import json

from meshllm.records.answer_meter import MAX_COUNTED_BODY_BYTES, AnswerMeter


def event(payload: dict) -> bytes:
    return b"data: " + json.dumps(payload).encode() + b"\n\n"


def chunk(text: str) -> bytes:
    return event({"choices": [{"index": 0, "delta": {"content": text}}]})


# What llama-server streams (measured: its last chunk has timings, not usage).
LLAMA_LAST = event(
    {
        "choices": [{"finish_reason": "length", "index": 0, "delta": {}}],
        "timings": {"cache_n": 20, "prompt_n": 5, "predicted_n": 3},
    }
)


def test_a_llama_server_stream_counts_its_timings_and_first_token() -> None:
    meter = AnswerMeter(stream=True, keep_text=True)
    meter.feed(b": loading gemma (1 s)\n\n", 1.0)  # a comment is no token
    assert meter.first_token_at is None
    meter.feed(chunk("Hel") + chunk("lo"), 2.0)
    meter.feed(chunk("!") + LLAMA_LAST + b"data: [DONE]\n\n", 3.0)
    meter.finish()
    assert meter.first_token_at == 2.0
    assert (meter.tokens_in, meter.tokens_out) == (25, 3)
    assert meter.text == "Hello!"


def test_usage_wins_and_a_stream_without_counts_is_counted_by_its_events() -> None:
    meter = AnswerMeter(stream=True)
    meter.feed(chunk("a") + event({"choices": [], "usage": {"prompt_tokens": 7,
               "completion_tokens": 2}}), 1.0)  # fmt: skip
    meter.finish()
    assert (meter.tokens_in, meter.tokens_out) == (7, 2)
    plain = AnswerMeter(stream=True)
    for text in ("one", " two", " three"):
        plain.feed(chunk(text), 1.0)
    plain.finish()
    assert (plain.tokens_in, plain.tokens_out) == (0, 3)
    assert plain.text is None  # not kept unless asked


def test_a_body_is_counted_however_it_is_chunked() -> None:
    body = json.dumps(
        {
            "choices": [{"message": {"role": "assistant", "content": "hi there"}}],
            "usage": {"prompt_tokens": 11, "completion_tokens": 4},
        }
    ).encode()
    meter = AnswerMeter(stream=False, keep_text=True)
    for i in range(0, len(body), 7):
        meter.feed(body[i : i + 7], 5.0 + i)
    meter.finish()
    assert (meter.tokens_in, meter.tokens_out, meter.first_token_at) == (11, 4, 5.0)
    assert meter.text == "hi there"


def test_hostile_answers_are_relayed_uncounted_never_a_crash() -> None:
    for data in (
        b"data: {not json}\n\n",
        event({"usage": {"prompt_tokens": -5, "completion_tokens": "many"}}),
        event({"usage": {"prompt_tokens": 1 << 60}}),
        b"data: " + b"[" * 100_000 + b"\n\n",
        event({"usage": [1, 2]}),
    ):
        meter = AnswerMeter(stream=True)
        meter.feed(data, 1.0)
        meter.finish()
        assert meter.tokens_in == 0
    huge = AnswerMeter(stream=False)
    huge.feed(b'{"usage": {"prompt_tokens": 3}, "x": "' + b"y" * MAX_COUNTED_BODY_BYTES, 1.0)
    huge.feed(b'"}', 2.0)
    huge.finish()
    assert huge.tokens_in == 0  # too big to count: relayed all the same


def anthropic_event(name: str, payload: dict) -> bytes:
    return f"event: {name}\n".encode() + event({"type": name, **payload})


def test_an_anthropic_stream_counts_its_usage_and_keeps_its_text() -> None:
    """What llama-server's own /v1/messages and Anthropic's cloud stream."""
    meter = AnswerMeter(stream=True, keep_text=True)
    start = {"id": "msg_1", "type": "message", "role": "assistant", "content": []}
    start["usage"] = {"input_tokens": 9, "cache_read_input_tokens": 3, "output_tokens": 1}
    meter.feed(anthropic_event("message_start", {"message": start}), 1.0)
    for text in ("Hel", "lo"):
        delta = {"index": 0, "delta": {"type": "text_delta", "text": text}}
        meter.feed(anthropic_event("content_block_delta", delta), 2.0)
    done = {"delta": {"stop_reason": "end_turn"}, "usage": {"output_tokens": 2}}
    meter.feed(anthropic_event("message_delta", done) + anthropic_event("message_stop", {}), 3.0)
    meter.finish()
    assert (meter.tokens_in, meter.tokens_out) == (12, 2)
    assert meter.text == "Hello"


def test_an_anthropic_message_is_counted() -> None:
    meter = AnswerMeter(stream=False, keep_text=True)
    message = {"type": "message", "content": [{"type": "text", "text": "Hi there"}]}
    message["usage"] = {"input_tokens": 4, "cache_creation_input_tokens": 6, "output_tokens": 3}
    meter.feed(json.dumps(message).encode(), 1.0)
    meter.finish()
    assert (meter.tokens_in, meter.tokens_out) == (10, 3)
    assert meter.text == "Hi there"
