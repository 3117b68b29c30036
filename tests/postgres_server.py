"""A throwaway PostgreSQL server for tests: ``initdb`` in a temporary directory, ``postgres`` on 127.0.0.1.

One superuser with trust authentication, a free TCP port, no Unix socket, fsync off; stopped on exit
(fast shutdown, then SIGKILL), every wait bounded. PostgreSQL refuses to run as root: as root the
server runs as the ``postgres`` user (else ``nobody``), through ``setpriv`` with the ambient capability
CAP_DAC_READ_SEARCH, so it reaches a data directory under root's private pytest directory (0700)
without loosening that directory's permissions. Where the machine cannot run it,
``PostgresUnavailable`` says why in one line, for ``pytest.skip``.
"""
from __future__ import annotations

import contextlib
import glob
import os
import pwd
import shutil
import signal
import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

START_TIMEOUT_S = 60.0
STOP_TIMEOUT_S = 15.0


class PostgresUnavailable(RuntimeError):
    """This machine cannot run the test server; the message is one line, for ``pytest.skip``."""


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def bin_dir() -> Path:
    """The folder with ``initdb`` and ``postgres``: on PATH, else Debian's newest /usr/lib/postgresql/<v>/bin."""
    found = shutil.which("initdb")
    if found:
        return Path(found).parent
    versions = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"),
                      key=lambda p: int(Path(p).parts[-3]) if Path(p).parts[-3].isdigit() else 0)
    if not versions:
        raise PostgresUnavailable("initdb not found (apt-get install postgresql)")
    return Path(versions[-1]).parent


def as_server_user(cmd: list[str], data: Path) -> list[str]:
    """``cmd`` as it must run: unchanged for a normal user; as root, as an unprivileged owner of ``data``."""
    if os.geteuid() != 0:
        return cmd
    setpriv = shutil.which("setpriv")
    if setpriv is None:
        raise PostgresUnavailable("running as root, and setpriv (util-linux) is missing to start postgres as another user")
    for name in ("postgres", "nobody"):
        try:
            user = pwd.getpwnam(name)
            break
        except KeyError:
            continue
    else:
        raise PostgresUnavailable("running as root, and there is no postgres or nobody user to run the server as")
    os.chown(data, user.pw_uid, user.pw_gid)
    return [setpriv, f"--reuid={user.pw_uid}", f"--regid={user.pw_gid}", "--clear-groups",
            "--inh-caps=+dac_read_search", "--ambient-caps=+dac_read_search", *cmd]


def _last_line(text: str) -> str:
    lines = [line for line in text.splitlines() if line.strip()]
    return lines[-1] if lines else "no output"


@contextlib.contextmanager
def postgres_server(tmp_dir: Path, user: str = "w2s", database: str = "w2s") -> Iterator[str]:
    """Start a server whose files live in ``tmp_dir``; yields ``postgresql://user@127.0.0.1:PORT/database``."""
    try:
        import psycopg2
    except ImportError:
        raise PostgresUnavailable("psycopg2 is not installed (pip install -e '.[test]')") from None
    binaries = bin_dir()
    data = tmp_dir / "pgdata"
    data.mkdir(mode=0o700)
    init = subprocess.run(as_server_user([str(binaries / "initdb"), "-D", str(data), "-U", user, "--auth=trust",
                                          "-E", "UTF8", "--no-sync"], data),
                          capture_output=True, text=True, timeout=START_TIMEOUT_S, cwd=data, check=False)
    if init.returncode != 0:
        raise PostgresUnavailable(f"initdb failed: {_last_line(init.stdout + init.stderr)}")
    port = free_port()
    log = tmp_dir / "postgres.log"
    with open(log, "w") as f:
        proc = subprocess.Popen(as_server_user([str(binaries / "postgres"), "-D", str(data), "-h", "127.0.0.1",
                                                "-p", str(port), "-k", "", "-c", "fsync=off"], data),
                                stdout=f, stderr=subprocess.STDOUT, cwd=data, start_new_session=True)
    try:
        deadline = time.monotonic() + START_TIMEOUT_S
        while True:
            if proc.poll() is not None:
                raise PostgresUnavailable(f"postgres exited with code {proc.returncode}: {_last_line(log.read_text())}")
            try:
                conn = psycopg2.connect(host="127.0.0.1", port=port, user=user, dbname="postgres", connect_timeout=5)
                break
            except psycopg2.OperationalError as exc:
                if time.monotonic() > deadline:
                    raise PostgresUnavailable(f"postgres did not accept connections in {START_TIMEOUT_S:.0f} s: "
                                              f"{_last_line(str(exc))}") from None
                time.sleep(0.1)
        conn.autocommit = True
        with conn.cursor() as cur:
            cur.execute(f'CREATE DATABASE "{database}"')
        conn.close()
        yield f"postgresql://{user}@127.0.0.1:{port}/{database}"
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGINT)  # fast shutdown: disconnects clients, then stops
            try:
                proc.wait(timeout=STOP_TIMEOUT_S)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(timeout=STOP_TIMEOUT_S)
