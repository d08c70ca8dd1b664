"""The pool's settings as people write them: --ttl, --memory-budget, --model-ports, the
per-model config file."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from meshllm.errors import ConfigError
from meshllm.serving.pool_config import (
    MAX_CONFIG_BYTES,
    ModelSettings,
    load_model_config,
    parse_bytes,
    parse_port_range,
    parse_ttl,
    ttl_as_keep_alive,
)

# --ttl


@pytest.mark.parametrize(
    ("text", "seconds"),
    [("15m", 900.0), ("1h", 3600.0), ("90s", 90.0), ("1h30m", 5400.0), ("300", 300.0),
     (" 2m ", 120.0), (45, 45.0), (2.5, 2.5)],
)  # fmt: skip
def test_parse_ttl(text: str | float, seconds: float) -> None:
    assert parse_ttl(text) == seconds


@pytest.mark.parametrize("text", ["0", "0s", "-0", 0, "-1", "-5m", -1])
def test_parse_ttl_zero_or_negative_is_never(text: str | float) -> None:
    assert parse_ttl(text) is None


@pytest.mark.parametrize("text", ["", "soon", "5x", "1d", "5m3", "nan"])
def test_parse_ttl_garbage_is_a_config_error(text: str) -> None:
    with pytest.raises(ConfigError, match=r"^--ttl "):
        parse_ttl(text)


def test_parse_ttl_names_the_setting_it_parses() -> None:
    with pytest.raises(ConfigError, match=r"^models\.x\.ttl 'later'"):
        parse_ttl("later", "models.x.ttl")


@pytest.mark.parametrize(("ttl", "keep_alive"), [(None, -1.0), (900.0, 900.0), (1.5, 1.5)])
def test_ttl_as_keep_alive(ttl: float | None, keep_alive: float) -> None:
    assert ttl_as_keep_alive(ttl) == keep_alive


# --memory-budget


@pytest.mark.parametrize(
    ("text", "size"),
    [
        ("8G", 8 * 10**9),
        ("8g", 8 * 10**9),
        ("8GB", 8 * 10**9),
        ("8GiB", 8 * 2**30),
        ("8Gi", 8 * 2**30),
        ("8gib", 8 * 2**30),
        ("512M", 512 * 10**6),
        ("512MiB", 512 * 2**20),
        ("4k", 4000),
        ("4KiB", 4096),
        ("2T", 2 * 10**12),
        ("1TiB", 2**40),
        ("100", 100),
        ("100b", 100),
        ("100B", 100),
        ("0", 0),
        ("8000000000", 8 * 10**9),
        ("1.5g", 1_500_000_000),
        ("1.5GiB", 3 * 2**29),
        ("8 G", 8 * 10**9),
        (" 8G ", 8 * 10**9),
    ],
)
def test_parse_bytes(text: str, size: int) -> None:
    result = parse_bytes(text)
    assert result == size
    assert isinstance(result, int)


@pytest.mark.parametrize("text", ["auto", "AUTO", " Auto "])
def test_parse_bytes_auto_is_measured_by_the_caller(text: str) -> None:
    assert parse_bytes(text) is None


@pytest.mark.parametrize(
    "text", ["", "G", "-1", "-8G", "8X", "8iB", "8Gx", "1.5.5G", ".5G", "8 G B", "lots", "8e9"]
)
def test_parse_bytes_garbage_is_a_config_error(text: str) -> None:
    with pytest.raises(ConfigError, match=r"^--memory-budget "):
        parse_bytes(text)


def test_parse_bytes_names_the_setting_it_parses() -> None:
    with pytest.raises(ConfigError, match=r"^--other 'x'"):
        parse_bytes("x", "--other")


# --model-ports


@pytest.mark.parametrize(
    ("text", "ports"),
    [("41000-41099", (41000, 41099)), (" 41000-41099 ", (41000, 41099)),
     ("41000-41000", (41000, 41000)), ("1024-65535", (1024, 65535))],
)  # fmt: skip
def test_parse_port_range(text: str, ports: tuple[int, int]) -> None:
    assert parse_port_range(text) == ports


@pytest.mark.parametrize("text", ["", "   "])
def test_parse_port_range_empty_lets_the_os_pick(text: str) -> None:
    assert parse_port_range(text) is None


@pytest.mark.parametrize(
    "text",
    ["41099-41000", "80-90", "1023-2000", "60000-65536", "99999-99999", "0-41000"],
)
def test_parse_port_range_out_of_range_or_order(text: str) -> None:
    with pytest.raises(ConfigError, match=r"^--model-ports .*1024-65535"):
        parse_port_range(text)


@pytest.mark.parametrize(
    "text",
    ["41000", "41000-", "-41000", "a-b", "41000 - 41099", "41000:41099", "1-2-3", "123456-1"],
)
def test_parse_port_range_garbage(text: str) -> None:
    with pytest.raises(ConfigError, match=r"^--model-ports .*START-END"):
        parse_port_range(text)


# --model-config


def write(tmp_path: Path, text: str | bytes) -> Path:
    path = tmp_path / "models.toml"
    if isinstance(text, str):
        path.write_text(text, encoding="utf-8")
    else:
        path.write_bytes(text)
    return path


def test_load_model_config_without_a_path_is_empty() -> None:
    assert load_model_config(None) == {}


def test_load_model_config_reads_ttl_and_pin(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        """
[models."gemma-3-270m-q4_k_m"]
ttl = "1h"
pin = true

