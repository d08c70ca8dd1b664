"""An OpenAI chat completions request read and checked, for the translators that say it
in another provider's API (:mod:`meshllm.surfaces.anthropic`'s reverse direction,
:mod:`meshllm.surfaces.gemini`).  Pure.

Each reader raises ``ValueError`` with a one-line message that names the field
(``messages.2.tool_calls.0``, ``tools.1.function.name``), which the proxy answers as a
400; what a field may hold beyond OpenAI's own rules (a provider's limits) is for the
translator to check.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True, slots=True)
class Image:
    """An ``image_url`` part: a web address, or the bytes of a base64 ``data:`` URL."""

    url: str | None  # http(s): the provider fetches it
    media_type: str = ""  # of the bytes of a data URL
    data: str = ""  # base64
    where: str = ""  # its field path, for a translator's own errors


@dataclass(frozen=True, slots=True)
class ToolCall:
    """One of an assistant message's ``tool_calls``."""

    id: str
    name: str
    arguments: dict  # parsed; arguments a model once garbled are {}
    call: dict  # as the client sent it (a provider's extra fields ride on it)


@dataclass(frozen=True, slots=True)
class FunctionTool:
    """One of the request's ``tools``."""

    name: str
    description: str
    parameters: dict | None  # JSON Schema


ROLES = ("system", "developer", "user", "assistant", "tool")
SYSTEM_ROLES = ("system", "developer")


def messages(body: Any) -> Iterator[tuple[str, dict, str]]:
    """The request's ``messages`` in order, each as ``(role, message, its field path)``;
    raises at the first one that is not an object of a known role."""
    if not isinstance(body, dict):
        raise ValueError("body: a JSON object is required")
    raw = body.get("messages")
    if not isinstance(raw, list) or not raw:
        raise ValueError("messages: a non-empty list is required")
    for i, message in enumerate(raw):
        where = f"messages.{i}"
        if not isinstance(message, dict):
            raise ValueError(f"{where}: an object is required")
        role = message.get("role")
        if role not in ROLES:
            raise ValueError(f"{where}.role: 'system', 'user', 'assistant' or 'tool' is required")
        yield role, message, where


def user_content(content: Any, where: str) -> list[str | Image]:
    """A user message's content: its texts (empty ones left out) and images, in order."""
    if isinstance(content, str):
        return [content] if content else []
    if not isinstance(content, list):
        raise ValueError(f"{where}: a string or a list of parts is required")
    read: list[str | Image] = []
    for j, part in enumerate(content):
        kind, at = part.get("type") if isinstance(part, dict) else None, f"{where}.{j}"
        if kind == "text":
            if not isinstance(part.get("text"), str):
                raise ValueError(f"{at}.text: a string is required")
            read.extend([part["text"]] if part["text"] else [])
        elif kind == "image_url":
            read.append(image(part.get("image_url"), f"{at}.image_url"))
        else:
            raise ValueError(f"{at}: a text or image_url part is required")
    return read


def plain_text(content: Any, where: str) -> str:
    """Content that must be text: a string, or a list of text (or refusal) parts."""
    if isinstance(content, str):
        return content
    if not isinstance(content, list):
        raise ValueError(f"{where}: a string or a list of text parts is required")
    texts = []
    for j, part in enumerate(content):
        if not isinstance(part, dict) or part.get("type") not in ("text", "refusal"):
            raise ValueError(f"{where}.{j}: a text part is required")
        text = part.get(part["type"])
        if not isinstance(text, str):
            raise ValueError(f"{where}.{j}: a string is required")
        texts.append(text)
    return "".join(texts)


def image(image_url: Any, where: str) -> Image:
    """An ``image_url`` object (``where`` names it): an http(s) URL or a base64 data URL."""
    url = image_url.get("url") if isinstance(image_url, dict) else None
    if not isinstance(url, str):
        raise ValueError(f"{where}.url: a string is required")
    if url.startswith(("https://", "http://")):
        return Image(url, where=where)
    header, comma, data = url.partition(",")
    if not header.startswith("data:") or not header.endswith(";base64") or not comma:
        raise ValueError(f"{where}.url: an http(s) URL or a base64 data URL is required")
    media_type = header.removeprefix("data:").split(";", 1)[0]
    if not media_type or not data:
        raise ValueError(f"{where}.url: a data URL with a MIME type and data is required")
    return Image(None, media_type, data, where)


