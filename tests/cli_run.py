"""Running the ``w2s`` app in-process for tests: success with its JSON result, or a one-line failure."""
from __future__ import annotations

import json
from typing import Any

from typer.testing import CliRunner

from cli import app

runner = CliRunner()


def invoke(args: list[str]) -> Any:
    """The click Result of ``w2s ARGS``."""
    return runner.invoke(app, args)


def ok(args: list[str]) -> dict:
    """Run ``w2s ARGS``, require exit 0, and parse the JSON line it prints last."""
    res = runner.invoke(app, args)
    assert res.exit_code == 0, res.output
    return json.loads(res.stdout.strip().splitlines()[-1])


def fails(args: list[str], pattern: str) -> str:
    """Run ``w2s ARGS``, require a non-zero exit with ``pattern`` in its message and no traceback."""
    res = runner.invoke(app, args)
    assert res.exit_code != 0
    joined = " ".join(line for line in res.output.strip().splitlines() if line.strip())
    assert joined, "no message"
    assert pattern in joined, joined
    assert "Traceback" not in res.output
    return joined
