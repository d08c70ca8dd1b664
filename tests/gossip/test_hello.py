"""The hello v2 handshake, wired in memory (no sockets, no clock)."""

from __future__ import annotations

from collections.abc import Callable

import pytest

from meshllm.errors import HelloError
from meshllm.gossip.hello import (
    HELLO_VERSION,
    NONCE_BYTES,
    Handshake,
    proof_mac,
    proof_message,
)
from meshllm.identity import Identity
from meshllm.join_token import MeshCredentials
from meshllm.wire import Frame, FrameType, decode_payload, encode_frame, make_frame

Tamper = Callable[[Frame], Frame]


def wire(frame: Frame) -> Frame:
    """``frame`` as the peer decodes it: through msgpack and back."""
    return decode_payload(encode_frame(frame)[4:])


def mesh(mesh_id: str = "m1", secret: bytes = b"s" * 32) -> MeshCredentials:
    return MeshCredentials(mesh_id=mesh_id, secret=secret, owner=bytes(32))


def client_for(
    server_identity: Identity,
    identity: Identity | None = None,
    credentials: MeshCredentials | None = None,
    expected_node_id: str | None = None,
    incarnation: int = 0,
) -> Handshake:
    """A client handshake that saw ``server_identity``'s certificate in TLS."""
    return Handshake(
        is_client=True,
        credentials=credentials or mesh(),
        identity=identity or Identity.generate(),
        incarnation=incarnation,
        peer_certificate_key=server_identity.public_key,
        expected_node_id=expected_node_id,
    )


def server_of(
    identity: Identity, credentials: MeshCredentials | None = None, incarnation: int = 0
) -> Handshake:
    return Handshake(
        is_client=False,
        credentials=credentials or mesh(),
        identity=identity,
        incarnation=incarnation,
    )


def run(
    client: Handshake,
    server: Handshake,
    to_server: Tamper = lambda f: f,
    to_client: Tamper = lambda f: f,
) -> list[tuple[str, str]]:
    """Shuttle frames until neither side has any; returns ``(sender, type)`` in order."""
    log: list[tuple[str, str]] = []
    outbox = [("client", f) for f in client.start()]
    while outbox:
        sender, frame = outbox.pop(0)
        log.append((sender, frame["t"]))
        if sender == "client":
            outbox += [("server", f) for f in server.receive(to_server(wire(frame)))]
        else:
            outbox += [("client", f) for f in client.receive(to_client(wire(frame)))]
    return log


def only(frame_type: FrameType, change: Callable[[Frame], None]) -> Tamper:
    """A tamper that applies ``change`` to frames of ``frame_type``."""

    def tamper(frame: Frame) -> Frame:
        if frame["t"] == frame_type:
            change(frame)
        return frame

    return tamper


# success


def test_handshake_success_exposes_both_peers() -> None:
    c_id, s_id = Identity.generate(), Identity.generate()
    client = client_for(s_id, c_id, expected_node_id=s_id.node_id, incarnation=7)
    server = server_of(s_id, incarnation=9)
    log = run(client, server)
    assert client.done and server.done
    assert (client.peer_node_id, client.peer_public_key, client.peer_incarnation) == (
        s_id.node_id,
        s_id.public_key,
        9,
    )
    assert (server.peer_node_id, server.peer_public_key, server.peer_incarnation) == (
        c_id.node_id,
        c_id.public_key,
        7,
    )
    # Client hello, server hello, client proof, server proof: the server proves last.
    assert log == [
        ("client", "hello"),
        ("server", "hello"),
        ("client", "proof"),
        ("server", "proof"),
    ]


def test_handshake_success_without_expected_node_id() -> None:
    s_id = Identity.generate()
    client, server = client_for(s_id), server_of(s_id)
    run(client, server)
    assert client.done and server.done


def test_handshake_frames_carry_version_and_fields() -> None:
    c_id, s_id = Identity.generate(), Identity.generate()
    client = client_for(s_id, c_id, incarnation=3)
    (hello,) = client.start()
    assert hello["t"] == "hello" and hello["hello"] == HELLO_VERSION == 2
    assert hello["mesh_id"] == "m1" and hello["node_id"] == c_id.node_id
    assert hello["public_key"] == c_id.public_key and hello["incarnation"] == 3
    assert isinstance(hello["nonce"], bytes) and len(hello["nonce"]) == NONCE_BYTES
    (server_hello,) = server_of(s_id).receive(wire(hello))
    (proof,) = client.receive(wire(server_hello))
    assert proof["t"] == "proof" and proof["hello"] == 2
    assert len(proof["mac"]) == 32 and len(proof["sig"]) == 64


