"""An asyncio web app: a request's order and its message commit together, an AsyncWorker ships.

Run:  python examples/asyncio_starlette.py [--url ASYNC_URL]
Serve: uvicorn examples.asyncio_starlette:app   (SQUEAL_URL=postgresql+asyncpg://... to choose)

``POST /orders`` inserts an order and puts a message in the request's own transaction
(``connection=await session.connection()``): an order the request rolls back (an empty item
here) leaves no message. The app's lifespan starts an ``AsyncWorker`` beside the server, which
handles each message and marks its order shipped. Run directly, the script sends a few
requests to the app in-process (httpx's ASGI transport: no server, no port), waits for the
worker, prints what happened and drops its tables (prefix ``example_web``).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import tempfile
from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import sqlalchemy as sa
from sqlalchemy import orm
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, create_async_engine
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from squeal.aio import AsyncMessage, AsyncQueue, AsyncWorker

PREFIX = "example_web"


class Base(orm.DeclarativeBase):
    pass


class Order(Base):
    __tablename__ = f"{PREFIX}_orders"
    id: orm.Mapped[int] = orm.mapped_column(primary_key=True)
    item: orm.Mapped[str] = orm.mapped_column(sa.String(100))
    shipped: orm.Mapped[bool] = orm.mapped_column(default=False)


def build_app(engine: AsyncEngine) -> Starlette:
    """The web app: one route that takes orders, and a worker for its lifespan."""
    queue = AsyncQueue(engine, prefix=PREFIX)

    async def place_order(request: Request) -> JSONResponse:
        item = str((await request.json()).get("item", ""))
        async with AsyncSession(engine) as session, session.begin():
            order = Order(item=item)
            session.add(order)
            await session.flush()  # assigns order.id
            message = f"{order.id}".encode()
            await queue.put(message, "orders", connection=await session.connection())
            if not item:  # anything that fails the request rolls back the order and its message
                await session.rollback()
                return JSONResponse({"error": "an order needs an item"}, status_code=422)
            return JSONResponse({"order": order.id}, status_code=201)

    async def ship(message: AsyncMessage) -> None:
        async with AsyncSession(engine) as session, session.begin():
            order = await session.get(Order, int(message.payload))
            if order is not None:
                order.shipped = True

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        async with engine.begin() as conn:
            await conn.run_sync(Base.metadata.create_all)
        await queue.create()
        worker = AsyncWorker(queue, ship, "orders", concurrency=4, wait=0.1)
        running = asyncio.create_task(worker.run(install_signal_handlers=False))
        app.state.worker = worker
        try:
            yield
        finally:
            worker.stop()
            await running
            await queue.close()

    return Starlette(routes=[Route("/orders", place_order, methods=["POST"])], lifespan=lifespan)


app = build_app(create_async_engine(os.environ.get("SQUEAL_URL", "sqlite+aiosqlite:///web.db")))


async def main(url: str) -> None:
    engine = create_async_engine(url)
    web = build_app(engine)
    try:
        async with web.router.lifespan_context(web):
            transport = httpx.ASGITransport(app=web)
            async with httpx.AsyncClient(transport=transport, base_url="http://app") as client:
                for item in ("book", "", "lamp"):
                    response = await client.post("/orders", json={"item": item})
                    print(f"POST /orders {item!r}: {response.status_code} {response.json()}")
            worker: AsyncWorker = web.state.worker
            while worker.stats.acked < 2:
                await asyncio.sleep(0.05)
            async with AsyncSession(engine) as session:
                orders = (await session.scalars(sa.select(Order).order_by(Order.id))).all()
                for order in orders:
                    print(f"order {order.id} {order.item!r}: shipped={order.shipped}")
        assert [o.item for o in orders] == ["book", "lamp"], "the rolled-back order was kept"
        assert all(o.shipped for o in orders), "an order was not shipped"
    finally:
        await AsyncQueue(engine, prefix=PREFIX).destroy()
        async with engine.begin() as conn:
            await conn.run_sync(Base.metadata.drop_all)
        await engine.dispose()


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    default = f"sqlite+aiosqlite:///{Path(tempfile.mkdtemp()) / 'web.db'}"
    parser.add_argument("--url", default=default, help="an async SQLAlchemy URL")
    asyncio.run(main(parser.parse_args().url))
