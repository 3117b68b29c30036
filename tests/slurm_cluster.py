"""A throwaway one-node SLURM cluster for tests: munged, slurmctld and slurmd started from a temporary directory.

Everything (munge key and socket, slurm.conf, state, spool, pid and log files) lives under ``tmp_dir``; the
daemons listen on 127.0.0.1 on free ports, run as root (slurmd must), and are stopped on exit with no process
left behind. There is no accounting database, so ``sacct`` fails ("Slurm accounting storage is disabled"):
submitit then warns, reads a job's state as UNKNOWN and learns that it is done from its result file only, so a
test bounds its wait with ``SlurmCluster.wait_finished`` (squeue) before ``job.result()``. Finished jobs stay
visible to squeue for MinJobAge (60 s) and are logged to ``jobcomp.txt`` (one line per end or requeue).
Where the machine cannot run it, ``SlurmUnavailable`` says why in one line, for ``pytest.skip``.
"""
from __future__ import annotations

import contextlib
import os
import secrets
import shutil
import signal
import socket
import subprocess
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

NODE = "localhost"
PARTITION = "debug"
MARKER = "W2S_TEST_SLURM_CLUSTER"  # in the daemons' and the jobs' environment: how the final sweep finds them
START_TIMEOUT_S = 60.0
STOP_TIMEOUT_S = 15.0
SOCKET_PATH_MAX = 100  # AF_UNIX paths are limited to 108 bytes; slurmd adds "<node>_<job>.<step>" to its spool
ACTIVE_STATES = {"PENDING", "CONFIGURING", "RUNNING", "COMPLETING", "REQUEUED", "REQUEUE_HOLD", "RESIZING",
                 "SIGNALING", "STAGE_OUT", "SUSPENDED", "STOPPED"}


class SlurmUnavailable(RuntimeError):
    """This machine cannot run the test cluster; the message is one line, for ``pytest.skip``."""


@dataclass
class SlurmCluster:
    """A running cluster: ``env`` holds what a client (sbatch, squeue, submitit, a job) needs in its env."""

    root: Path
    conf: Path
    env: dict[str, str]

    def run(self, *args: str, timeout: float = 30.0) -> subprocess.CompletedProcess[str]:
        """Run a slurm client command (``squeue``, ``scontrol``, ...) against this cluster, output captured."""
        return subprocess.run(list(args), env={**os.environ, **self.env}, capture_output=True, text=True,
                              timeout=timeout, check=False)

    def job_state(self, job_id: str) -> str:
        """The job's state ("PENDING", "RUNNING", "COMPLETED", ...), or "" once slurmctld has forgotten it."""
        out = self.run("squeue", "-h", "--states=all", "-j", job_id, "-o", "%T", timeout=10)
        return out.stdout.strip() if out.returncode == 0 else ""

    def wait_finished(self, job_id: str, timeout: float = 60.0) -> str:
        """Wait until the job is no longer pending, running or requeued; its final state, or TimeoutError."""
        deadline = time.monotonic() + timeout
        while (state := self.job_state(job_id)) in ACTIVE_STATES:
            if time.monotonic() > deadline:
                raise TimeoutError(f"job {job_id} still {state} after {timeout:.0f} s")
            time.sleep(0.3)
        return state


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def binaries() -> dict[str, str]:
    """Paths of the daemons and clients the cluster needs, or SlurmUnavailable naming the first missing one."""
    found = {}
    for name in ("munged", "slurmctld", "slurmd", "sbatch", "srun", "squeue", "sinfo", "scancel", "scontrol"):
        if (path := shutil.which(name)) is None:
            raise SlurmUnavailable(f"{name} not found (apt-get install slurm-wlm munge)")
        found[name] = path
    return found


def slurm_conf(root: Path, cpus: int, munge_socket: Path) -> str:
    """A minimal slurm.conf: one node, one partition, no cgroups, no accounting, short delays."""
    return "\n".join([
        "ClusterName=w2stest",
        f"SlurmctldHost={NODE}(127.0.0.1)",
        f"SlurmctldPort={free_port()}",
        f"SlurmdPort={free_port()}",
        "SlurmUser=root",
        "SlurmdUser=root",
        "AuthType=auth/munge",
        "CredType=cred/munge",
        # cred_expire (default 120 s) is also how long a requeued job waits before it may start again
        f"AuthInfo=socket={munge_socket},cred_expire=5",
        f"StateSaveLocation={root / 'state'}",
        f"SlurmdSpoolDir={root / 'spool'}",
        f"SlurmctldPidFile={root / 'slurmctld.pid'}",
        f"SlurmdPidFile={root / 'slurmd.pid'}",
        f"SlurmctldLogFile={root / 'slurmctld.log'}",
        f"SlurmdLogFile={root / 'slurmd.log'}",
        "ProctrackType=proctrack/linuxproc",
        "TaskPlugin=task/none",
        "JobAcctGatherType=jobacct_gather/none",
        "AccountingStorageType=accounting_storage/none",
        "JobCompType=jobcomp/filetxt",
        f"JobCompLoc={root / 'jobcomp.txt'}",
        "SelectType=select/cons_tres",
        "SelectTypeParameters=CR_CPU",
        "MpiDefault=none",
        "ReturnToService=2",
        "JobRequeue=1",
        "KillWait=2",
        "MessageTimeout=10",
        "SlurmdTimeout=30",
        "InactiveLimit=0",
        "MinJobAge=60",
        "SchedulerParameters=sched_interval=1,bf_interval=1",  # a requeued job starts a second after BeginTime
        "SlurmdParameters=config_overrides",  # the node has the CPUs written here, whatever the machine has
        f"NodeName={NODE} NodeAddr=127.0.0.1 CPUs={cpus} RealMemory=4096 State=UNKNOWN",
        f"PartitionName={PARTITION} Nodes={NODE} Default=YES MaxTime=INFINITE State=UP",
        "",
    ])


