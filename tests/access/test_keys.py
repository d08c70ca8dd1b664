"""API keys: statements, the book's merge rules (in any order), and the checks of a presented
key, on a fake clock."""

from __future__ import annotations

import itertools
import math

import pytest

from meshllm.access.keys import (
    EXPIRED_KEEP_S,
    KEY_KIND,
    KEY_TEXT_CHARS,
    ApiKey,
    KeyBook,
    KeyRefused,
    create_statement,
    key_id_of,
    new_key,
    revoke_statement,
)
from meshllm.errors import AuthError, ConfigError
from meshllm.owner import OwnerKey, sign_statement

MESH = "0123456789abcdef"
T0 = 1_700_000_000.0
OWNER = OwnerKey.generate()


def make(now: float = T0, **kw: object) -> tuple[str, ApiKey]:
    settings: dict = {"name": "ci", "scope": "inference", "models": (), "expires": None}
    settings |= {"rpm": None, "tpm": None, **kw}
    return new_key(**settings, now=now)


def book(capacity: int = 1024) -> KeyBook:
    return KeyBook(OWNER.public_key, MESH, capacity)


def created(key: ApiKey, now: float = T0, owner: OwnerKey = OWNER, mesh: str = MESH) -> dict:
    return create_statement(owner, key, mesh_id=mesh, now=now)


def revoked(key_id: str, now: float = T0) -> dict:
    return revoke_statement(OWNER, key_id, mesh_id=MESH, now=now)


def refusal(b: KeyBook, text: str | None, now: float = T0) -> KeyRefused:
    with pytest.raises(KeyRefused) as info:
        b.authenticate(text, now)
    return info.value


def test_new_key_text_and_record() -> None:
    text, key = make(name="team a", scope="admin", models=["m1", "org/m2"], rpm=60, tpm=1000)
    assert len(text) == KEY_TEXT_CHARS and text.startswith(f"mk-{key.id}-")
    assert key_id_of(text) == key.id
    assert key.models == ("m1", "org/m2") and key.created == T0
    assert len(key.secret_hash) == 32 and key.secret_hash not in text.encode()
    public = key.public()
    assert "secret_hash" not in public and "hash" not in public
    assert public == {
        "id": key.id,
        "name": "team a",
        "scope": "admin",
        "models": ["m1", "org/m2"],
        "expires": None,
        "rpm": 60,
        "tpm": 1000,
        "created": T0,
    }


@pytest.mark.parametrize(
    "bad",
    [
        {"scope": "root"},
        {"name": " lead"},
        {"name": "x" * 65},
        {"name": "a\nb"},
        {"models": ["../etc"]},
        {"models": ["m"] * 2},
        {"models": [f"m{i}" for i in range(65)]},
        {"models": ["m" * 201]},
        {"rpm": 0},
        {"rpm": 10**9 + 1},
        {"tpm": True},
        {"tpm": 1.5},
        {"expires": math.inf},
    ],
)
def test_new_key_bad_settings_raise_config_error(bad: dict) -> None:
    with pytest.raises(ConfigError, match="bad key"):
        make(**bad)


def test_new_key_name_may_be_empty() -> None:
    _, key = make(name="")
    b = book()
    assert b.add(created(key), T0) and b.keys(T0)[0]["name"] == ""


def test_key_id_of() -> None:
    text, key = make()
    assert key_id_of(text) == key.id
    assert key_id_of(f"mk-{key.id}-short") == key.id
    for junk in (None, "", "sk-abc", "mk-ABCDEF012345-x", "mk-0123456789a", "mk-0123456789ab"):
        assert key_id_of(junk) is None


def test_authenticate_ok() -> None:
    text, key = make(expires=T0 + 100)
    b = book()
    assert b.add(created(key), T0) is True
    assert b.authenticate(text, T0 + 99) == key
    assert b.authenticate(f"  {text}\n", T0) == key


def test_authenticate_refusals() -> None:
    text, key = make(expires=T0 + 100)
    other_text, other = make()
    b = book()
    b.add(created(key), T0)
    b.add(created(other), T0)
    b.add(revoked(other.id), T0)
    secret = text.split("-", 2)[2]
    wrong = text[:-4] + ("AAAA" if not text.endswith("AAAA") else "BBBA")
    cases = {
        None: "missing_api_key",
        "": "missing_api_key",
        "Bearer " + text: "invalid_api_key",
        text[:-1]: "invalid_api_key",
        text + "x": "invalid_api_key",
        text[:-1] + "!": "invalid_api_key",
        wrong: "invalid_api_key",
        make()[0]: "invalid_api_key",  # unknown id
        other_text: "revoked_api_key",
    }
    for presented, code in cases.items():
        refused = refusal(b, presented)
        assert (refused.status, refused.code) == (401, code), presented
        assert secret not in refused.message and (presented or "x") not in refused.message
    expired = refusal(b, text, T0 + 100)
    assert (expired.status, expired.code) == (401, "expired_api_key")
    assert isinstance(expired, AuthError)