def test_handshake_server_sends_nothing_first() -> None:
    assert server_of(Identity.generate()).start() == []


def test_handshake_nonces_are_fresh() -> None:
    s_id = Identity.generate()
    a, b = client_for(s_id).start()[0], client_for(s_id).start()[0]
    assert a["nonce"] != b["nonce"]


# refusals


def test_handshake_wrong_secret_refused_by_server() -> None:
    s_id = Identity.generate()
    client = client_for(s_id, credentials=mesh(secret=b"x" * 32))
    server = server_of(s_id)
    with pytest.raises(
        HelloError, match=r"bad proof: not a member of this mesh \(wrong secret\?\)"
    ):
        run(client, server)
    assert not server.done and not client.done


def test_handshake_bad_server_proof_refused_by_client() -> None:
    s_id = Identity.generate()
    client, server = client_for(s_id), server_of(s_id)
    flip = only(FrameType.PROOF, lambda f: f.update(mac=bytes(32)))
    with pytest.raises(HelloError, match="bad proof: not a member"):
        run(client, server, to_client=flip)
    assert server.done and not client.done


def test_handshake_bad_signature_refused() -> None:
    s_id = Identity.generate()
    client, server = client_for(s_id), server_of(s_id)
    forge = only(FrameType.PROOF, lambda f: f.update(sig=bytes(64)))
    with pytest.raises(HelloError, match="signature is not by the peer's key"):
        run(client, server, to_server=forge)


def test_handshake_wrong_mesh_refused() -> None:
    s_id = Identity.generate()
    client = client_for(s_id, credentials=mesh(mesh_id="other"))
    server = server_of(s_id)
    with pytest.raises(HelloError, match="wrong mesh"):
        run(client, server)
    assert server.peer_node_id is None


def test_handshake_server_refuses_node_id_not_matching_key() -> None:
    s_id = Identity.generate()
    lie = only(FrameType.HELLO, lambda f: f.update(node_id=Identity.generate().node_id))
    with pytest.raises(HelloError, match="does not match its public key"):
        run(client_for(s_id), server_of(s_id), to_server=lie)


def test_handshake_client_refuses_node_id_not_matching_key() -> None:
    s_id = Identity.generate()
    lie = only(FrameType.HELLO, lambda f: f.update(node_id=Identity.generate().node_id))
    with pytest.raises(HelloError, match="does not match its public key"):
        run(client_for(s_id), server_of(s_id), to_client=lie)


def test_handshake_client_refuses_hello_key_not_the_certificate_key() -> None:
    s_id, other = Identity.generate(), Identity.generate()
    client = client_for(other)  # TLS showed another key than the hello will
    with pytest.raises(HelloError, match="not the key of its TLS certificate"):
        run(client, server_of(s_id))
    assert client.peer_node_id is None


def test_handshake_client_refuses_unexpected_node() -> None:
    s_id = Identity.generate()
    client = client_for(s_id, expected_node_id=Identity.generate().node_id)
    with pytest.raises(HelloError, match="unexpected node at that address"):
        run(client, server_of(s_id))
    assert client.peer_node_id is None


def test_handshake_refuses_own_node_id() -> None:
    me = Identity.generate()
    with pytest.raises(HelloError, match="this node's own id"):
        run(client_for(me, identity=me), server_of(me))


def test_handshake_client_needs_the_certificate_key() -> None:
    with pytest.raises(HelloError, match="no usable certificate"):
        Handshake(is_client=True, credentials=mesh(), identity=Identity.generate(), incarnation=0)


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("public_key", b"k" * 31),
        ("public_key", "not bytes"),
        ("nonce", b"n" * 15),
        ("nonce", None),
        ("node_id", 12),
        ("incarnation", -1),
        ("incarnation", True),
        ("incarnation", "1"),
    ],
)
def test_handshake_malformed_hello_refused(field: str, value: object) -> None:
    s_id = Identity.generate()
    bad = only(FrameType.HELLO, lambda f: f.update({field: value}))
    with pytest.raises(HelloError, match="malformed hello"):
        run(client_for(s_id), server_of(s_id), to_server=bad)


