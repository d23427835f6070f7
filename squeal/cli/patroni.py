"""A PostgreSQL cluster managed by Patroni on loopback, for squeal's failover tests.

One etcd (Patroni's ``etcd3`` store: Debian's etcd 3.4 serves the v3 API) and ``size`` Patroni
members, each a PostgreSQL server with its own data directory and port under ``root``; with
``synchronous`` the leader waits for a standby's flush at each commit (Patroni's
``synchronous_mode``). Short timers (ttl 10 s, loop_wait 1 s, retry_timeout 4 s) so a lost
leader is replaced within seconds. Processes are started, SIGKILLed and stopped through the
handles and pid files kept here, never by name. Run as root, everything runs as ``postgres``.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

from squeal.cli.servers import free_port, stop_all


class ClusterError(RuntimeError):
    """A member did not start, or no leader was elected, in time (the log's tail says why)."""


@dataclass
class Member:
    """One Patroni member: its folder, ports and, while it runs, its Patroni process."""

    index: int
    root: Path
    port: int = field(default_factory=free_port)
    api: int = field(default_factory=free_port)
    process: subprocess.Popen[bytes] | None = None

    @property
    def name(self) -> str:
        return f"m{self.index}"

    @property
    def data(self) -> Path:
        return self.root / "data"

    @property
    def config(self) -> Path:
        return self.root / "patroni.yml"

    @property
    def log(self) -> Path:
        return self.root / "patroni.log"

    def status(self) -> dict[str, object] | None:
        """What the member's REST API says of it (``/patroni``); None when it does not answer."""
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{self.api}/patroni", timeout=2) as r:
                found = json.load(r)
        except (OSError, ValueError, urllib.error.URLError):
            return None
        return found if isinstance(found, dict) else None

    def role(self) -> str | None:
        """``primary`` or ``replica`` while its PostgreSQL runs; None otherwise."""
        found = self.status()
        if found is None or found.get("state") != "running":
            return None
        return "primary" if found.get("role") in ("primary", "master") else "replica"


def _list(value: object) -> list[object]:
    return list(value) if isinstance(value, list) else []


class PatroniCluster:
    """``size`` Patroni members and one etcd under ``root`` (emptied first)."""

    def __init__(
        self,
        root: Path,
        bin_dir: Path,
        size: int = 2,
        *,
        synchronous: bool = True,
        max_lag: int | None = None,
        patroni: str = "patroni",
        etcd: str = "etcd",
    ) -> None:
        self.root = root
        self.bin = bin_dir
        self.synchronous = synchronous
        #: Patroni's ``maximum_lag_on_failover`` in bytes (None: its default, 1 MiB): a standby
        #: further behind refuses to take over (asynchronous replication only).
        self.max_lag = max_lag
        self.patroni = shutil.which(patroni) or patroni
        self.etcd = shutil.which(etcd) or etcd
        self.members = [Member(i, root / f"m{i}") for i in range(size)]
        self.etcd_port, self.etcd_peer = free_port(), free_port()
        self._etcd: subprocess.Popen[bytes] | None = None
        self._as_root = os.geteuid() == 0

    # -- the whole cluster ----------------------------------------------------------------------

    def start(self, timeout: float = 120.0) -> None:
        """Start etcd, then the members; wait for a leader and (synchronous) a sync standby."""
        shutil.rmtree(self.root, ignore_errors=True)
        self.root.mkdir(parents=True)
        self._own(self.root)
        self._etcd = self._spawn(
            [
                self.etcd,
                "--name=e0",
                f"--data-dir={self.root / 'etcd'}",
                f"--listen-client-urls=http://127.0.0.1:{self.etcd_port}",
                f"--advertise-client-urls=http://127.0.0.1:{self.etcd_port}",
                f"--listen-peer-urls=http://127.0.0.1:{self.etcd_peer}",
                f"--initial-advertise-peer-urls=http://127.0.0.1:{self.etcd_peer}",
                f"--initial-cluster=e0=http://127.0.0.1:{self.etcd_peer}",
                "--initial-cluster-state=new",
                "--log-level=warn",
            ],
            self.root / "etcd.log",
        )
        first, *others = self.members
        self.launch(first)
        self.wait_for(lambda: first.role() == "primary", "a leader", timeout)
        for member in others:
            self.launch(member)
        for member in others:
            self.wait_for(lambda m=member: m.role() == "replica", member.name, timeout)
        self.wait_replicated(timeout)

    def stop(self) -> None:
        """Stop the members (SIGTERM: Patroni stops its PostgreSQL), then etcd."""
        stop_all([member.process for member in self.members], wait=60)
        for member in self.members:
            member.process = None
            self._kill_postmaster(member)  # one left by a SIGKILLed Patroni
        if self._etcd is not None:
            self._etcd.terminate()
            self._etcd.wait(timeout=30)
            self._etcd = None

    def url(self, driver: str = "psycopg", database: str = "postgres") -> str:
        """A multi-host URL that connects to whichever member is the primary."""
        hosts = "&".join(f"host=127.0.0.1:{m.port}" for m in self.members)
        return f"postgresql+{driver}://postgres@/{database}?{hosts}&target_session_attrs=read-write"

    def leader(self) -> Member | None:
        return next((m for m in self.members if m.role() == "primary"), None)

    def roles(self) -> dict[str, str]:
        """Member name to role (``leader``, ``sync_standby``, ``replica``, ...) as the cluster's
        store says (Patroni's ``/cluster``, asked of any member that answers)."""
        for member in self.members:
            try:
                url = f"http://127.0.0.1:{member.api}/cluster"
                with urllib.request.urlopen(url, timeout=2) as r:
                    found = json.load(r)
            except (OSError, ValueError, urllib.error.URLError):
                continue
            return {
                str(m.get("name")): str(m.get("role"))
                for m in _list(found.get("members") if isinstance(found, dict) else None)
                if isinstance(m, dict) and m.get("state") in ("running", "streaming")
            }
        return {}

    def wait_replicated(self, timeout: float = 120.0) -> None:
        """Wait until there is a leader and, synchronous, a sync standby named in the store:
        only that standby may be promoted without losing a commit (Patroni promotes no other,
        nor switches over to another)."""

        def ready() -> bool:
            roles = set(self.roles().values())
            return "leader" in roles and (not self.synchronous or "sync_standby" in roles)

        self.wait_for(ready, "a leader with a sync standby", timeout)

    # -- one member -----------------------------------------------------------------------------

    def launch(self, member: Member) -> None:
        member.root.mkdir(parents=True, exist_ok=True)
        self._own(member.root)
        member.config.write_text(self._config(member))
        self._own(member.config)
        member.process = self._spawn([self.patroni, str(member.config)], member.log)

    def kill(self, member: Member) -> None:
        """Lose the node: SIGKILL its Patroni *and* its postmaster (a postmaster killed alone
        is restarted in place by Patroni, not failed over)."""
        if member.process is not None:
            member.process.send_signal(signal.SIGKILL)
            member.process.wait(timeout=30)
            member.process = None
        self._kill_postmaster(member)

    def switchover(self, to: Member) -> None:
        """A planned switchover to ``to`` (``patronictl switchover --force``)."""
        leader = self.leader()
        if leader is None:
            raise ClusterError("no leader to switch over from")
        done = self._run(
            [
                shutil.which("patronictl") or "patronictl",
                "-c",
                str(leader.config),
                "switchover",
                "--leader",
                leader.name,
                "--candidate",
                to.name,
                "--force",
            ]
        )
        # patronictl exits 0 when the switchover is refused (say, the candidate is not the sync
        # standby yet): the new leader is what tells.
        if done.returncode != 0 or "failed" in done.stdout.lower():
            raise ClusterError(f"switchover failed: {done.stdout[-500:]}{done.stderr[-500:]}")
        self.wait_for(lambda: self.leader() is to, f"{to.name} as the leader", 60)

    def wait_for(self, ready: object, what: str, timeout: float = 120.0) -> float:
        """Wait until ``ready()`` is true; the seconds it took."""
        assert callable(ready)
        started = time.monotonic()
        while not ready():
            if time.monotonic() - started > timeout:
                tails = "\n".join(f"{m.name}:\n{self.tail(m)}" for m in self.members)
                raise ClusterError(f"{what} not ready after {timeout:.0f}s:\n{tails}")
            time.sleep(0.2)
        return time.monotonic() - started

    def tail(self, member: Member, lines: int = 20) -> str:
        try:
            return "\n".join(member.log.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return "(no log)"

    # -- inside ---------------------------------------------------------------------------------

    def _kill_postmaster(self, member: Member) -> None:
        try:
            pid = int((member.data / "postmaster.pid").read_text().split()[0])
        except (OSError, ValueError, IndexError):
            return
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            return

    def _config(self, member: Member) -> str:
        sync = "true" if self.synchronous else "false"
        lag = "" if self.max_lag is None else f"\n    maximum_lag_on_failover: {self.max_lag}"
        return f"""scope: squeal
name: {member.name}
restapi:
  listen: 127.0.0.1:{member.api}
  connect_address: 127.0.0.1:{member.api}
etcd3:
  hosts: 127.0.0.1:{self.etcd_port}
bootstrap:
  dcs:
    ttl: 10
    loop_wait: 1
    retry_timeout: 4
    synchronous_mode: {sync}{lag}
    postgresql:
      use_pg_rewind: true
      parameters:
        wal_level: replica
        hot_standby: "on"
        max_wal_senders: 10
        max_replication_slots: 10
        wal_log_hints: "on"
  initdb:
    - encoding: UTF8
    - auth: trust
  pg_hba:
    - local all all trust
    - host all all 127.0.0.1/32 trust
    - host replication all 127.0.0.1/32 trust
postgresql:
  listen: 127.0.0.1:{member.port}
  connect_address: 127.0.0.1:{member.port}
  data_dir: {member.data}
  bin_dir: {self.bin}
  authentication:
    superuser:
      username: postgres
    replication:
      username: postgres
  parameters:
    unix_socket_directories: {member.root}
"""

    def _own(self, path: Path) -> None:
        if self._as_root:
            shutil.chown(path, "postgres", "postgres")

    def _spawn(self, argv: list[str], log: Path) -> subprocess.Popen[bytes]:
        # The handle is the program itself (not a runuser around it), so SIGKILL reaches it.
        user = "postgres" if self._as_root else None
        with log.open("ab") as out:
            return subprocess.Popen(
                argv, stdout=out, stderr=subprocess.STDOUT, user=user, group=user, env=self._env()
            )

    def _run(self, argv: list[str]) -> subprocess.CompletedProcess[str]:
        user = "postgres" if self._as_root else None
        return subprocess.run(
            argv,
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
            user=user,
            group=user,
            env=self._env(),
        )

    def _env(self) -> dict[str, str]:
        return {**os.environ, "HOME": str(self.root)}


__all__ = ["ClusterError", "Member", "PatroniCluster"]
