"""An event log of puts, deliveries and settlements, and the checks run over it.

Child processes append one JSON object per line to their own file (``Log``); the test then reads
every file and asks :func:`check` for lost, unexpected, overlapping and unexplained messages.
Events: ``put`` (id), ``get`` (id, token, t0/t1 around the claim call, vt), and ``ack``,
``nack``, ``release`` (id, token, t0/t1 around the call, ok: False when it raised LeaseLost).
Timestamps are ``time.time()`` on this host, where every process and server runs.
"""

from __future__ import annotations

import itertools
import json
import os
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

#: Slack between the clock of the claiming process and the database's, in seconds.
MARGIN = 0.05


class Log:
    """An append-only JSON-lines event file for one process (flushed on every event)."""

    def __init__(self, path: Path) -> None:
        self._file = path.open("a", buffering=1)
        self.pid = os.getpid()

    def write(self, event: str, **fields: Any) -> None:
        fields.update(ev=event, pid=self.pid)
        fields.setdefault("t", time.time())
        self._file.write(json.dumps(fields) + "\n")
        self._file.flush()


def read(directory: Path) -> list[dict[str, Any]]:
    """Every complete event in every ``*.jsonl`` file of ``directory`` (a torn last line is
    what a SIGKILL leaves behind and is ignored)."""
    events: list[dict[str, Any]] = []
    for path in sorted(directory.glob("*.jsonl")):
        for line in path.read_text().splitlines():
            try:
                events.append(json.loads(line))
            except json.JSONDecodeError:
                continue
    return events


@dataclass
class Report:
    """What :func:`check` found; ``ok`` when nothing is wrong."""

    put: int = 0
    deliveries: int = 0
    acked: int = 0
    duplicates: dict[str, int] = field(default_factory=dict)
    lost: list[int] = field(default_factory=list)
    unexpected: list[int] = field(default_factory=list)
    overlapping: list[str] = field(default_factory=list)
    unexplained: list[str] = field(default_factory=list)
    double_acks: list[int] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not (
            self.lost or self.unexpected or self.overlapping or self.unexplained or self.double_acks
        )


def check(
    events: Iterable[dict[str, Any]], *, remaining: Iterable[int] = (), killed: Iterable[int] = ()
) -> Report:
    """Check an event history against what is still stored (``remaining`` ids, e.g. dead ones).

    - lost: put, never acked, and not stored any more;
    - unexpected: delivered but never put (by this history);
    - overlapping: a claim that finished before the previous lease of the same message could
      have expired, while that lease was neither settled nor expired;
    - unexplained: a redelivery not preceded by an expired lease, a nack, a release or a killed
      holder (a killed holder's lease must still expire, which ``overlapping`` checks);
    - double_acks: two successful acks of one message (the fencing token failed).
    """
    # Claims are ordered by when they returned: two claims of one message can only overlap in
    # time when the first was waiting on a lock that the second's commit released.
    evs = sorted(events, key=lambda e: e.get("t1", e["t"]))
    killed_pids = set(killed)
    report = Report()
    put_ids = {e["id"] for e in evs if e["ev"] == "put" and e.get("id") is not None}
    report.put = len(put_ids)
    gets: dict[int, list[dict[str, Any]]] = {}
    settles: dict[tuple[int, int], dict[str, Any]] = {}
    acks: dict[int, int] = {}
    for e in evs:
        if e["ev"] == "get":
            gets.setdefault(e["id"], []).append(e)
        elif e["ev"] in ("ack", "nack", "release") and e.get("ok"):
            settles[(e["id"], e["token"])] = e
            if e["ev"] == "ack":
                acks[e["id"]] = acks.get(e["id"], 0) + 1
    report.deliveries = sum(len(v) for v in gets.values())
    report.acked = len(acks)
    report.double_acks = sorted(i for i, n in acks.items() if n > 1)
    report.unexpected = sorted(set(gets) - put_ids)
    # An ack that committed just before its process was SIGKILLed was never logged as done:
    # an "acking" intent by a killed process accounts for a message that is gone.
    in_flight = {e["id"] for e in evs if e["ev"] == "acking" and e["pid"] in killed_pids}
    report.lost = sorted(put_ids - set(acks) - set(remaining) - in_flight)
    for mid, history in gets.items():
        for prev, nxt in itertools.pairwise(history):
            settle = settles.get((mid, prev["token"]))
            expires = prev["t0"] + prev["vt"]
            settled_before = settle is not None and settle["t1"] <= nxt["t1"] + MARGIN
            expired_before = nxt["t1"] + MARGIN >= expires
            where = f"message {mid}: lease {prev['token']} (pid {prev['pid']}) then {nxt['token']}"
            if not (settled_before or expired_before):
                report.overlapping.append(where)
            if settle is not None and settle["ev"] == "ack" and settle["t1"] < nxt["t0"]:
                report.unexplained.append(where + " after a successful ack")
                continue
            why = (
                "nack/release"
                if settled_before and settle is not None
                else "killed holder"
                if prev["pid"] in killed_pids
                else "expired lease"
                if expired_before
                else None
            )
            if why is None:
                report.unexplained.append(where)
            else:
                report.duplicates[why] = report.duplicates.get(why, 0) + 1
    return report
