"""The mesh owner key: signed statements, the token that carries the owner's public key,
``meshllm owner export|import``, and DROP obeyed only when the owner signs it (real daemons)."""

from __future__ import annotations

import asyncio
import base64
import io
import json
import os
import stat
import subprocess
import sys
import time
from pathlib import Path

import msgpack
import pytest

from meshllm.cli import main
from meshllm.errors import AuthError, ConfigError
from meshllm.join_token import TOKEN_PREFIX, JoinToken, MeshCredentials
from meshllm.owner import (
    FUTURE_SKEW,
    MAX_AGE,
    OwnerKey,
    SeenNonces,
    sign_statement,
    verify_statement,
)
from meshllm.paths import StatePaths
from meshllm.serving import ModelFile
from meshllm.testing.cluster import Cluster, NodeProcess, member_link, wait_for
from meshllm.wire import FrameType, make_frame
from tests.serving.fake_llama import write_fake_llama

MESH = "0123456789abcdef"
T0 = 1_700_000_000.0
BODY = {"node_id": "a1b2c3d4e5f6a7b8", "model": "m"}


@pytest.fixture
def owner() -> OwnerKey:
    return OwnerKey.generate()


def verify(owner: OwnerKey, statement: object, now: float = T0, **kw: object) -> dict:
    args: dict = {"mesh_id": MESH, "kind": "drop", **kw}
    return verify_statement(owner.public_key, statement, now, **args)


# -- statements ------------------------------------------------------------------


def test_a_good_statement_verifies_and_gives_its_body(owner: OwnerKey) -> None:
    st = sign_statement(owner, "drop", BODY, T0, mesh_id=MESH)
    assert set(st) == {"kind", "mesh_id", "iat", "nonce", "body", "sig"}
    assert list(st["body"]) == ["model", "node_id"]  # sorted: one encoding for one body
    assert verify(owner, st, T0 + 1) == BODY
    # Through the wire codec, as a frame carries it.
    wire = msgpack.unpackb(msgpack.packb(st, use_bin_type=True), raw=False)
    assert verify(owner, wire, T0 + 1) == BODY


def test_key_order_in_the_body_does_not_matter(owner: OwnerKey) -> None:
    st = sign_statement(owner, "drop", {"z": {"b": 1, "a": [2, {"y": 1, "x": 0}]}, "a": 1}, T0,
                        mesh_id=MESH)  # fmt: skip
    st["body"] = {"a": 1, "z": {"a": [2, {"x": 0, "y": 1}], "b": 1}}
    assert verify(owner, st)["z"]["b"] == 1


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("body", {**BODY, "node_id": "ffffffffffffffff"}),
        ("body", {**BODY, "extra": 1}),
        ("kind", "drop2"),
        ("mesh_id", "fedcba9876543210"),
        ("iat", T0 + 1),
        ("nonce", os.urandom(16)),
    ],
)
def test_a_tampered_statement_is_refused(owner: OwnerKey, field: str, value: object) -> None:
    st = sign_statement(owner, "drop", BODY, T0, mesh_id=MESH)
    st[field] = value
    with pytest.raises(AuthError, match="not signed by the mesh owner"):
        verify(owner, st, T0 + 2)


def test_another_key_is_refused(owner: OwnerKey) -> None:
    forged = sign_statement(OwnerKey.generate(), "drop", BODY, T0, mesh_id=MESH)
    with pytest.raises(AuthError, match="not signed by the mesh owner"):
        verify(owner, forged)


def test_expired_and_future_statements_are_refused(owner: OwnerKey) -> None:
    st = sign_statement(owner, "drop", BODY, T0, mesh_id=MESH)
    assert verify(owner, st, T0 + MAX_AGE) == BODY
    with pytest.raises(AuthError, match="expired"):
        verify(owner, st, T0 + MAX_AGE + 0.1)
    assert verify(owner, st, T0 - FUTURE_SKEW) == BODY
    with pytest.raises(AuthError, match="from the future"):
        verify(owner, st, T0 - FUTURE_SKEW - 0.1)
    with pytest.raises(AuthError, match="expired"):
        verify(owner, st, T0 + 11, max_age=10)


def test_a_replayed_nonce_is_refused(owner: OwnerKey) -> None:
    seen = SeenNonces()
    st = sign_statement(owner, "drop", BODY, T0, mesh_id=MESH)
    assert verify(owner, st, T0, seen=seen) == BODY
    with pytest.raises(AuthError, match="replayed"):
        verify(owner, st, T0 + 30, seen=seen)
    # Forged ones never take room in the memory: only verified statements are remembered.
    with pytest.raises(AuthError):
        verify(owner, sign_statement(OwnerKey.generate(), "drop", BODY, T0, mesh_id=MESH),
               seen=seen)  # fmt: skip
    assert len(seen) == 1
    # Once too old to be accepted at all, the nonce is forgotten.
    fresh = sign_statement(owner, "drop", BODY, T0 + MAX_AGE + 1, mesh_id=MESH)
    verify(owner, fresh, T0 + MAX_AGE + 1, seen=seen)
    assert len(seen) == 1


