"""The fast read of a plain content delta agrees with a whole parse, or declines."""

from __future__ import annotations

import json

from hypothesis import given
from hypothesis import strategies as st

from meshllm.surfaces.sse import EventBuffer, plain_content

HEAD = '{"choices":[{"finish_reason":null,"index":0,"delta":{"content":'
TAIL = '}}],"created":1,"id":"chatcmpl-x","model":"m","object":"chat.completion.chunk"}'


@given(st.text())
def test_it_reads_what_a_parse_reads(text: str) -> None:
    for ensure_ascii in (True, False):
        payload = (HEAD + json.dumps(text, ensure_ascii=ensure_ascii) + TAIL).encode()
        assert plain_content(payload) == json.loads(payload)["choices"][0]["delta"]["content"]


def test_it_declines_every_event_that_says_more() -> None:
    for payload in (
        HEAD.replace("null", '"stop"') + '"x"' + TAIL,  # the last: a finish to read
        '{"choices":[{"finish_reason":null,"index":0,"delta":{"role":"assistant",'
        '"content":null}}]}',
        HEAD + '"x","tool_calls":[]' + TAIL,
        '{"choices":[{"index":0,"delta":{"content":"x"},"finish_reason":null}]}',  # OpenAI's
        '{"choices":[],"usage":{"prompt_tokens":3}}',
        '{"error":{"message":"boom"}}',
        HEAD + '"\\ud800"' + TAIL,  # a lone surrogate: the whole parse decides
    ):
        parsed = plain_content(payload.encode())
        assert parsed is None or parsed == json.loads(payload)["choices"][0]["delta"]["content"]
    assert plain_content((HEAD + '"x"' + TAIL).encode()[:-40] + b"\xff") == "x"  # prefix only
    assert (
        plain_content(b'{"choices":[{"finish_reason":null,"index":0,"delta":{"content":"\xff"}}]}')
        is None
    )


def test_a_crlf_split_between_two_pieces_still_ends_the_event() -> None:
    buffer = EventBuffer(1024)
    assert buffer.events(b"data: 1\r\n\r") == []  # its last LF is in the next piece
    assert buffer.events(b"\ndata: 2\r\n\r\n") == [b"data: 1", b"data: 2"]
