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


def one_line_failure(args: list[str], *parts: str) -> str:
    """Run ``w2s ARGS``: a non-zero exit, no traceback, at most three lines, holding every one of ``parts``."""
    msg = fails(args, parts[0])
    for part in parts[1:]:
        assert part in msg, msg
    assert len([line for line in invoke(args).output.splitlines() if line.strip()]) <= 3
    return msg
