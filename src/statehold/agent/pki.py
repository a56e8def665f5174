"""The cluster's certificate authority and the per-node certificates agents talk with.

Every agent call is mutual TLS: the server and the client each present a certificate
issued by the cluster CA, and each refuses a peer whose chain does not end at it. Keys are
EC P-256 (what every TLS stack, BoringSSL in gRPC included, speaks). In cluster mode the
operator keeps the CA in a Secret and issues node certificates from it; standalone and in
tests, ``statehold agent certs`` writes them to a directory (:func:`write_node_files`).

A node certificate names its node twice: the subject CN and a DNS SAN (what the agent
checks as the caller's identity), plus an IP SAN (what a client dialling ``IP:PORT``
checks the server against). Its subject OU is the *role* (``node``, or ``controller`` for
the operator's client certificate); the agent admits only roles it knows.

Pure functions on PEM bytes; the only I/O is :func:`write_node_files`/:func:`load_bundle`.
:class:`Issuer` offers the same operations on plain bytes to the operator, which keeps the
CA in a Secret (``statehold.controller.agent_certs``, replication.md §8.4) and cannot
import this module.
"""

from __future__ import annotations

import datetime
import ipaddress
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import grpc
from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from statehold.errors import InvalidArgument, NotFound, PermissionDenied

Role = Literal["node", "controller"]
ROLES: tuple[Role, ...] = ("node", "controller")
ORGANIZATION = "statehold.io"
CA_DAYS = 3650
CERT_DAYS = 365

CA_CERT, CA_KEY = "ca.crt", "ca.key"
NODE_CERT, NODE_KEY = "tls.crt", "tls.key"
"""File names in a certificate directory (the same keys as a kubernetes.io/tls Secret)."""


@dataclass(frozen=True, slots=True)
class KeyPair:
    """A certificate and its private key, both PEM."""

    cert: bytes
    key: bytes


@dataclass(frozen=True, slots=True)
class Bundle:
    """What one agent holds: the CA certificate (never the CA key) and its own pair."""

    ca: bytes
    own: KeyPair


@dataclass(frozen=True, slots=True)
class Identity:
    """Who a verified peer certificate says it is."""

    name: str
    role: Role


def _now() -> datetime.datetime:
    return datetime.datetime.now(datetime.UTC)


def _key_pem(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                             serialization.NoEncryption())


def _load_key(pem: bytes) -> ec.EllipticCurvePrivateKey:
    key = serialization.load_pem_private_key(pem, password=None)
    if not isinstance(key, ec.EllipticCurvePrivateKey):
        raise InvalidArgument("the CA key is not an EC key")
    return key


def load_cert(pem: bytes) -> x509.Certificate:
    try:
        return x509.load_pem_x509_certificate(pem)
    except ValueError as exc:
        raise InvalidArgument(f"not a PEM certificate: {exc}") from exc


def create_ca(name: str = "statehold-cluster-ca", *, days: int = CA_DAYS) -> KeyPair:
    """A new self-signed cluster CA (may sign leaf certificates only: path length 0)."""
    key = ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name([
        x509.NameAttribute(NameOID.ORGANIZATION_NAME, ORGANIZATION),
        x509.NameAttribute(NameOID.COMMON_NAME, name),
    ])
    now = _now()
    cert = (
        x509.CertificateBuilder()
        .subject_name(subject).issuer_name(subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=days))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(x509.KeyUsage(
            digital_signature=False, content_commitment=False, key_encipherment=False,
            data_encipherment=False, key_agreement=False, key_cert_sign=True, crl_sign=True,
            encipher_only=False, decipher_only=False), critical=True)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .sign(key, hashes.SHA256())
    )
    return KeyPair(cert.public_bytes(serialization.Encoding.PEM), _key_pem(key))


def issue(ca: KeyPair, name: str, *, ips: tuple[str, ...] = (), role: Role = "node",
          days: int = CERT_DAYS) -> KeyPair:
    """A certificate for ``name`` (a node name) signed by ``ca``, for both ends of TLS.

    SANs: DNS ``name`` and every address in ``ips`` (what a client dialling the agent by
    IP verifies)."""
    if not name or role not in ROLES:
        raise InvalidArgument(f"a certificate needs a name and a role in {ROLES}")
    try:
        addresses = [x509.IPAddress(ipaddress.ip_address(ip)) for ip in ips]
    except ValueError as exc:
        raise InvalidArgument(f"not an IP address: {exc}") from exc
    ca_cert, ca_key = load_cert(ca.cert), _load_key(ca.key)
    key = ec.generate_private_key(ec.SECP256R1())
    now = _now()
    cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, ORGANIZATION),
            x509.NameAttribute(NameOID.ORGANIZATIONAL_UNIT_NAME, role),
            x509.NameAttribute(NameOID.COMMON_NAME, name),
        ]))
        .issuer_name(ca_cert.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=days))
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.KeyUsage(
            digital_signature=True, content_commitment=False, key_encipherment=False,
            data_encipherment=False, key_agreement=False, key_cert_sign=False, crl_sign=False,
            encipher_only=False, decipher_only=False), critical=True)
        .add_extension(x509.ExtendedKeyUsage(
            [ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH]), critical=False)
        .add_extension(x509.SubjectAlternativeName([x509.DNSName(name), *addresses]), critical=False)
        .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()),
                       critical=False)
        .sign(ca_key, hashes.SHA256())
    )
    return KeyPair(cert.public_bytes(serialization.Encoding.PEM), _key_pem(key))