[models."qwen2.5:7b"]
ttl = "0"   # never unload for idleness

[models.plain]
pin = false

[models.seconds]
ttl = 90

[models.empty]
""",
    )
    assert load_model_config(path) == {
        "gemma-3-270m-q4_k_m": ModelSettings(ttl=3600.0, pin=True),
        "qwen2.5:7b": ModelSettings(ttl=-1.0, pin=False),
        "plain": ModelSettings(ttl=None, pin=False),
        "seconds": ModelSettings(ttl=90.0, pin=False),
        "empty": ModelSettings(),
    }


@pytest.mark.parametrize("ttl", ['"0"', '"0s"', '"-1"', "0", "-1"])
def test_load_model_config_never_is_a_negative_keep_alive(tmp_path: Path, ttl: str) -> None:
    path = write(tmp_path, f"[models.m]\nttl = {ttl}\n")
    assert load_model_config(path) == {"m": ModelSettings(ttl=-1.0)}


@pytest.mark.parametrize("text", ["", "# nothing yet\n", "[models]\n"])
def test_load_model_config_without_models_is_empty(tmp_path: Path, text: str) -> None:
    assert load_model_config(write(tmp_path, text)) == {}


def test_model_settings_default_to_the_nodes() -> None:
    assert ModelSettings() == ModelSettings(ttl=None, pin=False)


@pytest.mark.parametrize(
    ("text", "fragment"),
    [
        ("[models.m]\nttl = '1h'\nkeep = true\n", "models.m: a table with ttl and/or pin"),
        ("[models.m]\npinned = true\n", "models.m: a table with ttl and/or pin"),
        ("[models]\nm = 5\n", "models.m: a table with ttl and/or pin"),
        ("[models]\nm = 'pin'\n", "models.m: a table with ttl and/or pin"),
        ("[models.m]\npin = 1\n", "models.m.pin must be true or false"),
        ("[models.m]\npin = 'yes'\n", "models.m.pin must be true or false"),
        ("[models.m]\nttl = 'soon'\n", "models.m.ttl 'soon'"),
        ("[models.m]\nttl = '5x'\n", "models.m.ttl '5x'"),
        ("[models.m]\nttl = true\n", "models.m.ttl True"),
        ("[models.m]\nttl = [1]\n", "models.m.ttl [1]"),
        ("models = 5\n", "[models] must be a table of models"),
        ("models = [1, 2]\n", "[models] must be a table of models"),
    ],
)
def test_load_model_config_bad_settings_name_the_setting(
    tmp_path: Path, text: str, fragment: str
) -> None:
    path = write(tmp_path, text)
    with pytest.raises(ConfigError) as info:
        load_model_config(path)
    message = str(info.value)
    assert message.startswith(f"--model-config {path}: ")
    assert fragment in message


@pytest.mark.parametrize("text", ["[models.m\npin = true\n", "[models.m]\npin = \n", "= 1\n",
                                  "[models.m]\npin = true\npin = false\n"])  # fmt: skip
def test_load_model_config_invalid_toml(tmp_path: Path, text: str) -> None:
    path = write(tmp_path, text)
    with pytest.raises(ConfigError, match="^" + re.escape(f"--model-config {path}: ")):
        load_model_config(path)


def test_load_model_config_not_utf8(tmp_path: Path) -> None:
    path = write(tmp_path, b"[models.m]\npin = true # \xff\xfe\n")
    with pytest.raises(ConfigError, match="^" + re.escape(f"--model-config {path}: ")):
        load_model_config(path)


def test_load_model_config_refuses_a_file_too_large(tmp_path: Path) -> None:
    header = b"[models.m]\npin = true\n"
    at_limit = write(tmp_path, header + b"#" * (MAX_CONFIG_BYTES - len(header)))
    assert load_model_config(at_limit) == {"m": ModelSettings(pin=True)}
    over = write(tmp_path, header + b"#" * (MAX_CONFIG_BYTES - len(header) + 1))
    with pytest.raises(
        ConfigError, match=re.escape(f"--model-config {over}: over {MAX_CONFIG_BYTES} bytes")
    ):
        load_model_config(over)


def test_load_model_config_missing_file(tmp_path: Path) -> None:
    path = tmp_path / "nope.toml"
    with pytest.raises(ConfigError, match="^" + re.escape(f"--model-config {path}: ")):
        load_model_config(path)


def test_load_model_config_a_directory(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="^" + re.escape(f"--model-config {tmp_path}: ")):
        load_model_config(tmp_path)


def test_load_model_config_refuses_unknown_top_level_tables(tmp_path: Path) -> None:
    path = write(tmp_path, "[model.m]\npin = true\n")
    with pytest.raises(ConfigError, match="model"):
        load_model_config(path)
