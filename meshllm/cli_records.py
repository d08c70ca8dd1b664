"""``meshllm keys | history | usage``: the mesh's API keys, its request history, its usage.

Each talks to the local node on ``--port`` with its admin token (``--state-dir``).
``keys create`` also works with no node running, on the machine that holds the mesh
owner key: the key is signed there and kept in the state dir, for the node to gossip
when it starts (so ``--listen-all`` can start with keys from the first moment).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
import urllib.parse
from collections.abc import Callable
from typing import Any

from meshllm.local_api import admin_token, local_request, node_answers

KEY_COMMANDS = ("create", "ls", "revoke")
FORMATS = ("table", "json", "csv")
HISTORY_FILTERS = ("model", "node", "key", "status", "since", "until", "search", "kind")


def run_keys(argv: list[str], add_common: Callable[[argparse.ArgumentParser], None]) -> int:
    p = argparse.ArgumentParser(prog="meshllm keys", description="the mesh's API keys")
    actions = p.add_subparsers(dest="action", required=True)
    create = actions.add_parser("create", help="a new key (printed once)")
    create.add_argument("--scope", choices=("inference", "admin"), default="inference")
    create.add_argument("--models", help="comma-separated models it may use (default: all)")
    create.add_argument("--expires", metavar="DURATION", help="e.g. 30d, 12h (default: never)")
    create.add_argument("--rpm", type=int, help="requests per minute, mesh-wide")
    create.add_argument("--tpm", type=int, help="tokens per minute, mesh-wide")
    create.add_argument("--name", default="", help="what it is for")
    listing = actions.add_parser("ls", help="every key (never their secrets)")
    revoke = actions.add_parser("revoke", help="revoke a key mesh-wide")
    revoke.add_argument("id", help="the key's id, as `keys ls` shows it")
    for sub in (create, listing, revoke):
        add_common(sub)
    args = p.parse_args(argv)
    if args.action == "create":
        fields = {
            name: getattr(args, name)
            for name in ("scope", "models", "expires", "rpm", "tpm", "name")
            if getattr(args, name) not in (None, "")
        }
        if node_answers(args.port):
            token = admin_token(args.state_dir)
            made = local_request(args.port, "/api/keys", fields, token=token)
        else:
            made = _create_offline(args.state_dir, fields)
        print(made["key"])
        print(f"key {made['id']} ({made['scope']}): shown once, keep it safe", file=sys.stderr)
    elif args.action == "ls":
        keys = local_request(args.port, "/api/keys", token=admin_token(args.state_dir))["keys"]
        print(format_keys(keys))
    else:
        path = f"/api/keys/{urllib.parse.quote(args.id)}"
        local_request(args.port, path, token=admin_token(args.state_dir), method="DELETE")
        print(f"revoked {args.id}")
    return 0


def _create_offline(state_dir: Any, fields: dict[str, Any]) -> dict[str, Any]:
    """A key signed here with the owner key and stored for the node's next start."""
    from meshllm.access.key_store import load_statements, save_statements
    from meshllm.access.keys import KeyBook, create_statement
    from meshllm.access.service import key_from_fields
    from meshllm.errors import CommandError
    from meshllm.join_token import MeshCredentials
    from meshllm.owner import OwnerKey
    from meshllm.paths import StatePaths

    state_dir = state_dir.expanduser()
    credentials, owner = MeshCredentials.load(state_dir), OwnerKey.load(state_dir)
    if credentials is None or owner is None or owner.public_key != credentials.owner:
        raise SystemExit(
            f"meshllm: no node answers, and {state_dir} holds no mesh owner key to sign a "
            "key with: start the node, or run this on the machine that owns the mesh"
        )
    now = time.time()
    try:
        text, key = key_from_fields(fields, now)
    except CommandError as exc:
        raise SystemExit(f"meshllm: {exc}") from None
    path = StatePaths(state_dir).keys
    book = KeyBook(credentials.owner, credentials.mesh_id)
    for statement in load_statements(path):
        book.add(statement, now)
    book.add(create_statement(owner, key, mesh_id=credentials.mesh_id, now=now), now)
    save_statements(path, book.statements())
    return {**key.public(), "key": text}


def format_keys(keys: list[dict[str, Any]]) -> str:
    """``meshllm keys ls``: one line a key."""
    if not keys:
        return "no API keys: create one with `meshllm keys create`"
    lines = [f"{'ID':<13} {'SCOPE':<10} {'STATE':<8} {'RPM':>6} {'TPM':>8}  MODELS  NAME"]
    for key in keys:
        state = "revoked" if key["revoked"] else "expired" if key["expired"] else "active"
        models = ",".join(key["models"]) or "all"
        lines.append(
            f"{key['id']:<13} {key['scope']:<10} {state:<8} {key['rpm'] or '-':>6} "
            f"{key['tpm'] or '-':>8}  {models}  {key['name']}"
        )
    return "\n".join(lines)


