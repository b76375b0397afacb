"""In-process runs of ``simgpu.cli.main`` for the CLI and sweep tests."""

from __future__ import annotations

import json

import pytest

from simgpu.cli import main


def run_json(capsys: pytest.CaptureFixture[str], *argv: str) -> object:
    """Run a command that must succeed; return its stdout parsed as JSON."""
    rc = main(list(argv))
    out, err = capsys.readouterr()
    assert rc == 0, err
    assert "Traceback" not in err
    return json.loads(out)


def run_ok(capsys: pytest.CaptureFixture[str], *argv: str) -> str:
    """Run a command that must succeed; return its stdout."""
    rc = main(list(argv))
    out, err = capsys.readouterr()
    assert rc == 0, err
    return out


def run_error(capsys: pytest.CaptureFixture[str], *argv: str) -> str:
    """Run a command that must fail cleanly; return its one error line."""
    rc = main(list(argv))
    out, err = capsys.readouterr()
    assert rc == 2, (rc, out, err)
    assert "Traceback" not in err
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert lines[0].startswith("simgpu: error:"), err
    return lines[0]
