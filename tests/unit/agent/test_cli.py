"""``statehold agent certs``: one CA made on first use, then reused for every node."""

from __future__ import annotations

from pathlib import Path

from typer.testing import CliRunner

from statehold.agent import pki
from statehold.cli.main import build_app


def certs(tmp_path: Path, node: str, *extra: str) -> list[str]:
    result = CliRunner().invoke(build_app(), ["agent", "certs", "--out", str(tmp_path / node),
                                              "--ca-dir", str(tmp_path / "ca"), "--node", node,
                                              *extra])
    assert result.exit_code == 0, (result.stdout, result.stderr)
    return result.stdout.split()


def test_certs_share_one_ca_and_name_their_node(tmp_path: Path) -> None:
    assert certs(tmp_path, "n1", "--ip", "10.0.0.1") == [
        str(tmp_path / "n1" / name) for name in ("ca.crt", "tls.crt", "tls.key")]
    certs(tmp_path, "ctl", "--role", "controller")
    ca = pki.load_ca(tmp_path / "ca")
    n1, ctl = pki.load_bundle(tmp_path / "n1"), pki.load_bundle(tmp_path / "ctl")
    assert n1.ca == ctl.ca == ca.cert
    assert pki.identify(n1.own.cert, ca.cert) == pki.Identity("n1", "node")
    assert pki.identify(ctl.own.cert, ca.cert) == pki.Identity("ctl", "controller")


def test_an_unknown_role_is_bad_input(tmp_path: Path) -> None:
    result = CliRunner().invoke(build_app(), ["agent", "certs", "--out", str(tmp_path / "x"),
                                              "--ca-dir", str(tmp_path / "ca"), "--node", "x",
                                              "--role", "admin"])
    assert result.exit_code == 2 and not (tmp_path / "x").exists()


def test_replicas_with_a_bad_rpo_is_refused_before_any_agent_is_reached(tmp_path: Path) -> None:
    # no certificates exist at --certs: reaching for the agent would fail differently
    result = CliRunner().invoke(build_app(), ["agent", "replicas", "pool/vol", "n2@127.0.0.1:1",
                                              "--rpo", "5x", "--address", "127.0.0.1:1",
                                              "--certs", str(tmp_path / "none")])
    assert result.exit_code == 2 and "duration" in result.stderr
