"""The endpoints file: validation, replace by URL, mode 0600, corrupt files."""

from __future__ import annotations

import json
import stat
from pathlib import Path

import pytest

from meshllm.errors import ConfigError
from meshllm.serving.endpoint_store import (
    ENDPOINTS_FILE,
    MAX_ENDPOINTS,
    EndpointRecord,
    EndpointStore,
    canonical_url,
    endpoint_id,
)


@pytest.fixture
def store(tmp_path: Path) -> EndpointStore:
    return EndpointStore.in_state_dir(tmp_path / "state")


def test_endpoint_store_empty(store: EndpointStore) -> None:
    assert store.load() == [] and store.list() == []
    assert not store.path.exists()


def test_endpoint_store_add_and_reload(store: EndpointStore) -> None:
    a = store.add("gpu-box:11434", kind="ollama", name="gpu-box")
    b = store.add("https://api.example.com/v1", api_key="sk-secret")
    assert store.path.name == ENDPOINTS_FILE
    assert a == EndpointRecord(a.id, "http://gpu-box:11434", "ollama", "gpu-box", None)
    assert (b.url, b.kind, b.api_key) == ("https://api.example.com", "auto", "sk-secret")
    again = EndpointStore(store.path)
    assert again.list() == [a, b]
    assert again.get(b.id) == b and again.get("0" * 12) is None


def test_endpoint_store_file_mode_0600(store: EndpointStore) -> None:
    store.add("http://h:1", api_key="sk-secret")
    assert stat.S_IMODE(store.path.stat().st_mode) == 0o600
    store.add("http://h:2")
    assert stat.S_IMODE(store.path.stat().st_mode) == 0o600
    assert [p.name for p in store.path.parent.iterdir()] == [ENDPOINTS_FILE]  # no temp left


def test_endpoint_store_file_format(store: EndpointStore) -> None:
    record = store.add("http://h:1", name="h", api_key="sk-1")
    data = json.loads(store.path.read_text())
    assert data == {"version": 1, "endpoints": [record.to_json()]}


def test_endpoint_store_same_url_replaces(store: EndpointStore) -> None:
    first = store.add("http://GPU-Box:11434/v1/", name="old")
    second = store.add("gpu-box:11434", kind="ollama", name="new", api_key="k")
    assert first.id == second.id
    assert store.list() == [second]


def test_endpoint_store_remove(store: EndpointStore) -> None:
    a = store.add("http://h:1")
    b = store.add("http://h:2")
    assert store.remove(a.id) is True
    assert store.remove(a.id) is False
    assert EndpointStore(store.path).load() == [b]


def test_endpoint_store_bounded(store: EndpointStore) -> None:
    for i in range(MAX_ENDPOINTS):
        store.add(f"http://h:{1000 + i}")
    store.add("http://h:1000", name="again")  # replacing is fine
    with pytest.raises(ValueError, match="at most"):
        store.add("http://h:1")


def test_endpoint_id_is_short_and_stable() -> None:
    assert endpoint_id("http://h:1") == endpoint_id("H:1/") == endpoint_id("http://h:1/v1")
    assert len(endpoint_id("http://h:1")) == 12
    assert int(endpoint_id("http://h:1"), 16) >= 0
    assert endpoint_id("http://h:1") != endpoint_id("http://h:2")
    assert endpoint_id("http://h:1") != endpoint_id("https://h:1")


def test_endpoint_record_hides_key(store: EndpointStore) -> None:
    record = store.add("http://h:1", api_key="sk-very-secret")
    assert "sk-very-secret" not in repr(record)
    assert record.public() == {
        "id": record.id,
        "url": "http://h:1",
        "kind": "auto",
        "name": None,
        "has_api_key": True,
    }
    assert store.add("http://h:2").public()["has_api_key"] is False


