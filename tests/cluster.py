"""A real single-node Slurm cluster and a real sshd on loopback, started for the test session.

The cluster paths (``prep slurm`` + submit.sh, ``launch --slurm``, ``sweep --executor slurm``, ``launch
--hostfile`` over ssh/pdsh) are what people use megadepth for on clusters; stand-ins for ``sbatch`` or
``ssh`` test our side of them, these test them against the real programs: Debian's ``slurm-wlm`` 22.05 and
``munge``, OpenSSH's ``sshd`` and ``pdsh`` (``.ci/run`` installs them).

Both are made private to the test run, so they neither need nor touch the machine's own configuration:

- Slurm: munged with its own key and socket, slurmctld and slurmd with a ``slurm.conf`` (reached through
  ``SLURM_CONF``, in :attr:`SlurmCluster.env` only: tests that do not ask for the cluster never see it)
  under a temporary directory, on free ports, with proctrack/linuxproc and task/none (no cgroups, no
  systemd), this machine's CPUs and a little less than its memory, and state, spool, logs and pid files
  in that directory. The daemons run in the foreground as children of the test process.
- sshd: its own host key, an ``AuthorizedKeysFile`` holding a user key made for the run, listening on
  127.0.0.1 at a free port. OpenSSH's client reads ``~/.ssh/config`` from the passwd entry, not from
  ``$HOME``, so the tests put a two-line ``ssh`` first on PATH that runs the real ssh with ``-F`` and the
  run's client config (port, key, no known-hosts file): what a user keeps in ``~/.ssh/config``.

Where the programs are missing (or this is not root, which slurmd and sshd need to run jobs and sessions)
the tests that need them are skipped with one line; under ``CI=true`` that is a failure instead, so CI
cannot pass without having run them. Stopping cancels every job, stops the daemons by their pids, and ends
whatever still runs with this cluster's ``SLURM_CONF`` in its environment (a job's processes), by pid.
"""

from __future__ import annotations

import contextlib
import os
import re
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

IN_CI = os.environ.get("CI", "").lower() == "true"
SLURM_PROGRAMS = ("munged", "munge", "unmunge", "slurmctld", "slurmd", "sbatch", "sinfo", "squeue", "scontrol",
                  "scancel", "srun")
SSH_PROGRAMS = ("sshd", "ssh", "ssh-keygen", "pdsh")
START_TIMEOUT_S = 60
FINAL_STATES = {"COMPLETED", "FAILED", "CANCELLED", "TIMEOUT", "NODE_FAIL", "OUT_OF_MEMORY", "PREEMPTED",
                "BOOT_FAIL", "DEADLINE"}


def unavailable(what: str, reason: str) -> None:
    """Skip (one line), or fail under CI=true: a missing cluster must not let CI pass vacuously."""
    message = f"{what} not available: {reason}"
    if IN_CI:
        pytest.fail(f"{message} (CI=true: .ci/run installs slurm-wlm, munge, openssh-server and pdsh)",
                    pytrace=False)
    pytest.skip(message)


def missing_programs(names: tuple[str, ...]) -> list[str]:
    extra = os.pathsep.join(["/usr/sbin", "/sbin"])  # daemons live in sbin, not always on a user's PATH
    return [n for n in names if shutil.which(n, path=f"{os.environ.get('PATH', '')}{os.pathsep}{extra}") is None]


def program(name: str) -> str:
    found = shutil.which(name, path=f"{os.environ.get('PATH', '')}{os.pathsep}/usr/sbin{os.pathsep}/sbin")
    assert found is not None, name
    return found


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def private_dir(prefix: str) -> Path:
    """A new directory that others may traverse but not list (munged requires its socket's directories
    to be executable by all), outside pytest's 0700 tree."""
    root = Path(tempfile.mkdtemp(prefix=prefix))
    root.chmod(0o711)
    return root


def wait_until(check: Callable[[], bool], timeout_s: float, what: str, interval_s: float = 0.3) -> None:
    deadline = time.monotonic() + timeout_s
    while not check():
        if time.monotonic() > deadline:
            raise TimeoutError(f"{what} within {timeout_s:.0f} s")
        time.sleep(interval_s)


def tail(path: Path, lines: int = 15) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return f"({path} unreadable)"


