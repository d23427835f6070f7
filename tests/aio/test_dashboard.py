"""The dashboard over an AsyncQueue on every asyncio driver: its operations are awaited on the
server's loop (no thread pool), through a real ASGI exchange."""

from __future__ import annotations

import httpx

from squeal.web import app
from tests.aio.test_native import opened, run

BEARER = {"Authorization": "Bearer tok"}


def test_the_dashboard_serves_an_async_queue(async_url: str) -> None:
    async def body() -> None:
        async with opened(async_url, max_attempts=1) as q:
            await q.put_many([b"a", b"b"], "mail")
            msg = await q.get("mail")
            assert msg is not None
            await msg.nack(error="broken")
            application = app(q, token="tok", cache=0)
            transport = httpx.ASGITransport(app=application)
            async with httpx.AsyncClient(transport=transport, base_url="http://dash") as c:
                overview = await c.get("/", headers=BEARER)
                assert overview.status_code == 200
                assert 'data-field="ready">1<' in overview.text
                dead = await c.get("/dead", params={"topic": "mail"}, headers=BEARER)
                assert "broken" in dead.text
                done = await c.post("/actions/redrive", data={"topic": "mail"}, headers=BEARER)
                assert done.text == "redrove 1 message(s)\n"
                metrics = await c.get("/metrics", headers=BEARER)
                assert 'squeal_messages{state="ready",topic="mail"} 2.0' in metrics.text
            assert (await q.stats())["mail"].ready == 2

    run(body())
