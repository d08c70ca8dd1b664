"""The command line is generated from Config: every field has its flag and variable."""

from __future__ import annotations

from dataclasses import fields
from pathlib import Path

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
    from meshllm.cli import print_status

    peer = {"node_id": "b" * 16, "role": "host", "addrs": ["10.0.0.2:9338"], "rtt_ms": 1.5,
            "serving": {"m": "ready"}, "suspect": True}  # fmt: skip
    me = {"node_id": "a" * 16, "role": "host", "serving": {}, "mesh_id": "x", "catalog": [],
          "peers": [peer, {**peer, "node_id": "c" * 16, "suspect": False}]}  # fmt: skip
    print_status(me)
    lines = capsys.readouterr().out.splitlines()
    assert any(line.startswith("b" * 16) and "suspect" in line for line in lines)
    assert any(line.startswith("c" * 16) and "1.5 ms" in line for line in lines)