def _remove(root: Path) -> None:
    """The session's directory (config, keys, logs, job spool), unless MEGADEPTH_KEEP_CLUSTER=1 asks to keep
    it for a look at the daemons' logs after a failure."""
    if os.environ.get("MEGADEPTH_KEEP_CLUSTER") == "1":
        print(f"\nkept {root} (MEGADEPTH_KEEP_CLUSTER=1)", file=sys.stderr)
        return
    shutil.rmtree(root, ignore_errors=True)


def _daemon(cmd: list[str], err: Path, env: dict[str, str] | None = None) -> subprocess.Popen:
    """A daemon in the foreground, our child, in its own session, its stderr into ``err``."""
    with err.open("wb") as stderr:
        return subprocess.Popen(cmd, env=env, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=stderr,
                                start_new_session=True)


def _stop(proc: subprocess.Popen, grace_s: float = 15) -> None:
    """SIGTERM a daemon we started, then SIGKILL; reaps it (it is our child)."""
    if proc.poll() is None:
        with contextlib.suppress(ProcessLookupError):
            proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=grace_s)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                proc.kill()
            proc.wait(timeout=10)


def _pids_with_env(entry: bytes) -> list[int]:
    """Processes (other than this one) whose environment holds ``entry``, e.g. ``SLURM_CONF=/tmp/x/slurm.conf``."""
    found = []
    for d in Path("/proc").iterdir():
        if not d.name.isdigit() or int(d.name) == os.getpid():
            continue
        with contextlib.suppress(OSError):
            if entry in (d / "environ").read_bytes().split(b"\0"):
                found.append(int(d.name))
    return found


def _children(pid: int) -> list[int]:
    found = []
    for d in Path("/proc").iterdir():
        if d.name.isdigit():
            with contextlib.suppress(OSError, IndexError, ValueError):
                if int((d / "stat").read_text().rsplit(")", 1)[1].split()[1]) == pid:
                    found.append(int(d.name))
    return found


