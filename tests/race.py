"""Thread races for the conformance tests: calls released at the same instant by a barrier."""

from __future__ import annotations

import threading
from collections.abc import Callable


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
    for t in threads:
        t.join(seconds)
    assert not any(t.is_alive() for t in threads)
    return outcomes
