"""meshllm: pool many machines' LLMs into one OpenAI-compatible endpoint."""

__version__ = "0.1.0"