@pytest.mark.parametrize(("field", "value"), [("mac", b"m" * 31), ("sig", None)])
def test_handshake_malformed_proof_refused(field: str, value: object) -> None:
    s_id = Identity.generate()
    bad = only(FrameType.PROOF, lambda f: f.update({field: value}))
    with pytest.raises(HelloError, match="malformed proof"):
        run(client_for(s_id), server_of(s_id), to_server=bad)


def test_handshake_frame_out_of_order_refused() -> None:
    server = server_of(Identity.generate())
    with pytest.raises(HelloError, match="unexpected 'proof' frame during the hello"):
        server.receive(make_frame(FrameType.PROOF, hello=2, mac=bytes(32), sig=bytes(64)))
    with pytest.raises(HelloError, match="already failed"):
        server.receive(make_frame(FrameType.HELLO))


def test_handshake_frame_after_the_end_refused() -> None:
    s_id = Identity.generate()
    client, server = client_for(s_id), server_of(s_id)
    run(client, server)
    with pytest.raises(HelloError, match="after the hello ended"):
        server.receive(make_frame(FrameType.HELLO))


# versions


def v1_hello(identity: Identity, mesh_id: str = "m1") -> Frame:
    """A hello as v1 nodes send it: no ``hello`` field."""
    return make_frame(
        FrameType.HELLO,
        mesh_id=mesh_id,
        node_id=identity.node_id,
        public_key=identity.public_key,
        nonce=b"n" * NONCE_BYTES,
        incarnation=0,
    )


V1_MESSAGE = r"peer speaks hello v1; this node needs v2: upgrade it"


def test_handshake_server_refuses_v1_hello() -> None:
    server = server_of(Identity.generate())
    with pytest.raises(HelloError, match=V1_MESSAGE):
        server.receive(wire(v1_hello(Identity.generate())))


def test_handshake_client_refuses_v1_hello() -> None:
    s_id = Identity.generate()
    client = client_for(s_id)
    client.start()
    with pytest.raises(HelloError, match=V1_MESSAGE):
        client.receive(wire(v1_hello(s_id)))


def test_handshake_refuses_v1_proof() -> None:
    s_id = Identity.generate()
    client, server = client_for(s_id), server_of(s_id)
    v1_style = only(FrameType.PROOF, lambda f: f.pop("hello"))
    with pytest.raises(HelloError, match=V1_MESSAGE):
        run(client, server, to_server=v1_style)


def test_handshake_refuses_newer_version() -> None:
    s_id = Identity.generate()
    newer = only(FrameType.HELLO, lambda f: f.update(hello=3))
    with pytest.raises(HelloError, match="peer speaks hello v3; this node speaks v2"):
        run(client_for(s_id), server_of(s_id), to_server=newer)


# the proof's encoding


def test_proof_message_is_unambiguous() -> None:
    # Moving bytes from one field to the next must change the message (v1's "|" join
    # made ("a|b", "c") and ("a", "b|c") the same).
    variants = [
        ("m", b"ab", b"c", b"n1", b"n2"),
        ("m", b"a", b"bc", b"n1", b"n2"),
        ("ma", b"b", b"c", b"n1", b"n2"),
        ("m", b"ab", b"cn", b"1", b"n2"),
        ("m", b"ab", b"c", b"n1n", b"2"),
    ]
    assert len({proof_message(*v) for v in variants}) == len(variants)


def test_proof_message_orders_prover_and_verifier() -> None:
    assert proof_message("m", b"a", b"b", b"1", b"2") != proof_message("m", b"b", b"a", b"2", b"1")


def test_proof_mac_depends_on_the_secret() -> None:
    message = proof_message("m", b"a", b"b", b"1", b"2")
    assert proof_mac(b"x" * 32, message) != proof_mac(b"y" * 32, message)


# relay and replay