class SlurmCluster:
    """munged + slurmctld + slurmd on this machine: one node in the default partition ``debug`` (no time
    limit) and in ``short`` (30 minutes at most); see the module doc."""

    SHORT, SHORT_LIMIT = "short", "30"

    def __init__(self) -> None:
        self.root = private_dir("megadepth-slurm-")
        self.node = self._node_name()
        self.cpus = len(os.sched_getaffinity(0))
        self.memory_mb = self._memory_mb()
        self.conf = self.root / "slurm.conf"
        self.env = {**os.environ, "SLURM_CONF": str(self.conf)}
        self.procs: dict[str, subprocess.Popen] = {}
        self.started_s = 0.0

    @staticmethod
    def _node_name() -> str:
        """This machine's short name, as on a real cluster; ``localhost`` where it does not resolve (jobs
        reach node 0 by its name: the launch script's MASTER_ADDR)."""
        name = socket.gethostname().split(".")[0]
        try:
            socket.getaddrinfo(name, None)
        except OSError:
            return "localhost"
        return name

    @staticmethod
    def _memory_mb() -> int:
        """A little under this machine's memory: a RealMemory above what slurmd finds drains the node."""
        total_kb = next(int(line.split()[1]) for line in Path("/proc/meminfo").read_text().splitlines()
                        if line.startswith("MemTotal:"))
        return int(total_kb / 1024 * 0.9)

    def _write_config(self) -> None:
        munge_sock = self.root / "munge-socket" / "munge.socket"
        text = f"""# written by tests/cluster.py for one test session
ClusterName=megadepth-test
SlurmctldHost={self.node}(127.0.0.1)
SlurmctldPort={free_port()}
SlurmdPort={free_port()}
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
CredType=cred/munge
AuthInfo=socket={munge_sock}
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SelectType=select/cons_tres
SelectTypeParameters=CR_Core_Memory
ReturnToService=2
StateSaveLocation={self.root / "state"}
SlurmdSpoolDir={self.root / "spool"}
SlurmctldPidFile={self.root / "slurmctld.pid"}
SlurmdPidFile={self.root / "slurmd.pid"}
SlurmctldLogFile={self.root / "slurmctld.log"}
SlurmdLogFile={self.root / "slurmd.log"}
JobCompType=jobcomp/none
AccountingStorageType=accounting_storage/none
JobAcctGatherType=jobacct_gather/none
MpiDefault=none
MailProg=/bin/true
# scancel: SIGKILL 5 s after SIGTERM (default 30); finished jobs stay visible to scontrol for an hour
KillWait=5
MinJobAge=3600
NodeName={self.node} NodeAddr=127.0.0.1 CPUs={self.cpus} RealMemory={self.memory_mb} State=UNKNOWN
PartitionName=debug Nodes={self.node} Default=YES MaxTime=INFINITE State=UP DefMemPerCPU=1024
# the same node under a time limit, as clusters' debug partitions have (sbatch queues a longer job for good)
PartitionName={self.SHORT} Nodes={self.node} MaxTime={self.SHORT_LIMIT} State=UP DefMemPerCPU=1024
"""
        self.conf.write_text(text)

    def _start_munge(self) -> None:
        key_dir, sock_dir = self.root / "munge", self.root / "munge-socket"
        key_dir.mkdir(mode=0o700)
        sock_dir.mkdir(mode=0o755)
        key = key_dir / "munge.key"
        key.write_bytes(secrets.token_bytes(1024))
        key.chmod(0o400)
        log = key_dir / "munged.log"
        self.procs["munged"] = _daemon(
            [program("munged"), "--foreground", f"--key-file={key}", f"--socket={sock_dir / 'munge.socket'}",
             f"--pid-file={key_dir / 'munged.pid'}", f"--log-file={log}", f"--seed-file={key_dir / 'munged.seed'}"],
            key_dir / "munged.err")

        def works() -> bool:
            if self.procs["munged"].poll() is not None:
                raise RuntimeError(f"munged exited: {tail(key_dir / 'munged.err')} {tail(log)}")
            cred = subprocess.run([program("munge"), "-n", "-S", str(sock_dir / "munge.socket")],
                                  capture_output=True, timeout=10)
            return cred.returncode == 0 and subprocess.run(
                [program("unmunge"), "-S", str(sock_dir / "munge.socket")], input=cred.stdout,
                capture_output=True, timeout=10).returncode == 0

        wait_until(works, 20, "munged did not answer (munge -n | unmunge)")

    def start(self) -> SlurmCluster:
        start = time.monotonic()
        for sub in ("state", "spool"):
            (self.root / sub).mkdir()
        self._write_config()
        self._start_munge()
        for daemon in ("slurmctld", "slurmd"):
            node = ["-N", self.node] if daemon == "slurmd" else []  # which NodeName line is this slurmd's
            self.procs[daemon] = _daemon([program(daemon), "-D", "-f", str(self.conf), *node],
                                         self.root / f"{daemon}.err", self.env)

        def idle() -> bool:
            for daemon in ("slurmctld", "slurmd"):
                if self.procs[daemon].poll() is not None:
                    raise RuntimeError(f"{daemon} exited: {tail(self.root / f'{daemon}.err')}\n"
                                       f"{tail(self.root / f'{daemon}.log')}")
            state = self.run("sinfo", "-h", "-o", "%t", check=False)  # one line per partition
            return state.returncode == 0 and set(state.stdout.split()) == {"idle"}

        try:
            wait_until(idle, START_TIMEOUT_S, "the node did not come up idle in sinfo")
        except TimeoutError as exc:
            logs = "\n".join(f"--- {n}:\n{tail(self.root / n)}" for n in ("slurmctld.log", "slurmd.log"))
            raise RuntimeError(f"{exc}\n{logs}") from None
        self.started_s = time.monotonic() - start
        return self

    def run(self, *args: str, check: bool = True, timeout: float = 60) -> subprocess.CompletedProcess:
        """A Slurm client command against this cluster."""
        done = subprocess.run([program(args[0]), *args[1:]], env=self.env, capture_output=True, text=True,
                              timeout=timeout, stdin=subprocess.DEVNULL)
        if check and done.returncode != 0:
            raise AssertionError(f"{' '.join(args)}: exit {done.returncode}: {done.stderr.strip()}")
        return done

    def jobs(self, job_id: str) -> list[dict[str, str]]:
        """``scontrol -o show job`` of a job or array: one dict per job (array task), its fields as given."""
        done = self.run("scontrol", "-o", "show", "job", job_id, check=False)
        records = []
        for line in done.stdout.splitlines():
            records.append(dict(re.findall(r"(\w+)=(\S*)", line)))
        return records

    def states(self, job_id: str) -> list[str]:
        return [r.get("JobState", "?") for r in self.jobs(job_id)]

    def wait_jobs(self, job_ids: list[str], timeout_s: float, until: Callable[[], bool] | None = None) -> None:
        """Until every job (every array task) of ``job_ids`` has ended (or ``until`` holds); a task that did
        not complete fails the test with its log's end."""
        def done() -> bool:
            if until is not None and until():
                return True
            records = [r for j in job_ids for r in self.jobs(j)]
            bad = [r for r in records if r.get("JobState") in FINAL_STATES - {"COMPLETED"}]
            if bad:
                raise AssertionError("jobs did not complete: " + "; ".join(
                    f"{r.get('JobId')} {r.get('JobState')} {r.get('Reason')} exit {r.get('ExitCode')} "
                    f"(derived {r.get('DerivedExitCode')}):\n{tail(Path(r.get('StdOut', '')))}" for r in bad)
                    + f"\n--- slurmd.log:\n{tail(self.root / 'slurmd.log', 30)}")
            return bool(records) and all(r.get("JobState") == "COMPLETED" for r in records)

        try:
            wait_until(done, timeout_s, f"jobs {job_ids} did not end", interval_s=1)
        except TimeoutError as exc:
            listing = self.run("squeue", "-h", "-o", "%i %T %r", check=False).stdout
            raise AssertionError(f"{exc}; queue:\n{listing}") from None

    def requeue(self, job_id: str) -> None:
        """``scontrol requeue`` a finished batch job and lift the hold Slurm puts on it (``StartTime=now``), as
        docs/launching.md says to; but not within the second the job ended. slurmd revokes a job's
        credential when the job ends, stamped with that second, and refuses any later credential of the same
        job id issued in that second or before it (``cred->ctime <= revoked``, whole seconds): a requeued job
        started at once ends FAILED, exit 1, without running a line ("Job N already killed, do not launch
        batch job" in slurmd.log). Slurm's own hold (about two minutes) is there to wait that out."""
        (record,) = self.jobs(job_id)
        assert record.get("JobState") in FINAL_STATES, record
        ended = time.mktime(time.strptime(record["EndTime"], "%Y-%m-%dT%H:%M:%S"))
        self.run("scontrol", "requeue", job_id)
        # the revocation may be stamped a moment after EndTime (another second, rarely): two seconds clear it
        time.sleep(max(0.0, ended + 2 - time.time()))
        self.run("scontrol", "update", f"JobId={job_id}", "StartTime=now")

    def cancel_all(self) -> None:
        """Cancel every job and wait (a little) until none is left running."""
        self.run("scancel", f"--user={os.getuid()}", check=False)
        with contextlib.suppress(TimeoutError):
            wait_until(lambda: not self.run("squeue", "-h", "-t", "RUNNING,COMPLETING", "-o", "%i",
                                            check=False).stdout.strip(), 30, "jobs still running", interval_s=0.5)

    def stop(self) -> None:
        """Jobs, then slurmd, slurmctld, munged; then any process still carrying this SLURM_CONF; then the files."""
        if self.procs.get("slurmctld") is not None and self.procs["slurmctld"].poll() is None:
            with contextlib.suppress(Exception):
                self.cancel_all()
        for name in ("slurmd", "slurmctld", "munged"):
            if name in self.procs:
                _stop(self.procs[name])
        for pid in _pids_with_env(f"SLURM_CONF={self.conf}".encode()):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        _remove(self.root)


