"""Large payloads, on every driver: the column holds 16 MiB; MySQL/MariaDB's packet limit is
reported, not hit."""

from __future__ import annotations

from collections.abc import Callable

import pytest

import squeal
from squeal import Queue
from tests import needs

MIB = 1024 * 1024


def _pattern(size: int) -> bytes:
    return bytes(range(256)) * (size // 256)


@pytest.mark.every_driver
def test_a_16_mib_payload_round_trips(make_queue: Callable[..., Queue], db: str) -> None:
    queue = make_queue(max_payload_size=16 * MIB)
    if db == "mysql":  # bytes may travel as hex: the packet must hold twice the payload
        with queue.engine.connect() as conn:
            packet = int(conn.exec_driver_sql("SELECT @@max_allowed_packet").scalar_one())
        if packet < 33 * MIB:
            needs.unavailable(
                f"max_allowed_packet is {packet} bytes: a 16 MiB payload needs 33 MiB "
                "(SET GLOBAL max_allowed_packet = 67108864, as .ci/run does)"
            )
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


@pytest.mark.every_driver
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
