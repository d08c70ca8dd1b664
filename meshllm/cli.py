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
import re
import sys
import typing
import urllib.error
import urllib.parse
import urllib.request
from dataclasses import Field, fields
from pathlib import Path
from typing import Any

from meshllm import __version__
from meshllm.cli_text import print_endpoints, print_models, print_status
from meshllm.config import Config
from meshllm.errors import MeshError
from meshllm.local_api import admin_token, local_request
from meshllm.paths import StatePaths

POOL_COMMANDS = ("load", "unload", "pin", "unpin", "extend-ttl")  # pool_commands.ACTIONS
FLEET_COMMANDS = ("fleet", "endpoints", "discover")
RECORDS_COMMANDS = ("keys", "history", "usage")
SUBCOMMANDS = (
    "token", "status", "models", "drop", "console", "dashboard", "owner",
    *POOL_COMMANDS, *FLEET_COMMANDS, *RECORDS_COMMANDS,
)  # fmt: skip

EPILOG = """\
examples:
  meshllm --model gemma-3-270m-q4_k_m       seed a mesh serving the default model
  meshllm --join mesh1-…                    join; the mesh picks the model this node serves
  meshllm --client --join mesh1-… --port 9555   lite client: proxy only
  meshllm status | token | models | drop MODEL | console   talk to the local node
  meshllm load | unload | pin | unpin MODEL [--node ID]   the model pool, mesh-wide
  meshllm extend-ttl MODEL SECONDS [--node ID]            keep a loaded model longer
  meshllm fleet | endpoints ls | endpoints add URL | endpoints rm ID   the fleet
  meshllm discover                          meshes advertised on this LAN (mDNS)
  meshllm keys create --scope inference [--rpm N] | keys ls | keys revoke ID   API keys
  meshllm history --since 1h [--model M] [--format table|json|csv]   requests, mesh-wide
  meshllm usage --since 7d                  requests, tokens and cost per key and model
  meshllm owner export | import KEY         move the mesh owner key to another admin machine
"""


def _env(name: str) -> str | None:
    return os.environ.get(f"MESHLLM_{name.upper().replace('-', '_')}")


_TRUE = ("1", "true", "yes", "on")
_FIELDS = {f.name: f for f in fields(Config)}
_TYPES = typing.get_type_hints(Config)
_GROUPS = ("serving", "pool", "mesh", "local", "access", "records")


def _flag(f: Field[Any]) -> str:
    return f.metadata.get("flag") or "--" + f.name.replace("_", "-")


def add_setting(parser: argparse._ActionsContainer, name: str) -> None:
    """The flag of Config field ``name``, defaulting to ``MESHLLM_<FLAG>``, then to the
    field's default: generated from the field's declaration in ``meshllm.config``."""
    f = _FIELDS[name]
    flag, kind, doc = _flag(f), _TYPES[name], f.metadata["doc"]
    env = _env(flag.removeprefix("--"))
    options: dict[str, Any] = {"dest": name}
    if f.metadata.get("metavar"):
        options["metavar"] = f.metadata["metavar"]
    if kind is bool:
        negated = flag.startswith("--no-")
        on = env is not None and env.lower() in _TRUE
        parser.add_argument(
            flag,
            dest=name,
            action="store_false" if negated else "store_true",
            default=(not on) if negated else on,
            help=f"do not {doc}" if negated else doc,
        )
        return
    if typing.get_origin(kind) is list:
        items = [v.strip() for v in env.split(",") if v.strip()] if env else None
        parser.add_argument(flag, action="append", default=items, help=doc, **options)
        return
    scalar = next((t for t in typing.get_args(kind) if t is not type(None)), kind)
    default = f.default if env is None else scalar(env)
    shown = f" (default {default:g})" if isinstance(default, float) else f" (default {default})"
    help_text = doc + ("" if default in (None, "") else shown)
    parser.add_argument(flag, type=scalar, default=default, help=help_text, **options)