class SshLoopback:
    """sshd on 127.0.0.1 for this run, and a PATH on which ``ssh`` reaches it with the run's key."""

    HOSTS = ("localhost", "127.0.0.1", "127.0.0.2")
    """The names the client config covers; sshd listens on 127.0.0.1 only, so 127.0.0.2 is refused."""

    def __init__(self) -> None:
        self.root = private_dir("megadepth-sshd-")
        self.port = free_port()
        self.bin = self.root / "bin"
        self.log = self.root / "sshd.log"
        self.proc: subprocess.Popen | None = None
        self.made_privsep_dir = False
        self.started_s = 0.0

    @property
    def env(self) -> dict[str, str]:
        """os.environ with our ``ssh`` first on PATH (pdsh's ssh module and DeepSpeed both run ``ssh``)."""
        return {**os.environ, "PATH": f"{self.bin}{os.pathsep}{os.environ.get('PATH', '')}"}

    def start(self) -> SshLoopback:
        start = time.monotonic()
        keygen = program("ssh-keygen")
        for name in ("host_key", "user_key"):
            subprocess.run([keygen, "-q", "-t", "ed25519", "-N", "", "-C", f"megadepth-test-{name}",
                            "-f", str(self.root / name)], check=True, capture_output=True, timeout=30)
        (self.root / "authorized_keys").write_text((self.root / "user_key.pub").read_text())
        (self.root / "sshd_config").write_text(f"""# written by tests/cluster.py for one test session
Port {self.port}
ListenAddress 127.0.0.1
HostKey {self.root / "host_key"}
PidFile {self.root / "sshd.pid"}
AuthorizedKeysFile {self.root / "authorized_keys"}
StrictModes no
UsePAM no
PubkeyAuthentication yes
PasswordAuthentication no
KbdInteractiveAuthentication no
PermitRootLogin prohibit-password
AllowTcpForwarding no
X11Forwarding no
PrintMotd no
MaxStartups 64
LogLevel INFO
""")
        client = self.root / "ssh_config"
        client.write_text(f"""# written by tests/cluster.py: what a user keeps in ~/.ssh/config
Host {' '.join(self.HOSTS)}
  Port {self.port}
  IdentityFile {self.root / "user_key"}
  IdentitiesOnly yes
  StrictHostKeyChecking no
  UserKnownHostsFile /dev/null
  LogLevel ERROR
""")
        self.bin.mkdir()
        (self.bin / "ssh").write_text(f'#!/bin/sh\nexec {program("ssh")} -F {client} "$@"\n')
        (self.bin / "ssh").chmod(0o755)
        privsep = Path("/run/sshd")  # sshd refuses to start without its privilege separation directory
        if not privsep.exists():
            privsep.mkdir(mode=0o755, parents=True)
            self.made_privsep_dir = True
        self.proc = _daemon([program("sshd"), "-D", "-f", str(self.root / "sshd_config"), "-E", str(self.log)],
                            self.root / "sshd.err")

        def answers() -> bool:
            if self.proc is not None and self.proc.poll() is not None:
                raise RuntimeError(f"sshd exited: {tail(self.root / 'sshd.err')}\n{tail(self.log)}")
            return self.ssh("localhost", "true").returncode == 0

        try:
            wait_until(answers, 30, "sshd did not accept the test key")
        except TimeoutError as exc:
            raise RuntimeError(f"{exc}\n{tail(self.log)}") from None
        self.started_s = time.monotonic() - start
        return self

    def ssh(self, host: str, *command: str) -> subprocess.CompletedProcess:
        return subprocess.run([str(self.bin / "ssh"), "-o", "BatchMode=yes", host, *command], capture_output=True,
                              text=True, timeout=30, stdin=subprocess.DEVNULL)

    def sessions_accepted(self) -> int:
        return tail(self.log, 100000).count("Accepted publickey")

    def stop(self) -> None:
        """sshd and its sessions (its children), the privilege separation directory if we made it, the files."""
        if self.proc is not None:
            sessions = _children(self.proc.pid)
            _stop(self.proc)
            for pid in sessions:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGTERM)
        if self.made_privsep_dir:
            with contextlib.suppress(OSError):
                Path("/run/sshd").rmdir()
        _remove(self.root)


def _session(what: str, programs: tuple[str, ...], make: Callable[[], SlurmCluster | SshLoopback]
             ) -> Iterator[SlurmCluster | SshLoopback]:
    missing = missing_programs(programs)
    if missing:
        unavailable(what, f"{', '.join(missing)} not installed (apt-get install slurm-wlm munge openssh-server pdsh)")
    if os.geteuid() != 0:
        unavailable(what, "the tests start slurmd and sshd, which need root")
    started = make()
    try:
        started.start()
    except (RuntimeError, OSError, subprocess.SubprocessError) as exc:
        started.stop()
        unavailable(what, f"could not start: {exc}")
    print(f"\n{what}: started in {started.started_s:.1f} s", file=sys.stderr)
    try:
        yield started
    finally:
        started.stop()


def slurm_session() -> Iterator[SlurmCluster]:
    yield from _session("a real Slurm cluster (munged, slurmctld, slurmd)", SLURM_PROGRAMS, SlurmCluster)  # type: ignore[misc]


def ssh_session() -> Iterator[SshLoopback]:
    yield from _session("a real sshd on 127.0.0.1 with pdsh", SSH_PROGRAMS, SshLoopback)  # type: ignore[misc]