def wait_for(what: str, ready: Callable[[], bool], procs: list[subprocess.Popen[bytes]], log: Path) -> None:
    """Poll ``ready()`` until true; SlurmUnavailable (with the log's last line) on timeout or a daemon's exit."""
    deadline = time.monotonic() + START_TIMEOUT_S
    while time.monotonic() < deadline:
        if ready():
            return
        if dead := [p for p in procs if p.poll() is not None]:
            tail = log.read_text(errors="replace").strip().splitlines()[-1:] if log.exists() else []
            raise SlurmUnavailable(f"{Path(dead[0].args[0]).name} exited ({dead[0].returncode}) "
                                   f"waiting for {what}: {' '.join(tail)}")
        time.sleep(0.3)
    raise SlurmUnavailable(f"timed out after {START_TIMEOUT_S:.0f} s waiting for {what}")


def node_state(cluster: SlurmCluster) -> str:
    """The node's state as sinfo prints it ("idle", "down*", ...), or "" while slurmctld does not answer."""
    out = cluster.run("sinfo", "-h", "-N", "-n", NODE, "-o", "%T", timeout=10)
    return out.stdout.strip() if out.returncode == 0 else ""


def cancel_all(cluster: SlurmCluster) -> None:
    """Cancel every job and wait (bounded) until none is active, so that slurmd stops with no job steps."""
    cluster.run("scancel", "--full", "--user", "root", timeout=10)
    deadline = time.monotonic() + STOP_TIMEOUT_S
    while time.monotonic() < deadline:
        out = cluster.run("squeue", "-h", "-o", "%i", timeout=10)
        if out.returncode != 0 or not out.stdout.strip():
            return
        time.sleep(0.3)


def marked_pids(marker: str) -> list[int]:
    """Processes whose environment holds ``MARKER=marker``: this cluster's daemons, slurmstepds and jobs."""
    needle = f"{MARKER}={marker}".encode()
    pids = []
    for proc in Path("/proc").iterdir():
        if proc.name.isdigit() and int(proc.name) != os.getpid():
            with contextlib.suppress(OSError):
                if needle in (proc / "environ").read_bytes().split(b"\0"):
                    pids.append(int(proc.name))
    return pids


def stop(procs: list[subprocess.Popen[bytes]], marker: str) -> None:
    """SIGTERM the daemons (last started first), SIGKILL any that lingers, then SIGKILL whatever they left."""
    for p in reversed(procs):
        if p.poll() is None:
            p.terminate()
            try:
                p.wait(STOP_TIMEOUT_S)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait(STOP_TIMEOUT_S)
    deadline = time.monotonic() + STOP_TIMEOUT_S
    while (strays := marked_pids(marker)) and time.monotonic() < deadline:
        for pid in strays:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        time.sleep(0.2)


@contextlib.contextmanager
def slurm_cluster(tmp_dir: Path, cpus: int = 2) -> Iterator[SlurmCluster]:
    """Start munged, slurmctld and slurmd with their files in ``tmp_dir``; yield once the node is idle.

    On exit every job is cancelled and the three daemons are stopped, with whatever they started. Raises
    SlurmUnavailable where this machine cannot run them: not root, a binary missing, a daemon that exits, or a
    node that is not idle within START_TIMEOUT_S.
    """
    if os.geteuid() != 0:
        raise SlurmUnavailable("slurmd must run as root")
    bins = binaries()
    root = Path(tmp_dir).resolve()
    if len(str(root / "spool")) + 30 > SOCKET_PATH_MAX:
        raise SlurmUnavailable(f"{root} is too long a path for slurm's unix sockets")
    munge = root / "munge"
    for d in (munge, root / "state", root / "spool"):
        d.mkdir(parents=True, exist_ok=True)
        d.chmod(0o700)
    key = munge / "munge.key"
    key.write_bytes(secrets.token_bytes(1024))
    key.chmod(0o600)  # munged refuses a key that others can read
    sock = munge / "munge.socket"
    conf = root / "slurm.conf"
    conf.write_text(slurm_conf(root, cpus, sock))
    cluster = SlurmCluster(root, conf, {"SLURM_CONF": str(conf), MARKER: secrets.token_hex(8)})
    env = {**os.environ, **cluster.env}
    procs: list[subprocess.Popen[bytes]] = []

    def start(name: str, *args: str) -> None:
        with open(root / f"{name}.out", "wb") as out:
            procs.append(subprocess.Popen([bins[name], *args], stdin=subprocess.DEVNULL, stdout=out,
                                          stderr=subprocess.STDOUT, env=env, start_new_session=True))

    try:
        # --force: munged wants its socket's directories searchable by all, which pytest's tmp dirs (0700) are not;
        # in the foreground it logs to stderr, i.e. munged.out
        start("munged", "--foreground", "--force", f"--socket={sock}", f"--key-file={key}",
              f"--pid-file={munge / 'munged.pid'}", f"--seed-file={munge / 'munged.seed'}")
        wait_for("munged's socket", sock.exists, procs, root / "munged.out")
        start("slurmctld", "-D", "-f", str(conf))
        wait_for("slurmctld", lambda: cluster.run("scontrol", "ping", timeout=10).returncode == 0, procs,
                 root / "slurmctld.log")
        start("slurmd", "-D", "-f", str(conf), "-N", NODE)
        wait_for(f"node {NODE} idle", lambda: node_state(cluster) == "idle", procs, root / "slurmd.log")
        yield cluster
    finally:
        if procs and procs[-1].poll() is None:
            cancel_all(cluster)
        stop(procs, cluster.env[MARKER])