def node_parser() -> argparse.ArgumentParser:
    """Flags of ``meshllm`` (running a node), one per Config field."""
    p = argparse.ArgumentParser(
        prog="meshllm",
        description="Pool many machines' LLMs into one OpenAI-compatible endpoint.",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--version", action="version", version=f"meshllm {__version__}")
    groups = {name: p.add_argument_group(name) for name in _GROUPS}
    for f in fields(Config):
        add_setting(groups[f.metadata["group"]], f.name)
    groups["local"].add_argument("-v", "--verbose", action="count", default=0, help="more logging")
    return p


def config_from_args(args: argparse.Namespace) -> Config:
    """Flags (already defaulted from the environment) → :class:`Config`; raises
    ``ConfigError`` for an ``--allowed-host`` or ``--cors-origin`` that is not one."""
    from meshllm.proxy.guard import GuardSettings

    values = {name: getattr(args, name) for name in _FIELDS}
    config = Config(**{k: v for k, v in values.items() if v is not None})  # None: the default
    GuardSettings.create(config.allowed_hosts, config.cors_origins)  # check them now
    return config


def run_node(argv: list[str]) -> int:
    args = node_parser().parse_args(argv)
    level = logging.WARNING - 10 * min(args.verbose, 2)
    logging.basicConfig(level=level, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    logging.getLogger("quic").setLevel(logging.WARNING)
    import prometheus_client

    from meshllm.node import Node

    # This process is one node: its /metrics needs no `_created` twin of every series.
    prometheus_client.disable_created_metrics()

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


# subcommands: talk to the running node over HTTP (their text in cli_text.py)


_OWNER_KEY_TEXT = re.compile(r"[A-Za-z0-9_-]{43}")  # OwnerKey.text: base64url of 32 bytes


def _key_as_positional(argv: list[str]) -> list[str]:
    """``owner import KEY ...`` with ``--`` before KEY: an exported key is base64url and
    starts with "-" one time in 64, which argparse would take for an option."""
    if argv[:1] == ["import"] and len(argv) > 1 and _OWNER_KEY_TEXT.fullmatch(argv[1]):
        return ["import", *argv[2:], "--", argv[1]]
    return argv


def run_owner(argv: list[str]) -> int:
    """``meshllm owner export|import KEY``: move the mesh owner key between admin machines
    (files only: no node needs to run)."""
    from meshllm.errors import ConfigError
    from meshllm.join_token import MeshCredentials
    from meshllm.owner import OwnerKey

    p = argparse.ArgumentParser(
        prog="meshllm owner",
        description="The mesh owner key commands the mesh (drop a model on any node); the node "
        "that seeded the mesh holds it.  Members without it use the mesh but cannot command it.",
    )
    actions = p.add_subparsers(dest="action", required=True)
    export = actions.add_parser("export", help="print the owner key (a secret), one line")
    add_setting(export, "state_dir")
    imp = actions.add_parser("import", help="install an owner key from `meshllm owner export`")
    imp.add_argument("key", metavar="KEY", help="the exported key, or - to read it from stdin")
    add_setting(imp, "state_dir")
    args = p.parse_args(_key_as_positional(argv))
    state_dir = args.state_dir.expanduser()
    path = StatePaths(state_dir).owner_key
    try:
        creds = MeshCredentials.load(state_dir)
        if args.action == "export":
            key = OwnerKey.load(state_dir)
            if key is None:
                raise SystemExit(
                    f"meshllm: no owner key at {path}: only the node that seeded the mesh, "
                    "or a machine it was imported to, holds it"
                )
            if creds is not None and key.public_key != creds.owner:
                raise SystemExit(f"meshllm: the owner key at {path} is not mesh {creds.mesh_id}'s")
            print(
                "meshllm: this is the mesh owner key, a secret: whoever holds it can stop any "
                "model in the mesh",
                file=sys.stderr,
            )
            print(key.text)
        else:
            key = OwnerKey.from_text(sys.stdin.readline() if args.key == "-" else args.key)
            if creds is None:
                raise SystemExit(
                    f"meshllm: no mesh credentials in {state_dir}: run a node of the mesh "
                    "with this --state-dir first (meshllm --join TOKEN)"
                )
            if key.public_key != creds.owner:
                raise SystemExit(f"meshllm: that key is not the owner key of mesh {creds.mesh_id}")
            key.save(state_dir)
            print(f"owner key of mesh {creds.mesh_id} saved to {path}")
    except ConfigError as exc:
        print(f"meshllm: {exc}", file=sys.stderr)
        return 2
    return 0


def run_endpoints(argv: list[str]) -> int:
    """``meshllm endpoints ls | add URL [--kind K] [--name N] [--api-key-file F] [--node ID]
    | rm ID``."""
    p = argparse.ArgumentParser(prog="meshllm endpoints")
    actions = p.add_subparsers(dest="action", required=True)
    ls = actions.add_parser("ls", help="every node's endpoints")
    ls.add_argument("--refresh", action="store_true", help="poll this node's endpoints first")
    add = actions.add_parser("add", help="front an OpenAI-compatible or Ollama server")
    add.add_argument("url", help="its base URL, e.g. http://10.0.0.5:11434")
    add.add_argument("--kind", choices=("auto", "openai", "ollama"), default="auto")
    add.add_argument("--name", help="a name to show for it")
    add.add_argument(
        "--api-key-file", type=Path, help="a file holding its API key (never on the command line)"
    )
    add.add_argument("--node", metavar="ID", help="the node to front it (needs the owner key)")
    rm = actions.add_parser("rm", help="stop fronting an endpoint, after its requests")
    rm.add_argument("id", help="its id, from `meshllm endpoints ls`")
    for sub in (ls, add, rm):
        add_setting(sub, "port")
        add_setting(sub, "state_dir")
    args = p.parse_args(argv)
    if args.action == "ls":
        path = "/api/endpoints?refresh=1" if args.refresh else "/api/endpoints"
        print_endpoints(local_request(args.port, path)["endpoints"])
        return 0
    token = admin_token(args.state_dir)
    if args.action == "rm":
        result = local_request(
            args.port, f"/api/endpoints/{urllib.parse.quote(args.id)}", token=token, method="DELETE"
        )
        print(f"removed {result['removed']} from {result['node_id']}")
        return 0
    body: dict[str, Any] = {"url": args.url, "kind": args.kind}
    if args.name:
        body["name"] = args.name
    if args.node:
        body["node"] = args.node
    if args.api_key_file:
        body["api_key"] = args.api_key_file.expanduser().read_text().strip()
    record = local_request(args.port, "/api/endpoints", body, token=token)["endpoint"]
    print(f"added {record['id']} ({record['url']}) on {record['node_id']}")
    return 0


def _port_and_state_dir(parser: argparse.ArgumentParser) -> None:
    add_setting(parser, "port")
    add_setting(parser, "state_dir")


def run_subcommand(name: str, argv: list[str]) -> int:
    if name == "owner":
        return run_owner(argv)
    if name == "endpoints":
        return run_endpoints(argv)
    if name in RECORDS_COMMANDS:
        from meshllm import cli_records

        run = {"keys": cli_records.run_keys, "history": cli_records.run_history}
        return run.get(name, cli_records.run_usage)(argv, _port_and_state_dir)
    p = argparse.ArgumentParser(prog=f"meshllm {name}")
    add_setting(p, "port")
    if name == "discover":
        p.add_argument("--timeout", type=float, default=3.0, help="seconds to listen")
    if name in ("status", "models", "fleet"):
        what = {"status": "the raw /api/status", "models": "the pool view's"}.get(name, "the")
        p.add_argument("--json", action="store_true", help=f"print {what} JSON")
    if name == "drop":
        p.add_argument("model", help="model to stop serving, wherever it is served")
    if name in POOL_COMMANDS:
        p.add_argument("model", help="the model, by name")
        if name == "extend-ttl":
            p.add_argument("seconds", type=float, help="keep it loaded at least this long more")
        p.add_argument(
            "--node",
            metavar="ID",
            help="the node to do it on (another node's needs the mesh owner key here); "
            "default: where placement puts it (load), or wherever it is loaded",
        )
    if name == "dashboard":
        p.add_argument("--open", action="store_true", help="open it in the web browser")
    if name in ("token", "drop", "console", "dashboard", *POOL_COMMANDS):
        add_setting(p, "state_dir")
    args = p.parse_args(argv)
    if name == "token":
        print(local_request(args.port, "/api/token", token=admin_token(args.state_dir))["token"])
    elif name == "status":
        status = local_request(args.port, "/api/status")
        if args.json:
            print(json.dumps(status, indent=2))
        else:
            print_status(status)
    elif name == "models":
        models = local_request(args.port, "/api/models")["models"]
        if args.json:
            print(json.dumps(models, indent=2))
        else:
            print_models(models)
    elif name == "drop":
        result = local_request(
            args.port, "/api/drop", {"model": args.model}, token=admin_token(args.state_dir)
        )
        print(f"dropped {result['dropped']} on {', '.join(result['nodes']) or 'no node'}")
    elif name == "fleet":
        fleet = local_request(args.port, "/api/fleet")
        if args.json:
            print(json.dumps(fleet, indent=2))
        else:
            from meshllm.election.fleet_text import format_fleet

            print(format_fleet(fleet))
    elif name == "discover":
        from meshllm.mdns import browse, format_meshes

        print(format_meshes(asyncio.run(browse(args.timeout))))
    elif name in POOL_COMMANDS:
        body: dict[str, Any] = {}
        if args.node:
            body["node"] = args.node
        if name == "extend-ttl":
            body["seconds"] = args.seconds
        path = f"/api/models/{urllib.parse.quote(args.model)}/{name}"
        result = local_request(args.port, path, body, token=admin_token(args.state_dir))
        print(f"{name} {result['model']}: {', '.join(result['nodes']) or 'no node'}")
    elif name == "dashboard":
        return run_dashboard(args.port, args.state_dir.expanduser(), args.open)
    elif name == "console":
        from meshllm.console import run_console

        return run_console(args.port, args.state_dir.expanduser())
    return 0


def run_dashboard(port: int, state_dir: Path, open_it: bool) -> int:
    """Print the dashboard's address with this node's admin token in its fragment (which
    the browser never sends: the page reads it and keeps it for the tab)."""
    local_request(port, "/health")  # a clear error when no node answers there
    url = f"http://127.0.0.1:{port}/#token={urllib.parse.quote(admin_token(state_dir))}"
    print(url)
    if open_it:
        import webbrowser

        webbrowser.open(url)
    return 0


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``meshllm`` console script."""
    argv = sys.argv[1:] if argv is None else argv
    if argv and argv[0] in SUBCOMMANDS:
        return run_subcommand(argv[0], argv[1:])
    return run_node(argv)
