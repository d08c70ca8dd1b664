"""The ``meshllm`` command: run a node, or talk to the one running on ``--port``.

Every node flag also reads ``MESHLLM_<FLAG>`` from the environment (``--probe-interval``
→ ``MESHLLM_PROBE_INTERVAL``; repeatable flags take a comma-separated list).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import os
import sys
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

from meshllm import __version__
from meshllm.config import DEFAULT_HTTP_PORT, Config
from meshllm.errors import MeshError

_DEFAULTS = Config()
SUBCOMMANDS = ("token", "status", "models", "drop", "console")

EPILOG = """\
examples:
  meshllm --model gemma-3-270m-q4_k_m       seed a mesh serving the default model
  meshllm --join mesh1-…                    join; the mesh picks the model this node serves
  meshllm --client --join mesh1-… --port 9555   lite client: proxy only
  meshllm status | token | models | drop MODEL | console   talk to the local node
"""


def _env(name: str, default: Any = None) -> Any:
    return os.environ.get(f"MESHLLM_{name.upper().replace('-', '_')}", default)


def _env_list(name: str) -> list[str]:
    value = _env(name)
    return [v.strip() for v in value.split(",") if v.strip()] if value else []


def _env_flag(name: str) -> bool:
    return str(_env(name, "")).lower() in ("1", "true", "yes", "on")


def node_parser() -> argparse.ArgumentParser:
    """Flags of ``meshllm`` (running a node)."""
    p = argparse.ArgumentParser(
        prog="meshllm",
        description="Pool many machines' LLMs into one OpenAI-compatible endpoint.",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--version", action="version", version=f"meshllm {__version__}")
    serve = p.add_argument_group("serving")
    serve.add_argument(
        "--model",
        action="append",
        dest="models",
        metavar="NAME|PATH",
        default=None,
        help="model to serve (repeat: serve the first that fits, the others seed the mesh catalog)",
    )
    serve.add_argument(
        "--endpoint",
        action="append",
        dest="endpoints",
        metavar="URL",
        default=None,
        help="front an existing OpenAI-compatible or Ollama server",
    )
    serve.add_argument(
        "--models-dir",
        type=Path,
        default=Path(_env("models_dir", "~/.models")),
        help="where GGUF models live (default ~/.models)",
    )
    serve.add_argument(
        "--llama-server",
        default=_env("llama_server"),
        metavar="PATH",
        help="llama-server binary (default: env, cache, then PATH)",
    )
    serve.add_argument(
        "--split",
        action="store_true",
        default=_env_flag("split"),
        help="split a model across nodes (llama.cpp RPC; not built yet)",
    )
    serve.add_argument(
        "--max-tokens-default",
        type=int,
        default=int(_env("max_tokens_default", _DEFAULTS.max_tokens_default)),
        metavar="N",
        help="tokens generated for a request without max_tokens; 0: no cap "
        f"(default {_DEFAULTS.max_tokens_default})",
    )
    serve.add_argument(
        "--load-timeout",
        type=float,
        default=float(_env("load_timeout", _DEFAULTS.load_timeout)),
        metavar="S",
        help="seconds a request waits for its model to start or arrive "
        f"(default {_DEFAULTS.load_timeout:g})",
    )
    serve.add_argument(
        "--no-install",
        action="store_true",
        default=_env_flag("no_install"),
        help="never build llama-server or install the default model",
    )
    mesh = p.add_argument_group("mesh")
    mesh.add_argument(
        "--join",
        default=_env("join"),
        metavar="TOKEN",
        help="join the mesh of this token (from `meshllm token`)",
    )
    mesh.add_argument(
        "--client",
        action="store_true",
        default=_env_flag("client"),
        help="lite client: ephemeral identity, serves nothing",
    )
    mesh.add_argument(
        "--bind",
        default=_env("bind", "0.0.0.0:9338"),
        metavar="HOST:PORT",
        help="QUIC address (UDP; model copies use TCP on the same port)",
    )
    mesh.add_argument(
        "--advertise",
        action="append",
        default=None,
        metavar="HOST:PORT",
        help="address peers should dial, if not the bound one",
    )
    mesh.add_argument(
        "--probe-interval",
        type=float,
        default=float(_env("probe_interval", 15.0)),
        metavar="S",
        help="seconds between health probes of each peer (default 15)",
    )
    mesh.add_argument(
        "--probe-timeout",
        type=float,
        default=float(_env("probe_timeout", 5.0)),
        metavar="S",
        help="seconds without an answer before a peer is dead (default 5)",
    )
    mesh.add_argument(
        "--gossip-interval",
        type=float,
        default=float(_env("gossip_interval", 5.0)),
        metavar="S",
        help="seconds between anti-entropy rounds (default 5)",
    )
    local = p.add_argument_group("local")
    _port_argument(local)
    local.add_argument(
        "--listen-all",
        action="store_true",
        default=_env_flag("listen_all"),
        help="expose the HTTP port on every interface, not just 127.0.0.1",
    )
    _state_dir_argument(local)
    local.add_argument("-v", "--verbose", action="count", default=0, help="more logging")
    return p


def _port_argument(p: argparse._ActionsContainer) -> None:
    p.add_argument(
        "--port",
        type=int,
        default=int(_env("port", DEFAULT_HTTP_PORT)),
        help=f"local HTTP port: proxy and node API (default {DEFAULT_HTTP_PORT})",
    )


def _state_dir_argument(p: argparse._ActionsContainer) -> None:
    p.add_argument(
        "--state-dir",
        type=Path,
        default=Path(_env("state_dir", "~/.meshllm")),
        help="node key, mesh credentials, admin token (default ~/.meshllm)",
    )


def config_from_args(args: argparse.Namespace) -> Config:
    """Flags (already defaulted from the environment) → :class:`Config`."""
    return Config(
        port=args.port,
        listen_all=args.listen_all,
        bind=args.bind,
        advertise=args.advertise or _env_list("advertise"),
        state_dir=args.state_dir.expanduser(),
        models_dir=args.models_dir.expanduser(),
        join=args.join,
        client=args.client,
        models=args.models or _env_list("model"),
        endpoints=args.endpoints or _env_list("endpoint"),
        llama_server=args.llama_server,
        split=args.split,
        probe_interval=args.probe_interval,
        probe_timeout=args.probe_timeout,
        gossip_interval=args.gossip_interval,
        auto_install=not args.no_install,
        max_tokens_default=args.max_tokens_default,
        load_timeout=args.load_timeout,
    )


def run_node(argv: list[str]) -> int:
    args = node_parser().parse_args(argv)
    level = logging.WARNING - 10 * min(args.verbose, 2)
    logging.basicConfig(level=level, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    logging.getLogger("quic").setLevel(logging.WARNING)
    from meshllm.node import Node

    try:
        config = config_from_args(args)
        _use_uvloop()

        async def main() -> None:
            await Node(config).run()

        asyncio.run(main())
    except MeshError as exc:
        print(f"meshllm: {exc}", file=sys.stderr)
        return 2
    except OSError as exc:
        print(f"meshllm: {exc}", file=sys.stderr)
        return 1
    return 0


def _use_uvloop() -> None:
    try:
        import uvloop
    except ImportError:
        return
    asyncio.set_event_loop_policy(uvloop.EventLoopPolicy())


# subcommands: talk to the running node over HTTP


def _request(port: int, path: str, body: dict | None = None, token: str | None = None) -> Any:
    url = f"http://127.0.0.1:{port}{path}"
    data = json.dumps(body).encode() if body is not None else None
    req = urllib.request.Request(url, data=data, method="POST" if data else "GET")
    req.add_header("Content-Type", "application/json")
    if token:
        req.add_header("Authorization", f"Bearer {token}")
    try:
        with urllib.request.urlopen(req, timeout=30) as resp:
            return json.loads(resp.read())
    except urllib.error.HTTPError as exc:
        try:
            message = json.loads(exc.read())["error"]["message"]
        except (ValueError, KeyError, TypeError):
            message = str(exc)
        raise SystemExit(f"meshllm: {message}") from None
    except (urllib.error.URLError, ConnectionError) as exc:
        raise SystemExit(
            f"meshllm: no node answers on 127.0.0.1:{port} ({getattr(exc, 'reason', exc)}); "
            "start one with `meshllm --model NAME` or `meshllm --join TOKEN`"
        ) from None


def _format_bytes(n: int | None) -> str:
    if not n:
        return "-"
    for unit in ("B", "KB", "MB", "GB", "TB"):
        if n < 1000:
            return f"{n:.0f} {unit}"
        n /= 1000  # type: ignore[assignment]
    return f"{n:.0f} PB"


def print_status(status: dict) -> None:
    """Human-readable ``meshllm status``."""
    serving = ", ".join(f"{m} ({s})" for m, s in status["serving"].items()) or "nothing"
    print(f"node {status['node_id']}  {status['role']}  serving {serving}")
    memory = status.get("memory_bytes")
    if memory is not None:
        kind = "VRAM" if status.get("memory_kind") == "vram" else "RAM"
        print(f"memory for models {_format_bytes(memory)} of {kind}")
    if status.get("idle_reason"):
        print(f"serves nothing yet: {status['idle_reason']}")
    print(f"mesh {status['mesh_id']}  {len(status['peers'])} peer(s)")
    if status["peers"]:
        print(f"\n{'NODE':<18}{'ROLE':<8}{'ADDRESS':<24}{'RTT':>9}  SERVING")
        for p in status["peers"]:
            rtt = f"{p['rtt_ms']:.1f} ms" if p.get("rtt_ms") is not None else "-"
            served = ", ".join(p["serving"]) or "-"
            addr = p["addrs"][0] if p["addrs"] else "-"
            print(f"{p['node_id']:<18}{p['role']:<8}{addr:<24}{rtt:>9}  {served}")
    if status["catalog"]:
        print(f"\n{'MODEL':<36}{'STATE':<7}{'SIZE':>8}  NODES")
        for m in status["catalog"]:
            state = "warm" if m["warm"] else "cold"
            print(
                f"{m['model']:<36}{state:<7}{_format_bytes(m.get('size_bytes')):>8}  "
                f"{len(m['nodes'])}"
            )
    for node_id, model, cause in failures(status):
        print(f"\nfailed: {model} on {node_id}: {cause}")


def failures(status: dict) -> list[tuple[str, str, str]]:
    """``(node id, model, cause)`` of every model a node of ``status`` gave up serving."""
    nodes = [status, *status.get("peers", [])]
    return [
        (node["node_id"], model, cause)
        for node in nodes
        for model, cause in sorted((node.get("failures") or {}).items())
    ]


def run_subcommand(name: str, argv: list[str]) -> int:
    p = argparse.ArgumentParser(prog=f"meshllm {name}")
    _port_argument(p)
    if name == "status":
        p.add_argument("--json", action="store_true", help="print the raw /api/status JSON")
    if name == "drop":
        p.add_argument("model", help="model to stop serving, wherever it is served")
    if name in ("drop", "console"):
        _state_dir_argument(p)
    args = p.parse_args(argv)
    if name == "token":
        print(_request(args.port, "/api/status")["token"])
    elif name == "status":
        status = _request(args.port, "/api/status")
        if args.json:
            print(json.dumps(status, indent=2))
        else:
            print_status(status)
    elif name == "models":
        status = _request(args.port, "/api/status")
        failed: dict[str, list[str]] = {}
        for node_id, model, cause in failures(status):
            failed.setdefault(model, []).append(f"{node_id}: {cause.splitlines()[0]}")
        for m in status["catalog"]:
            state = "warm" if m["warm"] else "failed" if m["model"] in failed else "cold"
            line = f"{m['model']:<40}{state:<7}{len(m['nodes'])} node(s)"
            print("  ".join([line, *failed.get(m["model"], [])]))
    elif name == "drop":
        token_file = args.state_dir.expanduser() / "admin_token"
        if not token_file.exists():
            raise SystemExit(f"meshllm: no admin token at {token_file}; is --state-dir right?")
        result = _request(
            args.port, "/api/drop", {"model": args.model}, token=token_file.read_text().strip()
        )
        print(f"dropped {result['dropped']} on {', '.join(result['nodes']) or 'no node'}")
    elif name == "console":
        from meshllm.console import run_console

        return run_console(args.port, args.state_dir.expanduser())
    return 0


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``meshllm`` console script."""
    argv = sys.argv[1:] if argv is None else argv
    if argv and argv[0] in SUBCOMMANDS:
        return run_subcommand(argv[0], argv[1:])
    return run_node(argv)
