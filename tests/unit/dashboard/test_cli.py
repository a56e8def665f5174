"""``statehold dashboard`` is registered and listens on the loopback only."""

from __future__ import annotations

from typer.testing import CliRunner

from statehold.cli.main import build_app


def test_dashboard_refuses_a_non_loopback_address_before_connecting() -> None:
    res = CliRunner().invoke(build_app(), ["dashboard", "--listen", "0.0.0.0:8089"])
    assert res.exit_code != 0
    assert "loopback" in res.output


def test_allow_snapshots_is_for_the_standalone_mode_only() -> None:
    res = CliRunner().invoke(build_app(), ["dashboard", "--allow-snapshots"])
    assert res.exit_code != 0
    assert "--standalone" in res.output
