"""Node configuration: one dataclass, filled from flags > ``MESHLLM_*`` env > defaults.

Every setting is declared once, here, with :func:`setting`: its default, what it
means, and how the command line spells it.  ``meshllm.cli`` generates the flags
(and their environment variables) from these declarations, so a default or a
description is never written twice.
"""

from __future__ import annotations

from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

DEFAULT_HTTP_PORT = 9337
DEFAULT_QUIC_PORT = 9338


def setting(
    default: Any,
    doc: str,
    *,
    group: str,
    flag: str | None = None,
    metavar: str | None = None,
) -> Any:
    """A Config field: ``default`` (a list default is copied per instance), ``doc`` (also
    the flag's help), the ``--help`` group, and the flag when it is not ``--field-name``
    (a repeatable list flag is singular: ``--model``; a true-by-default switch is
    spelled by its negation: ``--no-install``)."""
    meta = {"doc": doc, "group": group, "flag": flag, "metavar": metavar}
    if isinstance(default, list):
        return field(default_factory=lambda: list(default), metadata=meta)
    return field(default=default, metadata=meta)


@dataclass
class Config:
    """Everything a node needs to start."""

    # serving
    models: list[str] = setting(
        [],
        "model to serve, by name or path (repeat: the first that fits is loaded at start, the "
        "others seed the mesh catalog and load on their first request)",
        group="serving", flag="--model", metavar="NAME|PATH",
    )  # fmt: skip
    pins: list[str] = setting(
        [],
        "model to load at start and keep loaded, by name or path (repeatable)",
        group="pool", flag="--pin", metavar="NAME|PATH",
    )  # fmt: skip
    ttl: str = setting(
        "15m",
        "how long an idle model stays loaded (90s, 15m, 1h; 0: never unloaded for idleness); "
        "each request extends it, a request's keep_alive sets it",
        group="pool", metavar="DURATION",
    )  # fmt: skip
    max_loaded: int = setting(
        0, "models loaded at once on this node; 0: no limit", group="pool", metavar="N"
    )
    memory_budget: str = setting(
        "auto",
        "memory the loaded models may take together (bytes, 8G, 8GiB); auto: VRAM, or RAM "
        "on a CPU-only node, less a reserve",
        group="pool", metavar="BYTES|auto",
    )  # fmt: skip
    model_ports: str = setting(
        "",
        "TCP ports of the model servers, START-END on 127.0.0.1 (default: any free port)",
        group="pool", metavar="START-END",
    )  # fmt: skip
    model_config: Path | None = setting(
        None,
        'per-model settings, TOML: [models."NAME"] ttl = "1h", pin = true',
        group="pool", metavar="FILE",
    )  # fmt: skip
    endpoints: list[str] = setting(
        [], "front an existing OpenAI-compatible or Ollama server (repeatable)",
        group="serving", flag="--endpoint", metavar="URL",
    )  # fmt: skip
    auto_endpoints: bool = setting(
        True,
        "front an Ollama running on this machine (127.0.0.1:11434) when one answers",
        group="serving", flag="--no-auto-endpoints",
    )  # fmt: skip
    endpoint_poll_interval: float = setting(
        10.0,
        "seconds between health polls of each endpoint (3 failed in a row: down; back "
        "after 2 good ones); its models are discovered again every 3 polls",
        group="serving", metavar="S",
    )  # fmt: skip
    models_dir: Path = setting(
        Path("~/.models"), "where GGUF models are found and fetched to", group="serving"
    )
    llama_server: str | None = setting(
        None,
        "llama-server binary (default: $MESHLLM_LLAMA_SERVER, the proved build, then PATH)",
        group="serving", metavar="PATH",
    )  # fmt: skip
    split: bool = setting(
        False, "split a model across nodes (llama.cpp RPC; not built yet)", group="serving"
    )
    # The default model is a base model that never stops by itself: 1,024 tokens end
    # within half a minute on 2 cores (about 44 tokens/s).
    max_tokens_default: int = setting(
        1024,
        "tokens generated for a request without max_tokens (llama-server -n); 0: no cap",
        group="serving", metavar="N",
    )  # fmt: skip
    embeddings: bool = setting(
        False,
        "also answer embeddings from generative models (llama-server --embeddings --pooling "
        "mean; chat goes on beside it); embedding and rerank GGUFs always answer theirs",
        group="serving",
    )  # fmt: skip
    cloud: bool = setting(
        True,
        "serve cloud models by prefix (openai:, anthropic:, google:) to the mesh with the "
        "provider keys in this node's environment (OPENAI_API_KEY, ANTHROPIC_API_KEY, "
        "GOOGLE_API_KEY; base URLs from OPENAI_BASE_URL, ANTHROPIC_BASE_URL, "
        "GOOGLE_GEMINI_BASE_URL)",
        group="serving", flag="--no-cloud",
    )  # fmt: skip
    cloud_timeout: float = setting(
        600.0,
        "seconds of silence a cloud provider's answer may have between two reads (a "
        "non-streamed answer is silent until complete)",
        group="serving", metavar="SECONDS",
    )  # fmt: skip
    # A small model loads in seconds, a large one or a copy from a peer in a minute or two.
    load_timeout: float = setting(
        120.0,
        "seconds a request for a model that is starting or being fetched somewhere in the "
        "mesh waits for it, before a 503 with Retry-After",
        group="serving", metavar="S",
    )  # fmt: skip
    auto_install: bool = setting(
        True,
        "build llama-server or install the default model when missing",
        group="serving", flag="--no-install",
    )  # fmt: skip

    # mesh
    join: str | None = setting(
        None,
        "join the mesh of this token (from `meshllm token`); none seeds a new mesh "
        "(or rejoins the saved one)",
        group="mesh", metavar="TOKEN",
    )  # fmt: skip
    client: bool = setting(
        False, "lite client: ephemeral identity, serves nothing, never elected", group="mesh"
    )
    bind: str = setting(
        f"0.0.0.0:{DEFAULT_QUIC_PORT}",
        "QUIC (UDP) address; model copies use TCP on the same port number",
        group="mesh", metavar="HOST:PORT",
    )  # fmt: skip
    advertise: list[str] = setting(
        [], "address peers should dial, if not the bound one (repeatable)",
        group="mesh", metavar="HOST:PORT",
    )  # fmt: skip
    probe_interval: float = setting(
        15.0, "seconds between health probes of each peer", group="mesh", metavar="S"
    )
    probe_timeout: float = setting(
        5.0,
        "seconds without a pong before a peer is suspected (then asked about through others; "
        "dead when that suspicion times out unrefuted)",
        group="mesh", metavar="S",
    )  # fmt: skip
    gossip_interval: float = setting(
        5.0,
        "seconds between anti-entropy digests (changes are pushed at once anyway)",
        group="mesh", metavar="S",
    )  # fmt: skip
    reconnect_interval: float = setting(
        30.0,
        "seconds between redials of the seeds and of removed peers' last addresses, so a "
        "split mesh heals once the network does",
        group="mesh", metavar="S",
    )  # fmt: skip
    resources_interval: float = setting(
        5.0,
        "seconds between this node's live resource reports (CPU, RAM, GPUs) to its peers; "
        "a node's figures are shown stale after 3 missed reports and unknown after 12",
        group="mesh", metavar="S",
    )  # fmt: skip
    mdns: bool = setting(
        True,
        "advertise this mesh on the LAN over mDNS (mesh id, node id, QUIC port; never the "
        "secret), and look there for the mesh when the join token's addresses answer not",
        group="mesh", flag="--no-mdns",
    )  # fmt: skip
    max_peers: int = setting(
        256, "peers this node tracks at most (announcements of more are refused)",
        group="mesh", metavar="N",
    )  # fmt: skip

    # local
    port: int = setting(
        DEFAULT_HTTP_PORT, "local HTTP port: the OpenAI-compatible proxy and the node API",
        group="local",
    )  # fmt: skip
    listen_all: bool = setting(
        False, "expose the HTTP port on every interface, not just 127.0.0.1", group="local"
    )
    # Any other Host gets 421, which defeats DNS rebinding (meshllm.proxy.guard).
    allowed_hosts: list[str] = setting(
        [],
        "a Host name that reaches this node, besides localhost and loopback addresses (and, "
        "with --listen-all, the machine's interface addresses); repeatable",
        group="local", flag="--allowed-host", metavar="NAME",
    )  # fmt: skip
    cors_origins: list[str] = setting(
        [],
        "a web origin (scheme://host[:port]) whose pages may call the HTTP API; repeatable; "
        "none by default: a request with any Origin gets 403",
        group="local", flag="--cors-origin", metavar="ORIGIN",
    )  # fmt: skip
    # access and records (DESIGN.md §7b)
    usage_interval: float = setting(
        2.0,
        "seconds between this node's reports of its API keys' usage to its peers: rate "
        "limits hold mesh-wide to within what the other nodes admit in this long",
        group="access", metavar="SECONDS",
    )  # fmt: skip
    history_days: float = setting(
        7.0, "days of request history this node keeps", group="records", metavar="DAYS"
    )
    log_prompts: bool = setting(
        False,
        "keep each request's prompt and answer in the history (off: only its figures)",
        group="records",
    )  # fmt: skip
    price_file: Path | None = setting(
        None,
        "a TOML price table ([models.\"NAME\"] input_per_mtok, output_per_mtok, in USD) "
        "over the one shipped",
        group="records", metavar="FILE",
    )  # fmt: skip
    price_kwh: float = setting(
        0.30, "price of a kWh, to cost local models by the energy they use", group="records",
        metavar="USD",
    )  # fmt: skip
    cpu_watts: float = setting(
        65.0,
        "power this machine draws serving a model without a GPU (with NVIDIA GPUs their "
        "measured power is used)",
        group="records", metavar="WATTS",
    )  # fmt: skip
    history_fanout_timeout: float = setting(
        3.0,
        "seconds a mesh-wide history or usage query waits for each peer (one that does "
        "not answer is named in the reply)",
        group="records", metavar="SECONDS",
    )  # fmt: skip
    state_dir: Path = setting(
        Path("~/.meshllm"),
        "node key, mesh credentials, owner key, admin token, API keys, history, logs",
        group="local",
    )  # fmt: skip

    def __post_init__(self) -> None:
        for f in fields(self):
            value = getattr(self, f.name)
            if isinstance(value, Path):
                setattr(self, f.name, value.expanduser())


def default(name: str) -> Any:
    """The default of Config field ``name``: for parts that take the setting as a
    parameter, so that the value is still written only here."""
    f = next(f for f in fields(Config) if f.name == name)
    return f.default_factory() if callable(f.default_factory) else f.default