@pytest.mark.parametrize(
    ("url", "root"),
    [
        ("h:11434", "http://h:11434"),
        ("HTTP://Host.Example:8080/v1/", "http://host.example:8080"),
        ("https://h/openai/v1", "https://h/openai"),
        ("http://[::1]:8080", "http://[::1]:8080"),
        ("http://127.0.0.1", "http://127.0.0.1"),
    ],
)
def test_canonical_url(url: str, root: str) -> None:
    assert canonical_url(url) == root


@pytest.mark.parametrize(
    ("url", "message"),
    [
        ("", "empty"),
        ("ftp://h:21", "http:// or https://"),
        ("file:///etc/passwd", "http:// or https://"),
        ("http://", "no host"),
        ("http://user:pw@h:1", "credentials"),
        ("http://user@h:1", "credentials"),
        ("http://h:1/?x=1", "query"),
        ("http://h:1/#frag", "query"),
        ("http://h:99999", "not a valid URL"),
        ("http://h:1/a b", "spaces"),
        ("http://h:1/\n", "spaces"),
        ("http://h/" + "a" * 3000, "longer than"),
    ],
)
def test_endpoint_store_bad_url(store: EndpointStore, url: str, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        store.add(url)
    assert not store.path.exists()


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        ({"kind": "vllm"}, "kind must be one of"),
        ({"name": ""}, "name must be"),
        ({"name": "a" * 65}, "name must be"),
        ({"name": "bad/name"}, "name must be"),
        ({"name": "-dash"}, "name must be"),
        ({"name": "x\ny"}, "name must be"),
        ({"api_key": ""}, "non-empty"),
        ({"api_key": "sk\nInjected: 1"}, "printable"),
        ({"api_key": " sk"}, "printable"),
        ({"api_key": "sk-\u00e9"}, "printable"),
        ({"api_key": "k" * 5000}, "longer than"),
    ],
)
def test_endpoint_store_bad_fields(
    store: EndpointStore, fields: dict[str, str], message: str
) -> None:
    with pytest.raises(ValueError, match=message) as info:
        store.add("http://h:1", **fields)  # type: ignore[arg-type]
    if fields.get("api_key"):
        assert fields["api_key"] not in str(info.value)  # never quoted back


def test_endpoint_store_corrupt_file(store: EndpointStore) -> None:
    store.path.parent.mkdir(parents=True)
    store.path.write_text('{"version": 1, "endpoints": [')
    with pytest.raises(ConfigError, match=r"not valid JSON.*fix or remove it"):
        store.load()
    with pytest.raises(ConfigError):
        store.add("http://h:1")  # never overwrites what it could not read
    assert store.path.read_text() == '{"version": 1, "endpoints": ['


@pytest.mark.parametrize(
    ("body", "message"),
    [
        ([], "expected"),
        ({"version": 2, "endpoints": []}, "expected"),
        ({"version": 1, "endpoints": {}}, "expected"),
        ({"version": 1, "endpoints": [1]}, "endpoint 0 is not an object"),
        ({"version": 1, "endpoints": [{"url": "ftp://h"}]}, "endpoint 0: .*http://"),
        ({"version": 1, "endpoints": [{"url": "http://h:1", "kind": "x"}]}, "endpoint 0: .*kind"),
        ({"version": 1, "endpoints": [{"url": "http://h:1", "id": "abc"}]}, "does not match"),
    ],
)
def test_endpoint_store_malformed_file(store: EndpointStore, body: object, message: str) -> None:
    store.path.parent.mkdir(parents=True)
    store.path.write_text(json.dumps(body))
    with pytest.raises(ConfigError, match=message):
        store.load()


def test_endpoint_store_hand_written_file(store: EndpointStore) -> None:
    store.path.parent.mkdir(parents=True)
    store.path.write_text(json.dumps({"version": 1, "endpoints": [{"url": "h:11434"}]}))
    store.path.chmod(0o600)
    [record] = store.load()
    assert (record.url, record.kind) == ("http://h:11434", "auto")
    assert record.id == endpoint_id("h:11434")
