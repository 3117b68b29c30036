"""A real S3 endpoint for tests: moto's S3 served by a child process on 127.0.0.1, and the environment that
points botocore, and so s3fs and every ``w2s`` process started with it, at that endpoint (no code change).

``python -m tests.s3_server`` is the child: moto's own WSGI app (what ``python -m moto.server`` serves) on a
port the kernel picks, printed on its first line. It serves one request at a time: S3 evaluates a
conditional write (``If-None-Match: *``, what s3fs sends for ``open(mode="xb")``) atomically, while moto's
threaded server checks and then writes in two steps, so two racing creates could both succeed there.
"""
from __future__ import annotations

import select
import subprocess
import sys
import tempfile
import threading
import time
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator

ROOT = Path(__file__).resolve().parent.parent
BUCKET = "w2s-test"


class S3ServerError(RuntimeError):
    """moto's server did not start (not installed, or it failed)."""


@dataclass(frozen=True)
class S3Server:
    """A running endpoint, its bucket, and the environment that makes s3fs use them."""

    endpoint: str
    bucket: str
    env: dict[str, str]

    def url(self, *parts: str) -> str:
        """``s3://BUCKET/PARTS...``."""
        return "s3://" + "/".join((self.bucket, *parts))


def s3_env(endpoint: str) -> dict[str, str]:
    """What a process needs to reach ``endpoint`` with s3fs: dummy credentials, a region, and botocore's
    S3 endpoint variable (fsspec's ``FSSPEC_S3_ENDPOINT_URL`` works as well; docs/scaling.md)."""
    return {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing", "AWS_DEFAULT_REGION": "us-east-1",
            "AWS_ENDPOINT_URL_S3": endpoint}


@contextmanager
def s3_server(bucket: str = BUCKET, timeout_s: float = 30.0) -> Iterator[S3Server]:
    """Start the server, wait (at most ``timeout_s``) until it answers, create ``bucket``; stop it on exit."""
    with tempfile.TemporaryFile() as log:
        proc = subprocess.Popen([sys.executable, "-m", "tests.s3_server"], cwd=ROOT, stdout=subprocess.PIPE,
                                stderr=log, text=True)
        try:
            endpoint = f"http://127.0.0.1:{_port(proc, log, timeout_s)}"
            env = s3_env(endpoint)
            _create_bucket(endpoint, bucket, env, time.monotonic() + timeout_s)
            yield S3Server(endpoint, bucket, env)
        finally:
            proc.terminate()
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(10)
            if proc.stdout is not None:
                proc.stdout.close()


def _port(proc: subprocess.Popen, log: Any, timeout_s: float) -> int:
    """The port the child prints first; an :class:`S3ServerError` with its last error line if it does not."""
    assert proc.stdout is not None
    ready, _, _ = select.select([proc.stdout], [], [], timeout_s)
    line = proc.stdout.readline() if ready else ""
    if line.strip().isdigit():
        return int(line)
    proc.kill()
    proc.wait(10)
    log.seek(0)
    errors = [x for x in log.read().decode(errors="replace").splitlines() if x.strip()]
    why = errors[-1] if errors else f"no port after {timeout_s:g} s"
    raise S3ServerError(f"moto's S3 server did not start ({why}); pip install 'moto[server]'")


def _create_bucket(endpoint: str, bucket: str, env: dict[str, str], deadline: float) -> None:
    """Create ``bucket``, retrying until ``deadline`` while the server does not answer yet."""
    import boto3
    import botocore.exceptions

    client = boto3.client("s3", endpoint_url=endpoint, region_name=env["AWS_DEFAULT_REGION"],
                          aws_access_key_id=env["AWS_ACCESS_KEY_ID"],
                          aws_secret_access_key=env["AWS_SECRET_ACCESS_KEY"])
    while True:
        try:
            client.create_bucket(Bucket=bucket)
            return
        except botocore.exceptions.EndpointConnectionError as exc:
            if time.monotonic() > deadline:
                raise S3ServerError(f"moto's S3 server at {endpoint} does not answer ({exc})") from exc
            time.sleep(0.1)


def main() -> None:
    """Serve moto's app on 127.0.0.1 at a free port, one request at a time; print the port first."""
    from moto.moto_server.werkzeug_app import DomainDispatcherApplication, MotoRequestHandler, create_backend_app
    from werkzeug.serving import make_server

    app = DomainDispatcherApplication(create_backend_app)
    one_at_a_time = threading.Lock()

    def serial(environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
        with one_at_a_time:
            return list(app(environ, start_response))

    server = make_server("127.0.0.1", 0, serial, threaded=True, request_handler=MotoRequestHandler)
    print(server.port, flush=True)
    server.serve_forever()


if __name__ == "__main__":
    main()
