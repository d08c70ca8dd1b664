"""Test helpers shipped with meshllm: a fake OpenAI backend for tests and benchmarks."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from meshllm.testing.fake_backend import FakeBackend

__all__ = ["FakeBackend"]


def __getattr__(name: str) -> Any:
    # Lazy, so `python -m meshllm.testing.fake_backend` does not import the module twice.
    if name == "FakeBackend":
        from meshllm.testing.fake_backend import FakeBackend

        return FakeBackend
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
