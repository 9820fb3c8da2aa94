"""`tally cluster` and `tally drill failover` refuse bad input with a message, never a
traceback, before anything starts."""

from __future__ import annotations

import argparse
from pathlib import Path

import pytest

from core.cli import main
from core.drills import failover


@pytest.mark.parametrize(
    ("words", "message"),
    [
        (["cluster", "up", "--port-base", "80"], "--port-base must be in 1024.."),
        (["cluster", "up", "--timeout", "0"], "--timeout must be > 0"),
        (["cluster", "status", "--dir", "/nonexistent/tally"], "no topology.json"),
        (["cluster", "down", "--dir", "/nonexistent/tally"], "no cluster directory"),
    ],
)
def test_cluster_bad_input_is_a_message(
    words: list[str], message: str, capsys: pytest.CaptureFixture[str]
) -> None:
    """Each bad option or missing cluster exits 1 with a one-line reason."""
    assert main(words) == 1
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err


def _drill_args(tmp_path: Path, **changes: object) -> argparse.Namespace:
    args = argparse.Namespace(
        seconds=1.0,
        clients=1,
        customer_clients=1,
        scenario="dc1",
        output=str(tmp_path / "drill.json"),
        save=None,
        dir=None,
        port_base=None,
        rules="examples/limits.toml",
        json=True,
    )
    for name, value in changes.items():
        setattr(args, name, value)
    return args


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"seconds": 0.0}, "--seconds must be > 0"),
        ({"clients": 0}, "--clients must be >= 1"),
        ({"customer_clients": 0}, "--customer-clients must be >= 1"),
        ({"port_base": 70000}, "--port-base must be in"),
        ({"rules": "/nonexistent.toml"}, "no such file"),
        ({"dir": "."}, "exists"),
    ],
)
def test_drill_bad_input_refused_before_start(
    tmp_path: Path, changes: dict[str, object], message: str, capsys: pytest.CaptureFixture[str]
) -> None:
    """The drill checks its options first: exit 2, the reason, no cluster started."""
    assert failover.run(_drill_args(tmp_path, **changes)) == 2
    assert message in capsys.readouterr().err
    assert not (tmp_path / "drill.json").exists()
