"""Cloud models by prefix (``openai:``, ``anthropic:``, ``google:``), served through a
node that holds the provider's key (DESIGN.md §7b).

:mod:`meshllm.cloud.providers` (pure: names, keys from the environment) is what the
rest of the mesh reads; :mod:`meshllm.cloud.client` forwards requests to the APIs.
"""

from meshllm.cloud.providers import (
    KINDS,
    PROVIDER_NAMES,
    Provider,
    is_provider_model,
    providers_from_env,
    split_model,
)

__all__ = [
    "KINDS",
    "PROVIDER_NAMES",
    "Provider",
    "is_provider_model",
    "providers_from_env",
    "split_model",
]
