"""The dashboard's HTTP surface on every database, through Starlette's test client (no
browser): pages, the token and CSRF rules, actions, escaping, /metrics, mounting under a path,
and payload previews. tests/web/test_browser.py drives a real browser."""

from __future__ import annotations

import re
from collections.abc import Callable, Iterator

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families
from starlette.applications import Starlette
from starlette.routing import Mount

from squeal import Queue
from squeal.snapshot import CountLimit
from squeal.web import app
from squeal.web.payloads import HEX_BYTES, PREVIEW_BYTES, preview
from tests.web.serving import served

TOKEN = "t0ken"
EVIL = "<script>alert(1)</script>"


def dead_one(q: Queue, topic: str = "jobs", payload: bytes = b'{"n": 1}') -> int:
    """A dead message of ``topic`` (the queue has max_attempts=1)."""
    q.put(payload, topic)
    msg = q.get(topic)
    assert msg is not None
    msg.nack(error=ValueError(f"broken {EVIL}"))
    return msg.id


@pytest.fixture
def q(make_queue: Callable[..., Queue]) -> Queue:
    return make_queue(max_attempts=1)


@pytest.fixture
def client(q: Queue) -> Iterator[httpx.Client]:
    with served(app(q, token=TOKEN, cache=0)) as url, httpx.Client(base_url=url) as c:
        yield c


def signed_in(client: httpx.Client) -> str:
    """Sign in through the form; the CSRF field of the pages."""
    done = client.post("/login?next=/", data={"token": TOKEN})
    assert done.status_code == 303
    page = client.get("/").text
    return csrf_of(client, page)


def csrf_of(client: httpx.Client, page: str) -> str:
    found = re.search(r'<meta name="csrf" content="([0-9a-f]+)">', page)
    assert found, page
    return found.group(1)


def test_every_page_shows_the_queue(client: httpx.Client, q: Queue) -> None:
    q.put_many([b"a", b"b"], "mail", headers={"trace": "x1"})
    q.put(b"later", "mail", delay=3600)
    dead_id = dead_one(q)
    q.pause("mail")
    signed_in(client)
    overview = client.get("/")
    assert overview.status_code == 200
    assert 'data-topic="mail"' in overview.text
    assert 'data-field="ready">2<' in overview.text
    topic = client.get("/topic", params={"name": "mail"}).text
    assert "paused" in topic
    assert ">Resume<" in topic
    messages = client.get("/messages", params={"topic": "mail"}).text
    assert messages.count("<tr data-id=") == 2
    assert "x1" in messages
    dead = client.get("/dead", params={"topic": "jobs"}).text
    assert f'<tr data-id="{dead_id}">' in dead
    assert "failed" in dead
    assert "ValueError: broken" in dead
    assert client.get("/workers").status_code == 200


def test_without_the_token_nothing_is_served_or_done(client: httpx.Client, q: Queue) -> None:
    dead_one(q)
    browser = client.get("/", headers={"Accept": "text/html"})
    assert browser.status_code == 303
    assert browser.headers["location"] == "/login?next=%2F"
    for path in ("/", "/dead?topic=jobs", "/workers", "/events", "/metrics"):
        assert client.get(path).status_code == 401, path
    assert client.post("/actions/redrive", data={"topic": "jobs"}).status_code == 401
    wrong = client.post("/login", data={"token": "nope"})
    assert wrong.status_code == 401
    assert "not the token" in wrong.text
    assert client.get("/").status_code == 401
    assert client.get("/", headers={"Authorization": "Bearer nope"}).status_code == 401
    assert q.stats()["jobs"].dead == 1


def test_actions_need_the_csrf_field_and_do_what_they_say(client: httpx.Client, q: Queue) -> None:
    first, second = dead_one(q), dead_one(q)
    csrf = signed_in(client)
    forged = client.post("/actions/redrive", data={"topic": "jobs", "id": first})
    assert forged.status_code == 403
    assert (
        client.post(
            "/actions/redrive", data={"topic": "jobs", "id": first, "csrf": "0" * 64}
        ).status_code
        == 403
    )
    assert q.stats()["jobs"].dead == 2
    done = client.post(
        "/actions/redrive",
        data={"topic": "jobs", "id": first, "csrf": csrf, "back": "/dead?topic=jobs"},
    )
    assert done.status_code == 303
    assert done.headers["location"] == "/dead?topic=jobs&note=redrove+1+message%28s%29"
    assert q.stats()["jobs"].dead == 1
    assert q.stats()["jobs"].ready == 1
    purged = client.post(
        "/actions/purge", data={"topic": "jobs", "id": second, "csrf": csrf, "back": "//evil"}
    )
    assert purged.headers["location"].startswith("/?note=purged+1")  # never off the site
    assert q.stats()["jobs"].dead == 0
    bad = client.post("/actions/redrive", data={"topic": "jobs", "id": "x", "csrf": csrf})
    assert bad.status_code == 400
    assert client.get("/dead", params={"topic": ""}).status_code == 400
    client.post("/actions/pause", data={"topic": "jobs", "csrf": csrf})
    assert q.paused() == ["jobs"]
    client.post("/actions/resume", data={"topic": "jobs", "csrf": csrf})
    assert q.paused() == []
    # A script with the bearer token needs no CSRF field: it carries no cookie.
    dead_one(q)
    with httpx.Client(base_url=client.base_url) as scripted:
        answer = scripted.post(
            "/actions/redrive",
            data={"topic": "jobs"},
            headers={"Authorization": f"Bearer {TOKEN}"},
        )
    assert answer.status_code == 200
    assert answer.text == "redrove 1 message(s)\n"