def test_authenticate_refuses_noncanonical_secret() -> None:
    text, key = make()
    b = book()
    b.add(created(key), T0)
    # The last base64url char of 32 bytes carries 2 unused bits: other chars decode the same.
    alphabet = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_"
    last = alphabet.index(text[-1])
    twin = text[:-1] + alphabet[last ^ 1]
    assert refusal(b, twin).code == "invalid_api_key"


def test_revoked_key_with_wrong_secret_reads_invalid() -> None:
    text, key = make()
    b = book()
    b.add(created(key), T0)
    b.add(revoked(key.id), T0)
    assert refusal(b, text[:-2] + ("AA" if text[-2:] != "AA" else "BA")).code == "invalid_api_key"


def test_check_scope_and_models() -> None:
    b = book()
    _, inference = make(models=["m1"])
    _, admin = make(scope="admin")
    assert b.check(inference, scope="inference", model="m1") is None
    assert b.check(inference, scope="inference", model=None) is None  # names no model
    denied = b.check(inference, scope="inference", model="m2")
    assert denied is not None and (denied.status, denied.code) == (403, "model_not_allowed")
    denied = b.check(inference, scope="admin", model=None)
    assert denied is not None and (denied.status, denied.code) == (403, "insufficient_scope")
    assert b.check(admin, scope="admin", model=None) is None
    assert b.check(admin, scope="inference", model="anything") is None
    with pytest.raises(ValueError):
        b.check(admin, scope="root", model=None)


def test_statements_from_another_owner_or_mesh_are_refused() -> None:
    _, key = make()
    b = book()
    with pytest.raises(AuthError, match="not signed by the mesh owner"):
        b.add(created(key, owner=OwnerKey.generate()), T0)
    with pytest.raises(AuthError, match="not this mesh"):
        b.add(created(key, mesh="fedcba9876543210"), T0)
    other_kind = sign_statement(OWNER, "drop", {"op": "revoke", "id": key.id}, T0, mesh_id=MESH)
    with pytest.raises(AuthError, match="kind"):
        b.add(other_kind, T0)
    assert len(b) == 0 and not b


def test_tampered_statement_is_refused() -> None:
    _, key = make(scope="inference")
    statement = created(key)
    statement["body"] = {**statement["body"], "scope": "admin"}
    with pytest.raises(AuthError, match="not signed"):
        book().add(statement, T0)


def signed(body: dict) -> dict:
    return sign_statement(OWNER, KEY_KIND, body, T0, mesh_id=MESH)


@pytest.mark.parametrize(
    "change",
    [
        {"op": "rename"},
        {"id": "ABCDEF012345"},
        {"id": "0123"},
        {"hash": b"x" * 31},
        {"hash": "x" * 32},
        {"name": "x" * 65},
        {"name": "bad\x00"},
        {"scope": ["admin"]},
        {"models": "m1"},
        {"models": [1]},
        {"rpm": -1},
        {"tpm": 10**9 + 1},
        {"expires": "never"},
        {"created": None},
        {"created": math.nan},
        {"extra": 1},
    ],
)
def test_bad_create_body_is_refused(change: dict) -> None:
    _, key = make()
    body = {**created(key)["body"], **change}
    with pytest.raises(AuthError):
        book().add(signed(body), T0)


def test_bad_revoke_body_and_statement_shapes_are_refused() -> None:
    b = book()
    bodies = [{"op": "revoke"}, {"op": "revoke", "id": "x"}]
    bodies.append({"op": "revoke", "id": "0" * 12, "x": 1})
    for body in bodies:
        with pytest.raises(AuthError):
            b.add(signed(body), T0)
    for junk in (None, [], "x", {"kind": KEY_KIND}):
        with pytest.raises(AuthError):
            b.add(junk, T0)


def test_same_create_twice_is_old_news_other_content_refused() -> None:
    _, key = make()
    b = book()
    assert b.add(created(key), T0) is True
    assert b.add(created(key), T0) is False
    assert b.add(created(key, now=T0 + 5), T0 + 5) is False  # re-signed: same key
    with pytest.raises(AuthError, match="other settings"):
        b.add(created(ApiKey(**{**key.__dict__, "rpm": 5})), T0)
    assert b.add(revoked(key.id), T0) is True
    assert b.add(revoked(key.id, now=T0 + 1), T0 + 1) is False
    assert len(b) == 1


def test_revocation_before_create_stays_revoked() -> None:
    text, key = make()
    b = book()
    assert b.add(revoked(key.id), T0) is True
    assert len(b) == 1 and not b
    assert b.add(created(key), T0) is True
    assert refusal(b, text).code == "revoked_api_key"
    assert not b
    assert b.keys(T0)[0]["revoked"] is True


