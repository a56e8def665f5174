"""The cluster CA and node certificates: what they say, what identify() accepts."""

from __future__ import annotations

import datetime
import ipaddress
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.x509.oid import ExtendedKeyUsageOID

from statehold.agent import pki
from statehold.errors import InvalidArgument, NotFound, PermissionDenied


def test_node_certificate_names_the_node_and_its_ip(ca: pki.KeyPair) -> None:
    pair = pki.issue(ca, "worker-1", ips=("10.1.2.3",))
    cert = pki.load_cert(pair.cert)
    san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert san.get_values_for_type(x509.DNSName) == ["worker-1"]
    assert san.get_values_for_type(x509.IPAddress) == [ipaddress.ip_address("10.1.2.3")]
    usages = cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    assert {ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH} <= set(usages)
    assert pki.identify(pair.cert, ca.cert) == pki.Identity("worker-1", "node")


def test_controller_role_is_an_identity_too(ca: pki.KeyPair) -> None:
    pair = pki.issue(ca, "statehold-controller", role="controller")
    assert pki.identify(pair.cert, ca.cert).role == "controller"


def test_identify_refuses_another_cas_certificate(ca: pki.KeyPair) -> None:
    other = pki.create_ca("other")
    with pytest.raises(PermissionDenied, match="not issued by the cluster CA"):
        pki.identify(pki.issue(other, "n1").cert, ca.cert)


def test_identify_refuses_the_ca_certificate_itself(ca: pki.KeyPair) -> None:
    with pytest.raises(PermissionDenied):
        pki.identify(ca.cert, ca.cert)


def test_identify_refuses_an_expired_certificate(ca: pki.KeyPair) -> None:
    later = datetime.datetime.now(datetime.UTC) + datetime.timedelta(days=2)
    with pytest.raises(PermissionDenied, match="expired"):
        pki.identify(pki.issue(ca, "n1", days=1).cert, ca.cert, now=later)


def test_bad_requests_are_invalid(ca: pki.KeyPair) -> None:
    with pytest.raises(InvalidArgument):
        pki.issue(ca, "n1", ips=("not-an-ip",))
    with pytest.raises(InvalidArgument):
        pki.issue(ca, "")
    with pytest.raises(InvalidArgument):
        pki.load_cert(b"junk")


def test_files_round_trip_with_a_private_key_mode(ca: pki.KeyPair, tmp_path: Path) -> None:
    pair = pki.issue(ca, "n1", ips=("127.0.0.1",))
    pki.write_node_files(tmp_path / "n1", ca.cert, pair)
    pki.write_ca_files(tmp_path / "ca", ca)
    assert pki.load_bundle(tmp_path / "n1") == pki.Bundle(ca.cert, pair)
    assert pki.load_ca(tmp_path / "ca") == ca
    assert (tmp_path / "n1" / "tls.key").stat().st_mode & 0o777 == 0o600
    assert (tmp_path / "ca" / "ca.key").stat().st_mode & 0o777 == 0o600
    with pytest.raises(NotFound):
        pki.load_bundle(tmp_path / "nowhere")