def test_a_statement_issued_before_this_process_began_is_refused(owner: OwnerKey) -> None:
    """The replay memory is gone after a restart: what the last run may have accepted is
    refused by its date."""
    seen = SeenNonces(issued_after=T0)
    with pytest.raises(AuthError, match="tell from a replay"):
        verify(owner, sign_statement(owner, "drop", BODY, T0 - 1, mesh_id=MESH), T0 + 1, seen=seen)
    assert verify(owner, sign_statement(owner, "drop", BODY, T0 + 1, mesh_id=MESH), T0 + 1,
                  seen=seen) == BODY  # fmt: skip


def test_the_replay_memory_is_bounded_and_stays_safe(owner: OwnerKey) -> None:
    seen = SeenNonces(capacity=3)
    statements = [
        sign_statement(owner, "drop", BODY, T0 + i, mesh_id=MESH, nonce=bytes([i]) * 16)
        for i in range(5)
    ]
    for st in statements:
        verify(owner, st, T0 + 5, seen=seen)
    assert len(seen) == 3
    for st in statements:  # forgotten early or not: no replay gets through
        with pytest.raises(AuthError):
            verify(owner, st, T0 + 6, seen=seen)
    newer = sign_statement(owner, "drop", BODY, T0 + 6, mesh_id=MESH)
    assert verify(owner, newer, T0 + 6, seen=seen) == BODY


def test_a_statement_of_another_mesh_or_kind_is_refused(owner: OwnerKey) -> None:
    other = sign_statement(owner, "drop", BODY, T0, mesh_id="fedcba9876543210")
    with pytest.raises(AuthError, match="not this mesh"):
        verify(owner, other)
    with pytest.raises(AuthError, match="kind 'drop', not 'rename'"):
        verify(owner, sign_statement(owner, "drop", BODY, T0, mesh_id=MESH), kind="rename")


@pytest.mark.parametrize(
    "statement",
    [
        None,
        "drop",
        [],
        {},
        {"kind": "drop", "mesh_id": MESH, "iat": T0, "nonce": b"x" * 16, "body": {}, "sig": "x"},
        {"kind": "drop", "mesh_id": MESH, "iat": True, "nonce": b"x" * 16, "body": {},
         "sig": b"s" * 64},
        {"kind": "drop", "mesh_id": MESH, "iat": float("nan"), "nonce": b"x" * 16, "body": {},
         "sig": b"s" * 64},
        {"kind": "drop", "mesh_id": MESH, "iat": T0, "nonce": b"x" * 16, "body": {"a": 2**70},
         "sig": b"s" * 64},
        {"kind": "drop", "mesh_id": MESH, "iat": T0, "nonce": b"x" * 16, "body": {1: 2},
         "sig": b"s" * 64},
        {"kind": "drop", "mesh_id": MESH, "iat": T0, "nonce": b"x" * 3, "body": {},
         "sig": b"s" * 64},
    ],
)  # fmt: skip
def test_any_malformed_statement_is_an_auth_error(owner: OwnerKey, statement: object) -> None:
    with pytest.raises(AuthError):
        verify(owner, statement)


# -- the owner key, the token and the credentials -----------------------------------


def test_owner_key_file_is_0600_and_round_trips(owner: OwnerKey, tmp_path: Path) -> None:
    assert OwnerKey.load(tmp_path) is None
    owner.save(tmp_path)
    path = StatePaths(tmp_path).owner_key
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert OwnerKey.load(tmp_path).public_key == owner.public_key  # type: ignore[union-attr]
    assert OwnerKey.load_or_create(tmp_path).public_key == owner.public_key
    assert OwnerKey.from_text(owner.text).public_key == owner.public_key
    assert "\n" not in owner.text and len(owner.public_key) == 32
    path.write_text("nonsense!")
    with pytest.raises(ConfigError, match=r"cannot read .*owner_key"):
        OwnerKey.load(tmp_path)


def test_token_carries_the_owner_public_key(owner: OwnerKey) -> None:
    creds = MeshCredentials.create(owner.public_key)
    token = JoinToken(creds.mesh_id, creds.secret, creds.owner, ["127.0.0.1:9"], "n1").encode()
    decoded = JoinToken.decode(token)
    assert decoded.owner == owner.public_key
    assert decoded.credentials == creds


