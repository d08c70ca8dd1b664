"""Which providers a node's environment holds, and which model names reach them."""

from __future__ import annotations

import pytest

from meshllm.cloud import (
    MAX_UPSTREAM_NAME_CHARS,
    is_provider_model,
    providers_from_env,
    split_model,
)


def test_keys_and_base_urls_come_from_the_sdks_own_variables() -> None:
    env = {
        "OPENAI_API_KEY": "sk-one",
        "OPENAI_BASE_URL": "http://127.0.0.1:9/v1/",
        "GEMINI_API_KEY": "g-two",
        "ANTHROPIC_BASE_URL": "http://unused",  # no key: no provider
    }
    found = providers_from_env(env)
    assert sorted(found) == ["google", "openai"]
    assert found["openai"].base_url == "http://127.0.0.1:9"  # /v1 is the client's path
    assert found["google"].base_url == "https://generativelanguage.googleapis.com"
    assert found["google"].api_key == "g-two"


def test_google_api_key_wins_over_gemini_api_key_as_in_google_genai() -> None:
    found = providers_from_env({"GOOGLE_API_KEY": "first", "GEMINI_API_KEY": "second"})
    assert found["google"].api_key == "first"


def test_an_empty_key_is_no_key() -> None:
    assert providers_from_env({"OPENAI_API_KEY": "  ", "ANTHROPIC_API_KEY": ""}) == {}


def test_a_key_that_cannot_be_a_header_names_its_variable_never_the_key() -> None:
    with pytest.raises(ValueError, match="ANTHROPIC_API_KEY") as caught:
        providers_from_env({"ANTHROPIC_API_KEY": "secret\nInjected: header"})
    assert "secret" not in str(caught.value)


def test_a_key_never_shows_in_repr() -> None:
    provider = providers_from_env({"OPENAI_API_KEY": "sk-hidden"})["openai"]
    assert "sk-hidden" not in repr(provider)


@pytest.mark.parametrize(
    ("model", "split"),
    [
        ("openai:gpt-4o-mini", ("openai", "gpt-4o-mini")),
        ("anthropic:claude-sonnet-4-5@20250929", ("anthropic", "claude-sonnet-4-5@20250929")),
        ("google:models/gemini-2.5-flash", ("google", "gemini-2.5-flash")),
        ("llama3:8b", None),  # an Ollama tag, not a provider
        ("gemma-3-270m", None),
        ("azure:gpt-4o", None),  # not a provider the mesh knows
    ],
)
def test_split_model(model: str, split: tuple[str, str] | None) -> None:
    assert split_model(model) == split
    assert is_provider_model(model) is (split is not None)


@pytest.mark.parametrize(
    "model",
    [
        "google:../../v1/files",  # a path out of models/
        "google:gemini?key=x",
        "google:gemini%2F..",
        "openai:",
        "anthropic: claude",
        "openai:gpt/4",
        "google:" + "g" * (MAX_UPSTREAM_NAME_CHARS + 1),
    ],
)
def test_a_provider_model_must_be_a_plain_model_id(model: str) -> None:
    with pytest.raises(ValueError, match="model id"):
        split_model(model)
