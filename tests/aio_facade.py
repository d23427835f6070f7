"""A test-only sync facade over squeal.aio, so the conformance suite states each behaviour once
and runs it against AsyncQueue too.

Under an ``aio:`` variant the test function runs inside SQLAlchemy's greenlet bridge on a loop
the test owns (tests/conftest.py): its own SQL goes through the async driver, and each facade
call awaits the AsyncQueue coroutine there (``await_``). Fixture code, outside the bridge, runs
the coroutine to completion on the same loop; a thread of the test (a race) hands it to the
loop, which the test function leaves free while it waits for its threads (tests/race.py).
Results and arguments are converted at the edge: AsyncMessage and AsyncTopicLock come back
wrapped in facades with sync methods, and a ``connection=`` from the test's engine (the
AsyncEngine's sync face) goes in as the AsyncConnection that wraps it.
"""

from __future__ import annotations

import asyncio
import inspect
from collections.abc import Callable, Coroutine, Iterator
from typing import Any

import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from squeal.aio import AsyncBuffer, AsyncMessage, AsyncQueue, AsyncTopicLock
from squeal.bridge import await_, in_async_bridge


class Runner:
    """Runs a coroutine to its end from sync code: awaited inside the bridge, else on the loop."""

    def __init__(self, loop: asyncio.AbstractEventLoop, engine: AsyncEngine) -> None:
        self.loop = loop
        self.engine = engine
        #: One facade per async object's sync counterpart, so identity holds as in sync code.
        self._facades: dict[int, tuple[Any, _Facade]] = {}

    def facade(self, kind: type[_Facade], target: Any, sync: Any) -> _Facade:
        """The facade of ``target`` (whose sync counterpart is ``sync``), made once."""
        known = self._facades.get(id(sync))
        if known is None or known[0] is not sync:
            known = self._facades[id(sync)] = (sync, kind(target, self))
        return known[1]

    def __call__(self, coroutine: Coroutine[Any, Any, Any]) -> Any:
        if in_async_bridge():
            return await_(coroutine)
        if self.loop.is_running():  # another thread of the test (a race): the loop runs it
            return asyncio.run_coroutine_threadsafe(coroutine, self.loop).result()
        return self.loop.run_until_complete(coroutine)

    def inward(self, value: Any) -> Any:
        """An argument, as the async API takes it."""
        if isinstance(value, _Facade):
            return value._target
        if isinstance(value, sa.Connection):
            return AsyncConnection(self.engine, value)
        if isinstance(value, list | tuple) and any(isinstance(v, _Facade) for v in value):
            return type(value)(self.inward(v) for v in value)
        return value

    def outward(self, value: Any) -> Any:
        """A result, as the sync API returns it."""
        if isinstance(value, AsyncMessage):
            return self.facade(MessageFacade, value, value._message)
        if isinstance(value, AsyncTopicLock):
            return self.facade(TopicLockFacade, value, value._lock)
        if isinstance(value, AsyncQueue):
            return self.facade(QueueFacade, value, value.sync)
        if isinstance(value, list):
            return [self.outward(v) for v in value]
        return value


class _Facade:
    """Sync access to an async object: coroutine methods are run, the rest passed through; what
    the async object lacks (private state the tests inspect) comes from its sync counterpart."""

    def __init__(self, target: Any, runner: Runner, sync: Any) -> None:
        object.__setattr__(self, "_target", target)
        object.__setattr__(self, "_runner", runner)
        object.__setattr__(self, "_sync", sync)

    def __getattr__(self, name: str) -> Any:
        target = self._target
        if not hasattr(target, name):
            return getattr(self._sync, name)
        value = getattr(target, name)
        if inspect.iscoroutinefunction(value):
            return self._method(value)
        if callable(value) and not isinstance(value, type):
            method = value

            def plain(*args: Any, **kwargs: Any) -> Any:
                runner = self._runner
                args = tuple(runner.inward(a) for a in args)
                kwargs = {k: runner.inward(v) for k, v in kwargs.items()}
                return runner.outward(method(*args, **kwargs))

            return plain
        return self._runner.outward(value)

    def __setattr__(self, name: str, value: Any) -> None:
        setattr(self._sync, name, value)

    @property  # type: ignore[misc]
    def __class__(self) -> type:  # isinstance(facade, Message) holds, as for the sync object
        return type(self._sync)

    def _method(self, coroutine_function: Callable[..., Any]) -> Callable[..., Any]:
        runner = self._runner

        def call(*args: Any, **kwargs: Any) -> Any:
            args = tuple(runner.inward(a) for a in args)
            kwargs = {k: runner.inward(v) for k, v in kwargs.items()}
            return runner.outward(runner(coroutine_function(*args, **kwargs)))

        return call

    def __repr__(self) -> str:
        return f"<facade of {self._target!r}>"


class QueueFacade(_Facade):
    """An AsyncQueue with Queue's sync surface."""

    def __init__(self, queue: AsyncQueue, runner: Runner) -> None:
        super().__init__(queue, runner, queue.sync)

    @property
    def engine(self) -> sa.Engine:
        return self._sync.engine  # type: ignore[no-any-return]

    def buffer(self, **options: Any) -> BufferFacade:
        """An AsyncBuffer of this queue, behind Buffer's sync surface."""
        buffer = AsyncBuffer(self._target, **options)
        return self._runner.facade(BufferFacade, buffer, buffer.sync)  # type: ignore[return-value]


class MessageFacade(_Facade):
    """An AsyncMessage with Message's sync surface (``with message:`` included)."""

    def __init__(self, message: AsyncMessage, runner: Runner) -> None:
        super().__init__(message, runner, message._message)

    def __enter__(self) -> MessageFacade:
        return self

    def __exit__(self, *exc: Any) -> None:
        self._runner(self._target.__aexit__(*exc))


class TopicLockFacade(_Facade):
    """An AsyncTopicLock with TopicLock's sync surface."""

    def __init__(self, lock: AsyncTopicLock, runner: Runner) -> None:
        super().__init__(lock, runner, lock._lock)

    def __enter__(self) -> TopicLockFacade:
        return self

    def __exit__(self, *exc: Any) -> None:
        self._runner(self._target.__aexit__(*exc))


class BufferFacade(_Facade):
    """An AsyncBuffer with Buffer's sync surface (``with`` and iteration included)."""

    def __init__(self, buffer: AsyncBuffer, runner: Runner) -> None:
        super().__init__(buffer, runner, buffer.sync)

    def __enter__(self) -> BufferFacade:
        return self

    def __exit__(self, *exc: Any) -> None:
        self._runner(self._target.__aexit__(*exc))

    def __iter__(self) -> Iterator[Any]:
        while (message := self.get()) is not None:
            yield message


__all__ = ["BufferFacade", "MessageFacade", "QueueFacade", "Runner", "TopicLockFacade"]