def test_relay_pure_shuttle_refused_by_joiner() -> None:
    """M forwards every frame verbatim: J sees S's hello on M's TLS certificate."""
    m_id, s_id, j_id = Identity.generate(), Identity.generate(), Identity.generate()
    joiner = client_for(m_id, j_id, expected_node_id=s_id.node_id)  # TLS ended at M
    seed = server_of(s_id)
    with pytest.raises(HelloError, match="not the key of its TLS certificate"):
        run(joiner, seed)  # the frames pass M unchanged
    assert not seed.done and seed.peer_node_id == j_id.node_id  # it got J's hello only


def test_relay_posing_as_itself_refused_by_joiner_expecting_the_seed() -> None:
    """M answers J with a hello of its own key (matching its certificate)."""
    m_id, s_id, j_id = Identity.generate(), Identity.generate(), Identity.generate()
    joiner = client_for(m_id, j_id, expected_node_id=s_id.node_id)
    as_m = only(
        FrameType.HELLO, lambda f: f.update(node_id=m_id.node_id, public_key=m_id.public_key)
    )
    with pytest.raises(HelloError, match="unexpected node at that address"):
        run(joiner, server_of(s_id), to_client=as_m)


def test_relay_proof_made_for_the_relay_refused_by_seed() -> None:
    """J dials M without an expected id and proves itself to M; M hands J's proof to S.

    J's proof names M's key (the certificate J saw) as the verifier, so S refuses it:
    a proof is good only on the connection it was made for.
    """
    m_id, s_id, j_id = Identity.generate(), Identity.generate(), Identity.generate()
    joiner = client_for(m_id, j_id)  # no expected id: J accepts M as M
    seed = server_of(s_id)
    as_m = only(
        FrameType.HELLO, lambda f: f.update(node_id=m_id.node_id, public_key=m_id.public_key)
    )
    with pytest.raises(HelloError, match="bad proof") as refused:
        run(joiner, seed, to_client=as_m)  # S's nonce goes on to J inside M's hello
    assert "wrong secret" in str(refused.value)
    assert not seed.done


def test_relay_by_a_member_cannot_pose_as_the_joiner() -> None:
    """M knows the mesh secret and re-MACs J's proof for S; J's signature still names M."""
    creds = mesh()
    m_id, s_id, j_id = Identity.generate(), Identity.generate(), Identity.generate()
    joiner, seed = client_for(m_id, j_id), server_of(s_id)
    j_hello = wire(joiner.start()[0])
    s_hello = seed.receive(j_hello)[0]
    as_m = dict(s_hello, node_id=m_id.node_id, public_key=m_id.public_key)
    j_proof = wire(joiner.receive(wire(as_m))[0])
    message = proof_message(
        creds.mesh_id, j_id.public_key, s_id.public_key, j_hello["nonce"], s_hello["nonce"]
    )
    forged = dict(j_proof, mac=proof_mac(creds.secret, message))
    with pytest.raises(HelloError, match="signature is not by the peer's key"):
        seed.receive(forged)
    assert not seed.done


def test_replayed_client_proof_refused() -> None:
    """A proof captured from one handshake is worthless on the next, same peers."""
    c_id, s_id = Identity.generate(), Identity.generate()
    captured: list[Frame] = []
    run(
        client_for(s_id, c_id),
        server_of(s_id),
        to_server=only(FrameType.PROOF, captured.append),
    )
    (old_proof,) = captured
    client, server = client_for(s_id, c_id), server_of(s_id)
    replay = only(FrameType.PROOF, lambda f: f.update(mac=old_proof["mac"], sig=old_proof["sig"]))
    with pytest.raises(HelloError, match="bad proof"):
        run(client, server, to_server=replay)
    assert not server.done


def test_replayed_server_proof_refused() -> None:
    c_id, s_id = Identity.generate(), Identity.generate()
    captured: list[Frame] = []
    run(client_for(s_id, c_id), server_of(s_id), to_client=only(FrameType.PROOF, captured.append))
    (old_proof,) = captured
    client = client_for(s_id, c_id)
    replay = only(FrameType.PROOF, lambda f: f.update(mac=old_proof["mac"], sig=old_proof["sig"]))
    with pytest.raises(HelloError, match="bad proof"):
        run(client, server_of(s_id), to_client=replay)
    assert not client.done
