"""Large payloads: the column holds 16 MiB; MySQL/MariaDB's packet limit is reported, not hit."""

from __future__ import annotations

from collections.abc import Callable

import pytest

import squeal
from squeal import Queue

MIB = 1024 * 1024


def _pattern(size: int) -> bytes:
    return bytes(range(256)) * (size // 256)


@pytest.mark.dialects("sqlite", "postgresql")
def test_a_16_mib_payload_round_trips(make_queue: Callable[..., Queue]) -> None:
    queue = make_queue(max_payload_size=16 * MIB)
    data = _pattern(16 * MIB)
    queue.put(data, "big")
    msg = queue.get("big")
    assert msg is not None
    assert msg.payload == data
    msg.ack()


@pytest.mark.dialects("mysql")
def test_mysql_payloads_up_to_the_packet_limit_round_trip(make_queue: Callable[..., Queue]) -> None:
    queue = make_queue(max_payload_size=16 * MIB)
    data = _pattern(7 * MIB)  # the default max_allowed_packet is 16 MiB; bytes travel as hex
    queue.put(data, "big")
    msg = queue.get("big")
    assert msg is not None
    assert msg.payload == data
    msg.ack()


@pytest.mark.dialects("mysql")
def test_mysql_payload_beyond_max_allowed_packet_raises_before_sending(
    make_queue: Callable[..., Queue],
) -> None:
    queue = make_queue(max_payload_size=64 * MIB)
    queue.put(b"warm-up", "big")  # the first use reads the server's max_allowed_packet
    with queue.engine.connect() as conn:
        limit = conn.exec_driver_sql("SELECT @@max_allowed_packet").scalar_one()
    with pytest.raises(squeal.PayloadTooLarge, match="max_allowed_packet"):
        queue.put(_pattern(int(limit) // 2), "big")
    assert queue.size("big") == 1  # nothing else was written, and the queue still works
