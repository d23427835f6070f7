"""A MariaDB Galera cluster on loopback, for squeal's cluster tests and measurements.

Three (or more) ``mariadbd`` nodes with ``wsrep_on``, each with its own data directory, SQL
port and Galera ports under ``root``; the first bootstraps the cluster, the others join it by
state transfer (rsync). Nodes are started, SIGKILLed and restarted one by one through the
process handles kept here (never by name: the shared MariaDB server must not be touched).
Run as root, the servers run as the ``mysql`` user (rsync's state transfer then writes as it).
"""

from __future__ import annotations

import getpass
import os
import shutil
import signal
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path

from squeal.cli.servers import free_port, stop_all

#: Where Debian's galera-4 package puts the provider.
PROVIDERS = ("/usr/lib/galera/libgalera_smm.so", "/usr/lib/libgalera_smm.so")


class ClusterError(RuntimeError):
    """A node did not start, or the cluster did not form, in time (the log's tail says why)."""


@dataclass
class Node:
    """One node: its folder, its ports and, while it runs, its process."""

    index: int
    root: Path
    port: int = field(default_factory=free_port)
    gcomm: int = field(default_factory=free_port)
    ist: int = field(default_factory=free_port)
    sst: int = field(default_factory=free_port)
    process: subprocess.Popen[bytes] | None = None

    @property
    def data(self) -> Path:
        return self.root / "data"

    @property
    def log(self) -> Path:
        return self.root / "err.log"

    def url(self, driver: str = "pymysql", database: str = "test") -> str:
        return f"mysql+{driver}://root@127.0.0.1:{self.port}/{database}"


