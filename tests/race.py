"""Thread races for the conformance tests: calls released at the same instant by a barrier.

Under squeal.aio (the test function inside the bridge, tests/aio_facade.py) the threads are
joined from a worker thread the loop awaits, so the loop stays free to run the facade's
coroutines that the threads hand it.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable

from squeal.bridge import await_, in_async_bridge


def race(calls: list[Callable[[], object]], *, seconds: float = 60.0) -> list[object]:
    """Run ``calls`` in threads released at once; each one's result or exception, in order.

    Every thread must finish within ``seconds``, or the race fails.
    """
    barrier = threading.Barrier(len(calls), timeout=10)
    outcomes: list[object] = [None] * len(calls)

    def run(i: int) -> None:
        barrier.wait()
        try:
            outcomes[i] = calls[i]()
        except Exception as exc:
            outcomes[i] = exc

    threads = [threading.Thread(target=run, args=(i,)) for i in range(len(calls))]
    for t in threads:
        t.start()
    joined(threads, seconds)
    return outcomes


def joined(threads: list[threading.Thread], seconds: float = 60.0) -> None:
    """Wait for ``threads`` (``seconds`` at most each). Under squeal.aio the wait runs on a
    worker thread the loop awaits, so the loop stays free to finish what the threads handed it:
    a plain ``join`` there would block the loop that a thread's facade call is waiting on."""
    if in_async_bridge():
        await_(asyncio.to_thread(join, threads, seconds))
    else:
        join(threads, seconds)


def join(threads: list[threading.Thread], seconds: float) -> None:
    """Wait for every thread, ``seconds`` at most each; fail if one is still running."""
    for t in threads:
        t.join(seconds)
    assert not any(t.is_alive() for t in threads)