def _raw_token(fields: dict) -> str:
    payload = msgpack.packb({"v": 1, "mesh_id": MESH, "secret": b"s" * 32, "addrs": ["h:1"],
                             "node_id": "n1", **fields}, use_bin_type=True)  # fmt: skip
    return TOKEN_PREFIX + base64.urlsafe_b64encode(payload).rstrip(b"=").decode()


def test_a_token_without_an_owner_key_is_refused() -> None:
    with pytest.raises(ConfigError, match="names no mesh owner key"):
        JoinToken.decode(_raw_token({}))
    with pytest.raises(ConfigError, match="owner key is not 32 bytes"):
        JoinToken.decode(_raw_token({"owner": b"short"}))
    with pytest.raises(ConfigError, match="owner key is not 32 bytes"):
        JoinToken.decode(_raw_token({"owner": "x" * 32}))


def test_credentials_keep_the_owner_key(owner: OwnerKey, tmp_path: Path) -> None:
    creds = MeshCredentials.create(owner.public_key)
    creds.save(tmp_path)
    assert MeshCredentials.load(tmp_path) == creds
    old = {"mesh_id": MESH, "secret": "00" * 32}  # written before owner keys existed
    (StatePaths(tmp_path).mesh).write_text(json.dumps(old))
    with pytest.raises(ConfigError, match="names no mesh owner key"):
        MeshCredentials.load(tmp_path)


def test_owner_export_and_import(owner: OwnerKey, tmp_path: Path, capsys, monkeypatch) -> None:
    seed, member = tmp_path / "seed", tmp_path / "member"
    owner.save(seed)
    creds = MeshCredentials.create(owner.public_key)
    creds.save(seed)
    creds.save(member)
    assert main(["owner", "export", "--state-dir", str(seed)]) == 0
    out, err = capsys.readouterr()
    assert out.strip() == owner.text and "secret" in err
    # Refused: nothing to export, a key of another mesh, a garbled key.
    with pytest.raises(SystemExit, match="no owner key at"):
        main(["owner", "export", "--state-dir", str(member)])
    with pytest.raises(SystemExit, match="not the owner key of mesh"):
        main(["owner", "import", OwnerKey.generate().text, "--state-dir", str(member)])
    assert main(["owner", "import", "@@@", "--state-dir", str(member)]) == 2
    assert "bad owner key" in capsys.readouterr().err
    with pytest.raises(SystemExit, match="no mesh credentials"):
        main(["owner", "import", owner.text, "--state-dir", str(tmp_path / "nobody")])
    assert not (StatePaths(member).owner_key).exists()
    # From stdin, so it stays out of shell history and ps.
    monkeypatch.setattr(sys, "stdin", io.StringIO(owner.text + "\n"))
    assert main(["owner", "import", "-", "--state-dir", str(member)]) == 0
    assert OwnerKey.load(member).public_key == owner.public_key  # type: ignore[union-attr]
    assert stat.S_IMODE((StatePaths(member).owner_key).stat().st_mode) == 0o600


# -- real daemons: DROP only on the owner's word ---------------------------------------

MODEL = "gemma-3-270m-q4_k_m"
SLOW = 120.0


def cli(node: NodeProcess, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "meshllm", *args, "--port", str(node.http_port),
         "--state-dir", str(node.state_dir)],
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip


def served_by(node: NodeProcess) -> list[str]:
    return sorted(p["node_id"] for p in node.status()["peers"] if MODEL in p["serving"])


async def send_drops(token: str, frames: list[dict]) -> None:
    """Join as a member (the mesh secret, no owner key), dial the node that printed
    ``token`` and send it each DROP frame."""
    async with member_link(token) as link:
        for frame in frames:
            link.send(frame)
        await asyncio.sleep(1.0)


