"""Store fixtures: a real S3 endpoint (moto's server in a child process) for stores at ``s3://`` URLs."""
from __future__ import annotations

from contextlib import ExitStack
from typing import Iterator

import pytest

from tests.s3_server import S3Server, S3ServerError, s3_server


@pytest.fixture(scope="session")
def s3() -> Iterator[S3Server]:
    """The session's S3 server; its environment is set in this process, so children started from it inherit it."""
    pytest.importorskip("s3fs", reason="s3fs is not installed (pip install -e '.[test]')")
    with ExitStack() as stack:
        try:
            server = stack.enter_context(s3_server())
        except S3ServerError as exc:
            pytest.skip(str(exc))
        env = stack.enter_context(pytest.MonkeyPatch.context())
        for key, value in server.env.items():
            env.setenv(key, value)
        yield server
