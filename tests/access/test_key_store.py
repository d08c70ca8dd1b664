"""The key statements' file: round trip, mode 0600, corrupt and oversized files."""

from __future__ import annotations

import stat
from pathlib import Path

import msgpack
import pytest

from meshllm.access.key_store import MAX_FILE_BYTES, load_statements, save_statements
from meshllm.access.keys import KeyBook, create_statement, new_key, revoke_statement
from meshllm.errors import ConfigError
from meshllm.owner import OwnerKey

MESH = "0123456789abcdef"
T0 = 1_700_000_000.0


def test_round_trip_mode_0600_and_book_rebuilt(tmp_path: Path) -> None:
    owner = OwnerKey.generate()
    book = KeyBook(owner.public_key, MESH)
    text, key = new_key(name="ci", scope="inference", models=["m"], rpm=10, now=T0)
    book.add(create_statement(owner, key, mesh_id=MESH, now=T0), T0)
    book.add(revoke_statement(owner, "0" * 12, mesh_id=MESH, now=T0), T0)
    path = tmp_path / "state" / "api_keys"
    save_statements(path, book.statements())
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert not path.with_name("api_keys.tmp").exists()
    loaded = load_statements(path)
    assert loaded == book.statements()
    again = KeyBook(owner.public_key, MESH)
    for statement in loaded:
        again.add(statement, T0)
    assert again.digest() == book.digest()
    assert again.authenticate(text, T0) == key


def test_save_replaces(tmp_path: Path) -> None:
    path = tmp_path / "api_keys"
    save_statements(path, [{"a": 1}])
    path.chmod(0o644)
    save_statements(path, [])
    assert load_statements(path) == []
    assert stat.S_IMODE(path.stat().st_mode) == 0o600


def test_missing_file_is_empty(tmp_path: Path) -> None:
    assert load_statements(tmp_path / "nothing") == []


@pytest.mark.parametrize(
    "data",
    [
        b"",
        b"\xc1",
        b"not msgpack at all \xff\xfe",
        msgpack.packb([1, 2]),
        msgpack.packb({"v": 2, "statements": []}),
        msgpack.packb({"v": 1, "statements": {}}),
        msgpack.packb({"v": 1, "statements": [1]}),
        msgpack.packb({"v": 1}) + b"\x00",
        msgpack.packb({1: 2}),
        b"\x91" * 100_000,  # nested too deep
    ],
)
def test_corrupt_file_raises_config_error(tmp_path: Path, data: bytes) -> None:
    path = tmp_path / "api_keys"
    path.write_bytes(data)
    with pytest.raises(ConfigError) as info:
        load_statements(path)
    assert "\n" not in str(info.value)


def test_too_big_file_raises_config_error(tmp_path: Path) -> None:
    path = tmp_path / "api_keys"
    path.write_bytes(b"\x00" * (MAX_FILE_BYTES + 1))
    with pytest.raises(ConfigError, match="over"):
        load_statements(path)
    with pytest.raises(ConfigError, match="over"):
        save_statements(path, [{"blob": b"x" * MAX_FILE_BYTES}])


def test_unreadable_path_raises_config_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="cannot read"):
        load_statements(tmp_path)  # a directory