def test_only_the_owner_drops_a_model_on_another_node(
    tmp_path: Path, default_model: ModelFile
) -> None:
    fake = tmp_path / "llama-server"
    write_fake_llama(fake)
    b_models = tmp_path / "b-models"
    b_models.mkdir()
    try:
        os.link(default_model.path, b_models / f"{MODEL}.gguf")
    except OSError:  # another file system
        (b_models / f"{MODEL}.gguf").symlink_to(default_model.path)
    with Cluster(tmp_path) as c:
        a = c.add("--models-dir", str(tmp_path / "a-models"), name="a")  # seed: the owner
        b = c.add("--model", MODEL, "--models-dir", str(b_models), "--llama-server", str(fake),
                  name="b")  # fmt: skip
        # A member without the owner key; it asks for a model nobody has, so it serves nothing.
        m = c.add("--model", "no-such-model", name="m")
        b.wait_serving(MODEL, SLOW)
        wait_for(lambda: served_by(a) == [b.node_id] == served_by(m), 30, what="B seen serving")
        assert (StatePaths(a.state_dir).owner_key).exists()
        assert not (StatePaths(m.state_dir).owner_key).exists()
        owner = OwnerKey.load(a.state_dir)
        assert owner is not None
        seed_token = JoinToken.decode(a.token)
        assert JoinToken.decode(m.token).owner == owner.public_key == seed_token.owner
        mesh_id = seed_token.mesh_id

        # (a) A member sends DROPs to B: unsigned, forged, and owner-signed ones that name
        # another node, are stale or name another mesh.  B ignores every one.
        def signed(key: OwnerKey, node_id: str, now: float, mesh: str = mesh_id) -> dict:
            body = {"model": MODEL, "node_id": node_id}
            st = sign_statement(key, "drop", body, now, mesh_id=mesh)
            return make_frame(FrameType.DROP, model=MODEL, statement=st)

        now = time.time()
        attacks = [
            make_frame(FrameType.DROP, model=MODEL),
            make_frame(FrameType.DROP, model=MODEL, statement={"sig": b"x"}),
            make_frame(FrameType.DROP, model=MODEL, statement="please"),
            signed(OwnerKey.generate(), b.node_id, now),
            signed(owner, m.node_id, now),
            signed(owner, b.node_id, now - 2 * MAX_AGE),
            signed(owner, b.node_id, now, mesh="fedcba9876543210"),
        ]
        asyncio.run(send_drops(b.token, attacks))  # dials B, the first address in its token
        wait_for(lambda: b.log().count("ignoring a drop") == len(attacks), 10,
                 what="B to ignore every forged drop")  # fmt: skip
        assert b.alive() and b.status()["serving"][MODEL] == "ready"
        assert "not signed by the mesh owner" in b.log()
        assert "names another node" in b.log() and "expired" in b.log()
        assert "not this mesh" in b.log()

        # (c) The member, without the owner key, cannot drop it through its own API.
        out = cli(m, "drop", MODEL)
        assert out.returncode != 0 and "only the mesh owner" in out.stderr, out.stderr
        assert b.alive() and b.status()["serving"][MODEL] == "ready"

        # (b) The seed, which holds the owner key, drops it on B: B stops and exits.
        out = cli(a, "drop", MODEL)
        assert out.returncode == 0, out.stderr
        assert f"dropped {MODEL} on {b.node_id}" in out.stdout
        assert b.proc is not None and b.proc.wait(30) == 0
        assert "the mesh owner asks this node to drop" in b.log()

        # (d) The owner key moves to the member; then the member can drop B's model.
        b.start()
        b.wait_serving(MODEL, SLOW)
        wait_for(lambda: served_by(m) == [b.node_id], 30, what="M to see B serving again")
        exported = subprocess.run(
            [sys.executable, "-m", "meshllm", "owner", "export", "--state-dir", str(a.state_dir)],
            capture_output=True, text=True, timeout=60,
        )  # fmt: skip
        assert exported.returncode == 0 and "secret" in exported.stderr
        imported = subprocess.run(
            [sys.executable, "-m", "meshllm", "owner", "import", exported.stdout.strip(),
             "--state-dir", str(m.state_dir)],
            capture_output=True, text=True, timeout=60,
        )  # fmt: skip
        assert imported.returncode == 0, imported.stderr
        out = cli(m, "drop", MODEL)
        assert out.returncode == 0, out.stderr
        assert f"dropped {MODEL} on {b.node_id}" in out.stdout
        assert b.proc.wait(30) == 0
        assert a.alive() and m.alive()


def test_an_owner_key_that_starts_with_a_dash_imports(tmp_path: Path) -> None:
    # base64url: one exported key in 64 starts with "-", which argparse took for an option.
    owner = next(k for k in iter(OwnerKey.generate, None) if k.text.startswith("-"))
    seed, member = tmp_path / "seed", tmp_path / "member"
    MeshCredentials.create(owner.public_key).save(member)
    assert main(["owner", "import", owner.text, "--state-dir", str(member)]) == 0
    loaded = OwnerKey.load(member)
    assert loaded is not None and loaded.text == owner.text
    other = next(k for k in iter(OwnerKey.generate, None) if k.text.startswith("-"))
    with pytest.raises(SystemExit, match="not the owner key of mesh"):
        main(["owner", "import", other.text, "--state-dir", str(member)])
    assert not seed.exists()