def tool_calls(message: dict, where: str) -> list[ToolCall]:
    """An assistant message's ``tool_calls`` (``where`` names the message)."""
    calls = message.get("tool_calls")
    if calls is not None and not isinstance(calls, list):
        raise ValueError(f"{where}.tool_calls: a list is required")
    read = []
    for k, call in enumerate(calls or ()):
        function = call.get("function") if isinstance(call, dict) else None
        ident = call.get("id") if isinstance(call, dict) else None
        name = function.get("name") if isinstance(function, dict) else None
        if not isinstance(ident, str) or not ident or not isinstance(name, str) or not name:
            raise ValueError(f"{where}.tool_calls.{k}: an id and a function name are required")
        assert isinstance(function, dict) and isinstance(call, dict)
        read.append(ToolCall(ident, name, json_object(function.get("arguments")), call))
    return read


def function_tools(body: dict) -> list[FunctionTool]:
    """The request's ``tools``: function tools only."""
    tools = body.get("tools")
    if tools is not None and not isinstance(tools, list):
        raise ValueError("tools: a list is required")
    read = []
    for i, tool in enumerate(tools or ()):
        function = tool.get("function") if isinstance(tool, dict) else None
        if not isinstance(function, dict) or tool.get("type", "function") != "function":
            raise ValueError(f"tools.{i}: a function tool is required")
        name, parameters = function.get("name"), function.get("parameters")
        if not isinstance(name, str) or not name:
            raise ValueError(f"tools.{i}.function.name: a non-empty string is required")
        if parameters is not None and not isinstance(parameters, dict):
            raise ValueError(f"tools.{i}.function.parameters: an object is required")
        description = function.get("description")
        text = description if isinstance(description, str) else ""
        read.append(FunctionTool(name, text, parameters))
    return read


def tool_choice(body: dict) -> tuple[str, str] | None:
    """``tool_choice`` as ``(mode, function name)``: ``("auto" | "none" | "required",
    "")`` or ``("function", name)``; None when the request names none."""
    choice = body.get("tool_choice")
    if choice is None:
        return None
    if choice in ("auto", "none", "required"):
        return choice, ""
    if isinstance(choice, dict) and isinstance(choice.get("function"), dict):
        name = choice["function"].get("name")
        if not isinstance(name, str) or not name:
            raise ValueError("tool_choice.function.name: a non-empty string is required")
        return "function", name
    raise ValueError("tool_choice: 'auto', 'none', 'required' or a function is required")


def stop_sequences(body: dict) -> list[str] | None:
    """``stop`` as a list (a string is one sequence); None when absent."""
    stop = body.get("stop")
    stops = [stop] if isinstance(stop, str) else stop
    if stops is not None and (
        not isinstance(stops, list) or not all(isinstance(s, str) for s in stops)
    ):
        raise ValueError("stop: a string or a list of strings is required")
    return stops


def json_object(arguments: Any) -> dict:
    """A tool call's ``arguments`` (a JSON text) as an object; anything else, NaN and
    Infinity included (they are not JSON), is {}."""
    if isinstance(arguments, dict):
        return arguments
    if not isinstance(arguments, str):
        return {}
    try:
        parsed = json.loads(arguments, parse_constant=_not_json)
    except (ValueError, RecursionError):
        return {}
    return parsed if isinstance(parsed, dict) else {}


def _not_json(constant: str) -> Any:
    raise ValueError(f"{constant} is not JSON")


def is_int(value: Any) -> bool:
    """An int that is not a bool."""
    return isinstance(value, int) and not isinstance(value, bool)


def is_number(value: Any) -> bool:
    """A finite int or float that is not a bool."""
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)