def run_history(argv: list[str], add_common: Callable[[argparse.ArgumentParser], None]) -> int:
    p = argparse.ArgumentParser(
        prog="meshllm history", description="requests answered or routed, mesh-wide"
    )
    add_common(p)
    for name in HISTORY_FILTERS:
        p.add_argument(f"--{name}", help=_HELP.get(name, f"only this {name}"))
    p.add_argument("--limit", type=int, default=50, help="rows (at most 1000)")
    p.add_argument("--local", action="store_true", help="this node's records only")
    p.add_argument("--format", choices=FORMATS, default="table")
    args = p.parse_args(argv)
    params = {name: getattr(args, name) for name in HISTORY_FILTERS if getattr(args, name)}
    params["limit"] = str(args.limit)
    params["scope"] = "local" if args.local else "mesh"
    if args.format == "csv":
        params["format"] = "csv"
    path = "/api/history?" + urllib.parse.urlencode(params)
    token = admin_token(args.state_dir)
    if args.format == "csv":
        sys.stdout.write(local_request(args.port, path, token=token, raw=True).decode())
        return 0
    page = local_request(args.port, path, token=token)
    if args.format == "json":
        print(json.dumps(page, indent=2))
    else:
        print(format_history(page))
    return 0


_HELP = {
    "since": "from (1h, 7d, ISO 8601 or Unix seconds)",
    "until": "up to (the same forms)",
    "status": "200, 4xx, error or ok",
    "node": "entered or served by this node id",
    "key": "made with this key id",
    "search": "text in the model, path, error or request id",
    "kind": "local, routed or served",
}


def format_history(page: dict[str, Any]) -> str:
    """``meshllm history``: a table, newest first, and the nodes that did not answer."""
    lines = [
        f"{'TIME':<19} {'MODEL':<24} {'ROUTE':<27} {'STATUS':>6} {'IN':>6} {'OUT':>6} "
        f"{'TTFT':>8} {'TOTAL':>8}  KEY"
    ]
    for row in page["rows"]:
        when = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(row["time"]))
        route = f"{row['entry_node'][:12]} → {(row['serving_node'] or '-')[:12]}"
        ttft = f"{row['ttft_ms']:.0f} ms" if row.get("ttft_ms") is not None else "-"
        lines.append(
            f"{when:<19} {row['model'][:24]:<24} {route:<27} {row['status']:>6} "
            f"{row['tokens_in']:>6} {row['tokens_out']:>6} {ttft:>8} "
            f"{row['latency_ms']:>5.0f} ms  {row['key_id'] or '-'}"
        )
    if not page["rows"]:
        lines.append("no requests")
    for node_id, reason in sorted(page.get("missing", {}).items()):
        lines.append(f"(node {node_id} did not answer: {reason})")
    return "\n".join(lines)


def run_usage(argv: list[str], add_common: Callable[[argparse.ArgumentParser], None]) -> int:
    p = argparse.ArgumentParser(
        prog="meshllm usage", description="requests, tokens and cost per key and model"
    )
    add_common(p)
    p.add_argument("--since", default="24h", help="from (1h, 7d, ISO 8601 or Unix seconds)")
    p.add_argument("--until", help="up to (the same forms)")
    p.add_argument("--model", help="only this model")
    p.add_argument("--key", help="only this key id")
    p.add_argument("--local", action="store_true", help="this node's records only")
    p.add_argument("--json", action="store_true", help="print the raw /api/usage JSON")
    args = p.parse_args(argv)
    params = {n: getattr(args, n) for n in ("since", "until", "model", "key") if getattr(args, n)}
    params["scope"] = "local" if args.local else "mesh"
    path = "/api/usage?" + urllib.parse.urlencode(params)
    usage = local_request(args.port, path, token=admin_token(args.state_dir))
    print(json.dumps(usage, indent=2) if args.json else format_usage(usage))
    return 0


def format_usage(usage: dict[str, Any]) -> str:
    """``meshllm usage``: one line per key and model, then the totals."""
    lines = [
        f"{'KEY':<13} {'MODEL':<28} {'REQS':>6} {'ERRS':>5} {'TOK IN':>8} {'TOK OUT':>8} "
        f"{'COST':>10} {'PER 1M TOK':>11}  FROM"
    ]
    for g in usage["usage"]:
        lines.append(
            f"{g['key_id'] or '-':<13} {g['model'][:28]:<28} {g['requests']:>6} "
            f"{g['errors']:>5} {g['tokens_in']:>8} {g['tokens_out']:>8} "
            f"{_money(g.get('cost')):>10} {_money(g.get('cost_per_mtok')):>11}  "
            f"{g.get('cost_source') or '-'}"
        )
    t = usage["totals"]
    lines.append(
        f"{'total':<13} {'':<28} {t['requests']:>6} {t['errors']:>5} {t['tokens_in']:>8} "
        f"{t['tokens_out']:>8} {_money(t.get('cost')):>10}"
    )
    for node_id, reason in sorted(usage.get("missing", {}).items()):
        lines.append(f"(node {node_id} did not answer: {reason})")
    return "\n".join(lines)


def _money(value: float | None) -> str:
    if value is None:
        return "-"
    return f"${value:.6f}" if value < 0.01 else f"${value:.2f}"