class GaleraCluster:
    """``size`` Galera nodes under ``root`` (fresh data each time: the folder is emptied)."""

    def __init__(
        self,
        root: Path,
        size: int = 3,
        *,
        mariadbd: str = "mariadbd",
        install_db: str = "mariadb-install-db",
        client: str = "mariadb",
        provider: str | None = None,
    ) -> None:
        self.root = root
        self.mariadbd = shutil.which(mariadbd) or mariadbd
        self.install_db = shutil.which(install_db) or install_db
        self.client = shutil.which(client) or client
        self.provider = provider or next((p for p in PROVIDERS if Path(p).is_file()), PROVIDERS[0])
        self.nodes = [Node(i, root / f"node{i}") for i in range(size)]
        self._as_root = os.geteuid() == 0

    # -- the whole cluster ----------------------------------------------------------------------

    def start(self, timeout: float = 90.0) -> None:
        """Bootstrap the first node, create the ``test`` database, then join the others."""
        shutil.rmtree(self.root, ignore_errors=True)
        for node in self.nodes:
            node.data.mkdir(parents=True)
            self._own(node.root)
        first = self.nodes[0]
        done = subprocess.run(
            [
                self.install_db,
                "--no-defaults",
                f"--datadir={first.data}",
                "--user=mysql" if self._as_root else f"--user={getpass.getuser()}",
                "--auth-root-authentication-method=normal",
                "--skip-test-db",
            ],
            capture_output=True,
            timeout=120,
            check=False,
        )
        if done.returncode != 0:
            raise ClusterError(f"mariadb-install-db failed: {done.stderr.decode()[-2000:]}")
        self._own(first.root)
        self._launch(first, bootstrap=True)
        self.wait_synced(first, timeout)
        self.sql(first, "CREATE DATABASE IF NOT EXISTS test")
        for node in self.nodes[1:]:
            self._launch(node)
        for node in self.nodes[1:]:
            self.wait_synced(node, timeout)

    def stop(self) -> None:
        """Stop every running node (SIGTERM, then SIGKILL after 30 s)."""
        stop_all([node.process for node in self.nodes])
        for node in self.nodes:
            node.process = None

    def urls(self, driver: str = "pymysql") -> list[str]:
        return [node.url(driver) for node in self.nodes]

    # -- one node -------------------------------------------------------------------------------

    def kill(self, node: Node) -> None:
        """SIGKILL the node's server: the others go on without it (a quorum of two)."""
        assert node.process is not None, f"node {node.index} is not running"
        node.process.send_signal(signal.SIGKILL)
        node.process.wait(timeout=30)
        node.process = None

    def restart(self, node: Node, timeout: float = 90.0) -> None:
        """Start a stopped node again; it rejoins by incremental state transfer."""
        self._launch(node)
        self.wait_synced(node, timeout)

    def status(self, node: Node, name: str) -> str | None:
        """A ``wsrep_%`` status value of the node, or None when it does not answer."""
        found = self.sql(node, f"SHOW STATUS LIKE '{name}'", check=False)
        parts = found.split("\t") if found else []
        return parts[1] if len(parts) == 2 else None

    def sql(self, node: Node, statement: str, *, check: bool = True) -> str:
        """Run one statement with the ``mariadb`` client on the node's socket; its output."""
        done = subprocess.run(
            [self.client, f"--socket={node.root / 'sock'}", "-uroot", "-N", "-s", "-e", statement],
            capture_output=True,
            timeout=60,
            check=False,
        )
        if check and done.returncode != 0:
            raise ClusterError(f"node {node.index}: {statement!r}: {done.stderr.decode()}")
        return done.stdout.decode().strip() if done.returncode == 0 else ""

    def wait_synced(self, node: Node, timeout: float = 90.0) -> None:
        """Wait until the node is Synced and ready for clients."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if node.process is not None and node.process.poll() is not None:
                raise ClusterError(f"node {node.index} exited:\n{self.tail(node)}")
            ready = self.status(node, "wsrep_ready") == "ON"
            if ready and self.status(node, "wsrep_local_state_comment") == "Synced":
                return
            time.sleep(0.2)
        raise ClusterError(f"node {node.index} not synced after {timeout:.0f}s:\n{self.tail(node)}")

    def tail(self, node: Node, lines: int = 30) -> str:
        try:
            return "\n".join(node.log.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return "(no log)"

    # -- inside ---------------------------------------------------------------------------------

    def _own(self, folder: Path) -> None:
        if self._as_root:
            for path in [folder, *folder.rglob("*")]:
                shutil.chown(path, "mysql", "mysql")

    def _launch(self, node: Node, *, bootstrap: bool = False) -> None:
        peers = ",".join(f"127.0.0.1:{other.gcomm}" for other in self.nodes)
        options = ";".join(
            [
                f"gmcast.listen_addr=tcp://127.0.0.1:{node.gcomm}",
                f"ist.recv_addr=127.0.0.1:{node.ist}",
                "gcache.size=64M",
                # Short timers: a killed node is evicted within seconds, not the default 15+
                # (writes on the others wait until it is).
                "evs.keepalive_period=PT0.5S",
                "evs.inactive_check_period=PT0.5S",
                "evs.suspect_timeout=PT2S",
                "evs.inactive_timeout=PT4S",
                "evs.install_timeout=PT4S",
                "pc.wait_prim_timeout=PT10S",
            ]
        )
        config = node.root / "my.cnf"
        config.write_text(
            "\n".join(
                [
                    "[mariadbd]",
                    f"datadir={node.data}",
                    f"socket={node.root / 'sock'}",
                    f"pid-file={node.root / 'pid'}",
                    f"port={node.port}",
                    "bind-address=127.0.0.1",
                    f"log-error={node.log}",
                    "skip-name-resolve",
                    "innodb_buffer_pool_size=64M",
                    "max_allowed_packet=64M",
                    "binlog_format=ROW",
                    "default_storage_engine=InnoDB",
                    "innodb_autoinc_lock_mode=2",
                    "wsrep_on=ON",
                    f"wsrep_provider={self.provider}",
                    "wsrep_cluster_name=squeal",
                    f"wsrep_cluster_address=gcomm://{peers}",
                    f"wsrep_node_address=127.0.0.1:{node.gcomm}",
                    f"wsrep_node_name=node{node.index}",
                    "wsrep_sst_method=rsync",
                    f"wsrep_sst_receive_address=127.0.0.1:{node.sst}",
                    f'wsrep_provider_options="{options}"',
                    "",
                ]
            )
        )
        self._own(config)
        argv = [self.mariadbd, f"--defaults-file={config}"]
        if self._as_root:
            argv.append("--user=mysql")
        if bootstrap:
            argv.append("--wsrep-new-cluster")
        node.process = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


__all__ = ["ClusterError", "GaleraCluster", "Node"]