def test_read_only_and_tokenless_dashboards_refuse_every_action(q: Queue) -> None:
    dead_one(q)
    bearer = {"Authorization": f"Bearer {TOKEN}"}
    with (
        served(app(q, token=TOKEN, read_only=True, cache=0)) as url,
        httpx.Client(base_url=url) as ro,
    ):
        assert (
            ro.post("/actions/redrive", data={"topic": "jobs"}, headers=bearer).status_code == 403
        )
        assert "Redrive" not in ro.get("/dead?topic=jobs", headers=bearer).text
    with served(app(q, cache=0)) as url, httpx.Client(base_url=url) as open_:
        page = open_.get("/dead?topic=jobs")
        assert page.status_code == 200
        assert "Redrive" not in page.text
        assert "read-only (no token)" in page.text
        assert open_.post("/actions/redrive", data={"topic": "jobs"}).status_code == 403
    assert q.stats()["jobs"].dead == 1


def test_what_users_wrote_is_escaped(client: httpx.Client, q: Queue) -> None:
    q.put(EVIL.encode(), EVIL)
    dead_one(q, topic=EVIL, payload=EVIL.encode())
    signed_in(client)
    for path, params in (("/", {}), ("/topic", {"name": EVIL}), ("/messages", {"topic": EVIL})):
        text = client.get(path, params=params).text
        assert EVIL not in text, path
        assert "&lt;script&gt;alert(1)&lt;/script&gt;" in text, path
    dead = client.get("/dead", params={"topic": EVIL}).text
    assert EVIL not in dead
    assert "broken &lt;script&gt;" in dead


def test_metrics_equal_stats_and_share_the_pages_reads(q: Queue) -> None:
    q.put_many([b"a", b"b"], "mail")
    dead_one(q)
    application = app(q, token=TOKEN, cache=60)
    bearer = {"Authorization": f"Bearer {TOKEN}"}
    with served(application) as url, httpx.Client(base_url=url) as c:
        c.get("/", headers=bearer)
        text = c.get("/metrics", headers=bearer).text
        for _ in range(20):
            c.get("/metrics", headers=bearer)
            c.get("/", headers=bearer)
    assert application.state.live.reads == 1  # 42 requests, one read of the database
    found = {
        (s.labels["topic"], s.labels["state"]): s.value
        for family in text_string_to_metric_families(text)
        if family.name == "squeal_messages"
        for s in family.samples
    }
    expected = {
        (topic, state): getattr(stats, state)
        for topic, stats in q.stats().items()
        for state in ("ready", "delayed", "leased", "dead")
    }
    assert found == expected


def test_counts_over_the_limit_are_marked_as_lower_bounds(q: Queue) -> None:
    q.put_many([b"x"] * 3, "big")
    q.put(b"x", "small")
    application = app(q, token=TOKEN, cache=0, count_limit=CountLimit(value=2, least=2, most=2))
    bearer = {"Authorization": f"Bearer {TOKEN}"}
    with served(application) as url, httpx.Client(base_url=url) as c:
        overview = c.get("/", headers=bearer).text
        topic = c.get("/topic", params={"name": "big"}, headers=bearer).text
    assert 'data-field="ready">2<span class="bound"' in overview
    assert 'data-field="ready">1<' in overview
    assert '<p class="note" id="estimated-note">' in overview, "the note is shown"
    assert '<span id="count-limit">2</span>' in overview
    assert '<dd>2<span class="bound"' in topic


def test_mounted_under_a_path_every_link_stays_under_it(q: Queue) -> None:
    q.put(b"x", "mail")
    outer = Starlette(routes=[Mount("/ops/queue", app(q, token=TOKEN, cache=0))])
    with served(outer) as url, httpx.Client(base_url=url) as c:
        to_login = c.get("/ops/queue/", headers={"Accept": "text/html"})
        assert to_login.headers["location"] == "/ops/queue/login?next=%2Fops%2Fqueue%2F"
        done = c.post("/ops/queue/login?next=/ops/queue/topic?name=mail", data={"token": TOKEN})
        assert done.headers["location"] == "/ops/queue/topic?name=mail"
        page = c.get("/ops/queue/").text
        links = re.findall(r'(?:href|src|action)="([^"]+)"', page)
        assert links
        assert all(link.startswith("/ops/queue/") for link in links), links
        assert c.get("/ops/queue/static/squeal.js").status_code == 200


def test_payload_previews() -> None:
    assert preview(b'{"a": [1, 2]}').kind == "json"
    assert preview(b'{"a": [1, 2]}').text == '{\n  "a": [\n    1,\n    2\n  ]\n}'
    assert preview("plain ü text".encode()) == preview("plain ü text".encode())
    assert preview("plain ü text".encode()).kind == "text"
    assert preview(b"\x00\x01binary").kind == "binary"
    assert preview(b"\x00\x01binary").text.startswith("00000000  00 01 62 69")
    long = ("é" * PREVIEW_BYTES).encode()  # cut inside a two-byte character: still text
    shown = preview(long)
    assert (shown.kind, shown.cut, shown.size) == ("text", True, len(long))
    assert len(shown.text.encode()) <= PREVIEW_BYTES
    big = bytes(range(256)) * 10
    assert preview(big).cut
    assert preview(big).text.count("\n") == HEX_BYTES // 16 - 1