def test_any_order_agrees_on_digest_and_authentication() -> None:
    keys = [make(expires=T0 + 50 if i == 1 else None) for i in range(3)]
    (_, a), (_, b_key), (_, c) = keys
    statements = [
        created(a),
        created(b_key),
        revoked(a.id),
        revoked(c.id),
        created(c),
        created(b_key, now=T0 + 1),  # the same key signed again
    ]
    outcomes = set()
    for order in itertools.permutations(statements):
        b = book()
        for statement in order:
            b.add(statement, T0 + 1)
        accepted = []
        for text, _ in keys:
            try:
                accepted.append(b.authenticate(text, T0 + 1).id)
            except KeyRefused as exc:
                accepted.append(exc.code)
        outcomes.add((b.digest(), tuple(accepted), len(b), bool(b)))
    assert len(outcomes) == 1
    digest, accepted, size, any_key = outcomes.pop()
    assert accepted == ("revoked_api_key", b_key.id, "revoked_api_key")
    assert size == 3 and any_key and len(digest) == 16


def test_statements_round_trip_into_another_book() -> None:
    b = book()
    for i in range(3):
        _, key = make(now=T0 + i)
        b.add(created(key), T0 + i)
    b.add(revoked(key.id), T0 + 3)
    b.add(revoked("0" * 12), T0 + 3)
    copy = book()
    for statement in reversed(b.statements()):
        assert copy.add(statement, T0 + 10) is True
    assert copy.digest() == b.digest()
    assert copy.statements() == b.statements()
    held = b.statements()
    first_create = next(s for s in held if s["body"]["op"] == "create")
    first_create["body"]["name"] = "mutated"  # a copy: the book is not changed
    assert all(s["body"].get("name") != "mutated" for s in b.statements())


def test_digest_differs_when_content_does() -> None:
    _, key = make()
    a, b = book(), book()
    a.add(created(key), T0)
    b.add(created(key), T0)
    assert a.digest() == b.digest()
    b.add(revoked(key.id), T0)
    assert a.digest() != b.digest()


def test_capacity() -> None:
    b = book(capacity=2)
    texts = []
    for _ in range(2):
        text, key = make()
        texts.append(text)
        assert b.add(created(key), T0)
    _, third = make()
    with pytest.raises(AuthError, match="key book full"):
        b.add(created(third), T0)
    assert b.add(revoked(third.id), T0) is True  # a revocation is always taken
    assert b.add(created(third), T0) is True  # its record is already held
    assert len(b) == 3
    _, fourth = make()
    with pytest.raises(AuthError, match="key book full"):
        b.add(created(fourth), T0)
    for text in texts:
        b.authenticate(text, T0)


def test_prune() -> None:
    b = book(capacity=3)
    _, old = make(expires=T0 + 10)
    _, old_revoked = make(expires=T0 + 10)
    _, forever = make()
    for key in (old, old_revoked, forever):
        b.add(created(key), T0)
    b.add(revoked(old_revoked.id), T0)
    b.add(revoked(forever.id), T0)
    b.add(revoked("0" * 12), T0)  # its create never came: kept
    assert b.prune(T0 + 10 + EXPIRED_KEEP_S) == 0  # expired, still listed
    listing = {k["id"]: k for k in b.keys(T0 + 10 + EXPIRED_KEEP_S)}
    assert listing[old.id]["expired"] and not listing[forever.id]["expired"]
    assert b.prune(T0 + 11 + EXPIRED_KEEP_S) == 3
    assert len(b) == 2
    assert {k["id"] for k in b.keys(T0)} == {forever.id}
    # Gossip bringing the old create back changes nothing; the room freed takes a new key.
    assert b.add(created(old), T0 + 11 + EXPIRED_KEEP_S) is False
    _, new = make()
    assert b.add(created(new), T0 + 11 + EXPIRED_KEEP_S) is True


def test_bool_means_any_unrevoked_key() -> None:
    b = book()
    assert not b
    text, key = make(expires=T0 + 1)
    b.add(created(key), T0)
    assert b
    refusal(b, text, T0 + 5)
    assert b  # expired but not revoked: keys are still configured
    b.add(revoked(key.id), T0)
    assert not b


def test_keys_listing() -> None:
    b = book()
    _, first = make(now=T0, name="first")
    _, second = make(now=T0 + 1, name="second")
    b.add(created(second), T0 + 1)
    b.add(created(first), T0 + 1)
    b.add(revoked(second.id), T0 + 1)
    listing = b.keys(T0 + 1)
    assert [k["name"] for k in listing] == ["first", "second"]
    assert [k["revoked"] for k in listing] == [False, True]
    assert all("hash" not in k and "secret_hash" not in k for k in listing)


def test_future_statement_is_refused_until_its_time() -> None:
    _, key = make()
    b = book()
    statement = created(key, now=T0 + 60)
    with pytest.raises(AuthError, match="future"):
        b.add(statement, T0)
    assert b.add(statement, T0 + 60) is True
    assert b.add(statement, T0 + 10**9) is False  # never too old
