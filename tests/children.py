"""The test side of ``tests.procs``: starting worker processes, talking to them, reaping them.

Children are fresh interpreters (``python -m tests.procs``) pointed at a test's tables through
``db_url`` and ``prefix``; they start their race together on a ``go`` line and report what they
received, acked and put as JSON. Every child is bounded by a deadline and killed at teardown if
it is still running (the ``children`` fixture in tests/conftest.py).
"""

from __future__ import annotations

import contextlib
import json
import os
import select
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, BinaryIO

import pytest

REPO = Path(__file__).resolve().parents[1]
TOPIC = "jobs"
#: Upper bound for any child, and for the test waiting on it.
CHILD_DEADLINE = 45.0
STARTUP_TIMEOUT = 30.0


class Child:
    """One worker process running a role of ``tests.procs``."""

    def __init__(self, role: str, name: str, args: list[str], workdir: Path) -> None:
        self.name = name
        self.out = workdir / f"{name}.json"
        self.err_path = workdir / f"{name}.stderr"
        env = {k: v for k, v in os.environ.items() if not k.startswith("PYTEST")}
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO), env.get("PYTHONPATH")]))
        command = [sys.executable, "-m", "tests.procs", role, "--name", name]
        command += ["--out", str(self.out), "--deadline", str(CHILD_DEADLINE), *args]
        self._err: BinaryIO = self.err_path.open("wb")
        self.proc = subprocess.Popen(
            command,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=self._err,
            cwd=REPO,
            env=env,
        )
        self._buffer = b""

    @property
    def pid(self) -> int:
        return self.proc.pid

    def stderr(self) -> str:
        self._err.flush()
        return self.err_path.read_text(errors="replace")[-3000:]

    def read_line(self, timeout: float) -> str:
        """The next line the child prints, or a test failure after ``timeout`` seconds."""
        assert self.proc.stdout is not None
        fd = self.proc.stdout.fileno()
        deadline = time.monotonic() + timeout
        while b"\n" not in self._buffer:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                pytest.fail(f"{self.name}: no output within {timeout}s\n{self.stderr()}")
            readable, _, _ = select.select([fd], [], [], remaining)
            if readable:
                chunk = os.read(fd, 65536)
                if not chunk:
                    code = self.proc.wait(5)
                    pytest.fail(f"{self.name} exited ({code}) early\n{self.stderr()}")
                self._buffer += chunk
        line, self._buffer = self._buffer.split(b"\n", 1)
        return line.decode()

    def send(self, line: str) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.write(line.encode() + b"\n")
        self.proc.stdin.flush()

    def result(self, timeout: float) -> dict[str, Any]:
        """Wait for the child to exit cleanly and return its JSON report."""
        try:
            code = self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            pytest.fail(f"{self.name} still running after {timeout:.0f}s\n{self.stderr()}")
        report: dict[str, Any] = (
            json.loads(self.out.read_text()) if self.out.exists() else {"errors": ["no report"]}
        )
        assert report["errors"] == [], f"{self.name}: {report['errors']}\n{self.stderr()}"
        assert code == 0, f"{self.name} exited with {code}\n{self.stderr()}"
        return report

    def stop(self) -> None:
        """Kill the child if it still runs; close its pipes."""
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait(10)
        for pipe in (self.proc.stdin, self.proc.stdout):
            if pipe is not None:
                with contextlib.suppress(OSError):  # a killed child's stdin: broken pipe
                    pipe.close()
        self._err.close()


class Children:
    """Starts worker processes on this test's tables and reaps them."""

    def __init__(self, db_url: str, prefix: str, workdir: Path) -> None:
        self.db_url = db_url
        self.prefix = prefix
        self.workdir = workdir
        self.started: list[Child] = []

    def start(self, role: str, name: str, *args: str, topic: str = TOPIC) -> Child:
        base = ["--url", self.db_url, "--prefix", self.prefix, "--topic", topic]
        child = Child(role, name, [*base, *args], self.workdir)
        self.started.append(child)
        return child

    def ready(self, children: list[Child]) -> None:
        """Wait until every child is connected and waiting for ``go``."""
        for child in children:
            assert child.read_line(STARTUP_TIMEOUT) == "ready"

    def go(self, children: list[Child]) -> None:
        """Wait until every child is connected, then release them all at once."""
        self.ready(children)
        for child in children:
            child.send("go")

    def ask(self, children: list[Child], line: str) -> list[dict[str, Any]]:
        """Send ``line`` to every child, then read each one's JSON reply (in that order)."""
        for child in children:
            child.send(line)
        return [json.loads(child.read_line(CHILD_DEADLINE)) for child in children]

    def results(self, children: list[Child]) -> list[dict[str, Any]]:
        deadline = time.monotonic() + CHILD_DEADLINE + 15
        return [c.result(max(1.0, deadline - time.monotonic())) for c in children]

    def stop_all(self) -> None:
        for child in self.started:
            child.stop()


__all__ = ["CHILD_DEADLINE", "STARTUP_TIMEOUT", "TOPIC", "Child", "Children"]