def identify(peer_pem: bytes, ca_pem: bytes, *, now: datetime.datetime | None = None) -> Identity:
    """The identity in a peer's certificate, after checking that the CA signed it, that it
    is valid now and that it carries a Statehold role; PermissionDenied otherwise.

    gRPC has already verified the chain during the handshake (``require_client_auth``);
    this is the second, explicit check that the peer is one of ours and who it is."""
    cert, ca = load_cert(peer_pem), load_cert(ca_pem)
    try:
        cert.verify_directly_issued_by(ca)
    except (ValueError, TypeError, InvalidSignature) as exc:
        raise PermissionDenied("peer certificate is not issued by the cluster CA") from exc
    now = now or _now()
    if not cert.not_valid_before_utc <= now <= cert.not_valid_after_utc:
        raise PermissionDenied("peer certificate is expired or not yet valid")
    if cert.extensions.get_extension_for_class(x509.BasicConstraints).value.ca:
        raise PermissionDenied("peer presented a CA certificate")
    names = [a.value for a in cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)]
    roles = [a.value for a in cert.subject.get_attributes_for_oid(NameOID.ORGANIZATIONAL_UNIT_NAME)]
    if len(names) != 1 or len(roles) != 1 or roles[0] not in ROLES:
        raise PermissionDenied("peer certificate carries no Statehold node or controller identity")
    return Identity(str(names[0]), next(r for r in ROLES if r == roles[0]))


@dataclass(frozen=True, slots=True)
class CertFacts:
    """What the operator checks of an issued certificate before it issues a new one."""

    name: str
    ips: tuple[str, ...]
    not_after: datetime.datetime


def facts(pem: bytes) -> CertFacts:
    """The common name, IP SANs and end of validity of a certificate."""
    cert = load_cert(pem)
    names = [str(a.value) for a in cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)]
    try:
        sans = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
        ips = tuple(sorted(str(ip) for ip in sans.get_values_for_type(x509.IPAddress)))
    except x509.ExtensionNotFound:
        ips = ()
    return CertFacts(names[0] if names else "", ips, cert.not_valid_after_utc)


class Issuer:
    """The cluster CA's operations on PEM bytes, for the operator's Secret handling."""

    def new_ca(self) -> tuple[bytes, bytes]:
        """A new cluster CA: (certificate, key)."""
        ca = create_ca()
        return ca.cert, ca.key

    def issue(self, ca_cert: bytes, ca_key: bytes, name: str, ips: Sequence[str],
              role: str) -> tuple[bytes, bytes]:
        """A certificate for ``name`` (a node, or the operator with role ``controller``):
        (certificate, key)."""
        which = next((r for r in ROLES if r == role), None)
        if which is None:
            raise InvalidArgument(f"role {role!r} is not one of {ROLES}")
        pair = issue(KeyPair(ca_cert, ca_key), name, ips=tuple(ips), role=which)
        return pair.cert, pair.key

    def describe(self, cert: bytes) -> tuple[tuple[str, ...], datetime.datetime]:
        """(IP SANs, end of validity) of a certificate."""
        f = facts(cert)
        return f.ips, f.not_after


def server_credentials(bundle: Bundle) -> grpc.ServerCredentials:
    """TLS for the agent's port: its own pair, and every client must present a certificate
    that chains to the cluster CA (there is no plaintext port)."""
    return grpc.ssl_server_credentials([(bundle.own.key, bundle.own.cert)],
                                       root_certificates=bundle.ca, require_client_auth=True)


def channel_credentials(bundle: Bundle) -> grpc.ChannelCredentials:
    """TLS to another agent: trust only the cluster CA, present our own certificate."""
    return grpc.ssl_channel_credentials(root_certificates=bundle.ca, private_key=bundle.own.key,
                                        certificate_chain=bundle.own.cert)


# ---- files -------------------------------------------------------------------------------

def write_node_files(out: Path, ca_cert: bytes, own: KeyPair) -> list[Path]:
    """Write ``ca.crt``, ``tls.crt`` and ``tls.key`` (0600) into ``out``, atomically each."""
    out.mkdir(parents=True, exist_ok=True)
    written = []
    for name, data, mode in ((CA_CERT, ca_cert, 0o644), (NODE_CERT, own.cert, 0o644),
                             (NODE_KEY, own.key, 0o600)):
        written.append(_write(out / name, data, mode))
    return written


def write_ca_files(out: Path, ca: KeyPair) -> list[Path]:
    """Write the CA's ``ca.crt`` and ``ca.key`` (0600) into ``out``."""
    out.mkdir(parents=True, exist_ok=True)
    return [_write(out / CA_CERT, ca.cert, 0o644), _write(out / CA_KEY, ca.key, 0o600)]


def load_ca(directory: Path) -> KeyPair:
    return KeyPair(_read(directory / CA_CERT), _read(directory / CA_KEY))


def load_bundle(directory: Path) -> Bundle:
    """An agent's certificates from a directory written by :func:`write_node_files`."""
    return Bundle(_read(directory / CA_CERT), KeyPair(_read(directory / NODE_CERT),
                                                      _read(directory / NODE_KEY)))


def _write(path: Path, data: bytes, mode: int) -> Path:
    tmp = path.with_name(f".{path.name}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, mode)
    try:
        os.write(fd, data)
        os.fsync(fd)
    finally:
        os.close(fd)
    os.replace(tmp, path)
    return path


def _read(path: Path) -> bytes:
    try:
        return path.read_bytes()
    except FileNotFoundError as exc:
        raise NotFound(f"no {path.name} in {path.parent}") from exc
    except OSError as exc:
        raise InvalidArgument(f"cannot read {path}: {exc.strerror}") from exc
