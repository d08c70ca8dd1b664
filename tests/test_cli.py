"""The command line is generated from Config: every field has its flag and variable."""

from __future__ import annotations

from dataclasses import fields
from pathlib import Path
from typing import Any

import pytest

from meshllm.cli import config_from_args, node_parser
from meshllm.config import Config


def parse(*argv: str) -> Config:
    return config_from_args(node_parser().parse_args(list(argv)))


@pytest.fixture(autouse=True)
def no_meshllm_env(monkeypatch: pytest.MonkeyPatch) -> None:
    import os

    for name in [n for n in os.environ if n.startswith("MESHLLM_")]:
        monkeypatch.delenv(name)


def test_no_flags_give_the_config_defaults() -> None:
    assert parse() == Config()
    assert Config().state_dir == Path.home() / ".meshllm"  # ~ expanded once, in Config


def test_every_field_has_a_flag() -> None:
    help_text = node_parser().format_help()
    for f in fields(Config):
        flag = f.metadata.get("flag") or "--" + f.name.replace("_", "-")
        assert flag in help_text, f.name


def test_flags_set_fields() -> None:
    config = parse(
        "--model", "a", "--model", "/x/b.gguf", "--no-install", "--probe-interval", "2",
        "--max-tokens-default", "0", "--allowed-host", "box.lan", "--join", "mesh1-x",
        "--models-dir", "~/m",
    )  # fmt: skip
    assert config.models == ["a", "/x/b.gguf"]
    assert config.auto_install is False
    assert config.probe_interval == 2.0 and config.max_tokens_default == 0
    assert config.allowed_hosts == ["box.lan"] and config.join == "mesh1-x"
    assert config.models_dir == Path.home() / "m"


def test_environment_sets_defaults_and_flags_win(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MESHLLM_PROBE_INTERVAL", "3")
    monkeypatch.setenv("MESHLLM_MODEL", "a, b")
    monkeypatch.setenv("MESHLLM_NO_INSTALL", "true")
    monkeypatch.setenv("MESHLLM_LISTEN_ALL", "1")
    monkeypatch.setenv("MESHLLM_PORT", "9555")
    config = parse("--port", "9666")
    assert config.probe_interval == 3.0 and config.models == ["a", "b"]
    assert config.auto_install is False and config.listen_all is True
    assert config.port == 9666


def test_a_bad_cors_origin_is_a_config_error() -> None:
    from meshllm.errors import ConfigError

    with pytest.raises(ConfigError):
        parse("--cors-origin", "*")


def test_status_names_a_suspect_peer(capsys: pytest.CaptureFixture[str]) -> None:
    from meshllm.cli_text import print_status

    peer = {"node_id": "b" * 16, "role": "host", "addrs": ["10.0.0.2:9338"], "rtt_ms": 1.5,
            "serving": {"m": "ready"}, "suspect": True}  # fmt: skip
    me = {"node_id": "a" * 16, "role": "host", "serving": {}, "mesh_id": "x", "catalog": [],
          "peers": [peer, {**peer, "node_id": "c" * 16, "suspect": False}]}  # fmt: skip
    print_status(me)
    lines = capsys.readouterr().out.splitlines()
    assert any(line.startswith("b" * 16) and "suspect" in line for line in lines)
    assert any(line.startswith("c" * 16) and "1.5 ms" in line for line in lines)


def _pool_mesh() -> list[Any]:
    from meshllm.gossip import PeerAnnouncement

    now = 1_750_000_000_000
    hot = {"state": "hot", "since": now - 60_000, "pinned": True}
    cooling = {"state": "cooling", "since": now - 60_000, "until": now + 42_500}
    warming = {"state": "warming", "since": now - 4_000, "eta": 10.0}
    failed = {"state": "failed", "since": now - 1_000}
    disk = {"m": 253_000_000, "n": 10_000}
    return [
        PeerAnnouncement("ab12" + "0" * 12, "x", pool={"m": hot}, available_models=disk,
                         demand={"m": {"rpm": 12.0, "last": now}}),
        PeerAnnouncement("cd34" + "0" * 12, "x", pool={"m": cooling}, available_models=disk),
        PeerAnnouncement("ef56" + "0" * 12, "x", pool={"m": warming, "n": failed},
                         available_models=disk,
                         failures={"n": "SIGILL while loading; last log lines:\nIllegal"}),
    ]  # fmt: skip


def test_models_shows_each_nodes_pool_state(capsys: pytest.CaptureFixture[str]) -> None:
    from meshllm.cli_text import print_models
    from meshllm.election.pool_view import pool_view

    print_models(pool_view(_pool_mesh(), 1_750_000_000_000))
    header, m, n, cause = capsys.readouterr().out.splitlines()
    assert header.split() == ["MODEL", "STATE", "SIZE", "RPM", "NODES"]
    assert m.split()[:5] == ["m", "hot", "253", "MB", "12.0"]
    assert m.endswith("ab12…: hot pinned; cd34…: cooling 42s; ef56…: warming 40%")
    assert n.split()[:5] == ["n", "cold", "10", "KB", "-"]
    assert n.endswith("ab12…: cold; cd34…: cold; ef56…: failed")
    # A failure's first line, under its model's row.
    assert cause == f"  failed on ef56{'0' * 12}: SIGILL while loading; last log lines:"


def test_models_of_an_empty_mesh(capsys: pytest.CaptureFixture[str]) -> None:
    from meshllm.cli_text import print_models

    print_models([])
    assert capsys.readouterr().out == "no model in the mesh catalog\n"
    print_models([{"model": "w", "state": "cold", "size_bytes": None, "rpm": 0.0, "nodes": []}])
    assert capsys.readouterr().out.splitlines()[1].split() == ["w", "cold", "-", "-", "-"]


def test_models_subcommand_reads_the_pool_view(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    import json
    import time

    from meshllm import cli
    from meshllm.election.pool_view import pool_view

    view = {"models": pool_view(_pool_mesh(), int(time.time() * 1000))}
    asked: list[str] = []
    answer = lambda port, path, *a, **k: asked.append(path) or view  # noqa: E731
    monkeypatch.setattr(cli, "local_request", answer)
    assert cli.run_subcommand("models", ["--json"]) == 0
    models = json.loads(capsys.readouterr().out)
    assert [(m["model"], m["state"], m["rpm"]) for m in models] == [("m", "hot", 12.0),
                                                                    ("n", "cold", 0.0)]  # fmt: skip
    assert [n["state"] for n in models[0]["nodes"]] == ["hot", "cooling", "warming"]
    assert cli.run_subcommand("models", []) == 0
    assert "ab12…: hot pinned; cd34…: cooling" in capsys.readouterr().out
    assert asked == ["/api/models", "/api/models"]


def test_the_pool_subcommands_are_the_pool_actions() -> None:
    from meshllm.cli import POOL_COMMANDS
    from meshllm.serving.pool_commands import ACTIONS

    assert POOL_COMMANDS == ACTIONS  # the CLI spells them without importing serving
