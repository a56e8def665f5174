"""Every agent call is mutual TLS with the cluster CA: plaintext, a client without a
certificate, a certificate from another CA, and a CA-signed certificate that is not a
Statehold identity are all refused; a node certificate works. Real TCP on 127.0.0.1."""

from __future__ import annotations

import datetime
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from statehold.agent import pki
from statehold.agent.gen import agent_pb2 as pb
from statehold.agent.gen import agent_pb2_grpc
from statehold.agent.server import AgentConfig, AgentServer
from tests.unit.agent.memory_copies import MemoryCopies

LOCAL = ("127.0.0.1",)


@pytest.fixture(scope="module")
def ca() -> pki.KeyPair:
    return pki.create_ca()


@pytest.fixture
def server(ca: pki.KeyPair, tmp_path: Path) -> Iterator[AgentServer]:
    bundle = pki.Bundle(ca.cert, pki.issue(ca, "n1", ips=LOCAL))
    s = AgentServer(AgentConfig(node="n1", listen="127.0.0.1:0", bundle=bundle, home=tmp_path),
                    MemoryCopies())
    s.start(replicate=False)
    try:
        yield s
    finally:
        s.stop(grace=0)


def ping(server: AgentServer, creds: grpc.ChannelCredentials | None) -> pb.PingReply:
    target = f"127.0.0.1:{server.port}"
    channel = grpc.insecure_channel(target) if creds is None else grpc.secure_channel(target, creds)
    with channel:
        stub = agent_pb2_grpc.AgentStub(channel)  # type: ignore[no-untyped-call]
        reply: pb.PingReply = stub.Ping(pb.PingRequest(), timeout=10)
        return reply


def code_of(server: AgentServer, creds: grpc.ChannelCredentials | None) -> grpc.StatusCode:
    with pytest.raises(grpc.RpcError) as info:
        ping(server, creds)
    code: grpc.StatusCode = info.value.code()  # type: ignore[attr-defined]
    return code


def creds(ca_cert: bytes, pair: pki.KeyPair | None) -> grpc.ChannelCredentials:
    if pair is None:
        return grpc.ssl_channel_credentials(root_certificates=ca_cert)
    return grpc.ssl_channel_credentials(root_certificates=ca_cert, private_key=pair.key,
                                        certificate_chain=pair.cert)


def test_a_node_certificate_from_the_cluster_ca_is_served(server: AgentServer, ca: pki.KeyPair) -> None:
    reply = ping(server, creds(ca.cert, pki.issue(ca, "n2", ips=LOCAL)))
    assert (reply.node, reply.caller) == ("n1", "node/n2")


def test_plaintext_is_refused(server: AgentServer) -> None:
    assert code_of(server, None) == grpc.StatusCode.UNAVAILABLE


def test_a_client_without_a_certificate_is_refused(server: AgentServer, ca: pki.KeyPair) -> None:
    assert code_of(server, creds(ca.cert, None)) == grpc.StatusCode.UNAVAILABLE


def test_a_certificate_from_another_ca_is_refused(server: AgentServer, ca: pki.KeyPair) -> None:
    other = pki.create_ca("another-cluster")
    # trusting our CA for the server, but presenting a certificate another CA issued
    client = creds(ca.cert, pki.issue(other, "n2", ips=LOCAL))
    assert code_of(server, client) == grpc.StatusCode.UNAVAILABLE


def test_a_server_from_another_ca_is_refused_by_the_client(server: AgentServer, ca: pki.KeyPair) -> None:
    other = pki.create_ca("another-cluster")
    client = creds(other.cert, pki.issue(other, "n2", ips=LOCAL))
    assert code_of(server, client) == grpc.StatusCode.UNAVAILABLE


def _foreign_leaf(ca: pki.KeyPair) -> pki.KeyPair:
    """Signed by the cluster CA, but no Statehold role (no OU): e.g. a cert for something else."""
    ca_cert = x509.load_pem_x509_certificate(ca.cert)
    ca_key = serialization.load_pem_private_key(ca.key, password=None)
    assert isinstance(ca_key, ec.EllipticCurvePrivateKey)
    key = ec.generate_private_key(ec.SECP256R1())
    now = datetime.datetime.now(datetime.UTC)
    cert = (x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "web")]))
            .issuer_name(ca_cert.subject).public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=1))
            .not_valid_after(now + datetime.timedelta(days=1))
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .sign(ca_key, hashes.SHA256()))
    return pki.KeyPair(cert.public_bytes(serialization.Encoding.PEM),
                       key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                         serialization.NoEncryption()))


def test_a_ca_signed_certificate_without_a_statehold_identity_is_unauthenticated(
        server: AgentServer, ca: pki.KeyPair) -> None:
    assert code_of(server, creds(ca.cert, _foreign_leaf(ca))) == grpc.StatusCode.UNAUTHENTICATED



def test_every_method_is_guarded_streams_included(server: AgentServer, ca: pki.KeyPair) -> None:
    target = f"127.0.0.1:{server.port}"
    with grpc.secure_channel(target, creds(ca.cert, _foreign_leaf(ca))) as channel:
        stub = agent_pb2_grpc.AgentStub(channel)  # type: ignore[no-untyped-call]
        calls = [
            lambda: stub.Replicate(iter([pb.Frame(volume="pool/v", data=b"x")]), timeout=10),
            lambda: stub.CopyStatus(pb.CopyStatusRequest(volume="pool/v"), timeout=10),
            lambda: stub.Promote(pb.RoleRequest(volume="pool/v", epoch=9), timeout=10),
            lambda: stub.SetReplicas(pb.SetReplicasRequest(volume="pool/v"), timeout=10),
        ]
        for call in calls:
            with pytest.raises(grpc.RpcError) as info:
                call()
            assert info.value.code() == grpc.StatusCode.UNAUTHENTICATED  # type: ignore[attr-defined]
