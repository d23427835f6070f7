"""The dashboard's ASGI application (Starlette): pages, the live event stream, actions and
``/metrics``. ``squeal dashboard`` serves it; ``squeal.web.app(queue)`` mounts it in yours."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

import jinja2
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import (
    PlainTextResponse,
    RedirectResponse,
    Response,
    StreamingResponse,
)
from starlette.routing import Mount, Route
from starlette.staticfiles import StaticFiles
from starlette.templating import Jinja2Templates

from squeal import validation as check
from squeal.aio.queue import AsyncQueue
from squeal.errors import InvalidType, SquealError, ValidationError
from squeal.queue import Queue
from squeal.snapshot import PERIOD, CountLimit, Snapshot
from squeal.version import __version__
from squeal.web.auth import COOKIE, Guard
from squeal.web.backend import Backend
from squeal.web.live import Live
from squeal.web.payloads import preview

HERE = Path(__file__).resolve().parent
#: Messages a page lists at most.
PAGE_LIMIT = 200

Handler = Callable[[Request], Awaitable[Response]]


def app(
    queue: Queue | AsyncQueue,
    *,
    token: str | None = None,
    read_only: bool = False,
    cache: float = PERIOD,
    count_limit: CountLimit | None = None,
) -> Starlette:
    """The dashboard of ``queue`` as an ASGI application.

    Args:
        queue: a :class:`squeal.Queue` (its calls run on the server's thread pool) or a
            :class:`squeal.aio.AsyncQueue` (awaited on the server's loop).
        token: required of every request when given (see squeal.web.auth); without one the
            dashboard is read-only.
        read_only: refuse every action even with a token.
        cache: seconds between reads of the queue's state, shared by every page, stream and
            scrape.
        count_limit: how many messages per topic and state a read counts exactly (above:
            lower bounds, marked +); by default it adapts to keep each read short.
    """
    guard = Guard(token or None, bool(read_only))
    live = Live(Backend(queue), check.seconds(cache, "cache"), limit=count_limit or CountLimit())
    pages = _Pages(live, guard)
    routes = [
        Route("/", pages.guarded(pages.overview), name="overview"),
        Route("/topic", pages.guarded(pages.topic), name="topic"),
        Route("/messages", pages.guarded(pages.messages), name="messages"),
        Route("/dead", pages.guarded(pages.dead), name="dead"),
        Route("/workers", pages.guarded(pages.workers), name="workers"),
        Route("/events", pages.guarded(pages.events), name="events"),
        Route("/metrics", pages.guarded(pages.metrics), name="metrics"),
        Route("/login", pages.login, methods=["GET", "POST"], name="login"),
        Route("/logout", pages.logout, methods=["POST"], name="logout"),
        Route("/actions/{action}", pages.guarded(pages.act), methods=["POST"], name="act"),
        Mount("/static", StaticFiles(directory=HERE / "static"), name="static"),
    ]
    application = Starlette(routes=routes)
    application.state.live = live
    return application


class _Pages:
    def __init__(self, live: Live, guard: Guard) -> None:
        self.live = live
        self.guard = guard
        # Autoescaped: a topic, payload or error a user wrote shows as text, never as markup.
        env = jinja2.Environment(
            loader=jinja2.FileSystemLoader(HERE / "templates"), autoescape=True
        )
        env.globals["points"] = points
        self.templates = Jinja2Templates(env=env)

    # -- plumbing -------------------------------------------------------------------------------

    def guarded(self, handler: Handler) -> Handler:
        async def admitted(request: Request) -> Response:
            if not self.guard.admitted(request):
                if "text/html" in request.headers.get("accept", "") and request.method == "GET":
                    to = _base(request) + "/login?" + urlencode({"next": _here(request)})
                    return RedirectResponse(to, status_code=303)
                return PlainTextResponse(
                    "a token is required\n", 401, headers={"WWW-Authenticate": "Bearer"}
                )
            try:
                return await handler(request)
            except (ValidationError, InvalidType) as error:  # a bad topic, id or count
                return PlainTextResponse(f"{error}\n", 400)
            except SquealError as error:
                return self.render(request, "error.html", {"error": str(error)}, status=503)

        return admitted

    def render(
        self, request: Request, name: str, context: dict[str, Any], status: int = 200
    ) -> Response:
        base = _base(request)
        common = {
            "base": base,
            "prefix": self.live.backend.prefix,
            "version": __version__,
            "csrf": self.guard.csrf,
            "may_act": self.guard.may_act,
            "signed_in": self.guard.token is not None,
            "read_only": self.guard.read_only,
            "note": request.query_params.get("note"),
            "period": self.live.period,
        }
        response: Response = self.templates.TemplateResponse(
            request, name, {**common, **context}, status_code=status
        )
        return response

    def _topic(self, request: Request, key: str = "topic") -> str:
        return check.text(request.query_params.get(key, ""), "topic")

    # -- pages ----------------------------------------------------------------------------------

    async def overview(self, request: Request) -> Response:
        snapshot = await self.live.get()
        rows = [
            {"topic": topic, "stats": stats, "series": self.live.series(topic)}
            for topic, stats in snapshot.stats.items()
        ]
        estimated = any(stats.estimated for stats in snapshot.stats.values())
        context = {
            "rows": rows,
            "snapshot": snapshot,
            "rates": self.live.rates(),
            "estimated": estimated,
        }
        return self.render(request, "overview.html", context)

    async def topic(self, request: Request) -> Response:
        topic = self._topic(request, "name")
        snapshot = await self.live.get()
        limits = [lim for lim in await self.live.backend.limits() if lim.topic == topic]
        context = {
            "topic": topic,
            "stats": snapshot.stats.get(topic),
            "series": self.live.series(topic),
            "limit": limits[0] if limits else None,
            "workers": [w for w in snapshot.workers if topic in w.topics],
        }
        return self.render(request, "topic.html", context)

    async def messages(self, request: Request) -> Response:
        topic = self._topic(request)
        found = await self.live.backend.peek(topic, _count(request, 20))
        shown = [{"message": m, "preview": preview(m.payload)} for m in found]
        return self.render(request, "messages.html", {"topic": topic, "messages": shown})

    async def dead(self, request: Request) -> Response:
        topic = self._topic(request)
        found = await self.live.backend.dead(topic, _count(request, 50))
        shown = [{"message": m, "preview": preview(m.payload)} for m in found]
        return self.render(request, "dead.html", {"topic": topic, "messages": shown})

    async def workers(self, request: Request) -> Response:
        snapshot = await self.live.get()
        return self.render(request, "workers.html", {"snapshot": snapshot})

    async def events(self, request: Request) -> Response:
        """Server-sent events: the overview's numbers after every read (one per period)."""

        async def stream() -> AsyncIterator[str]:
            yield f"retry: {int(max(self.live.period, 1) * 1000)}\n\n"
            while not await request.is_disconnected():
                try:
                    snapshot = await self.live.get()
                except SquealError as error:
                    payload: dict[str, Any] = {"error": str(error)}
                else:
                    payload = self._event(snapshot)
                yield f"data: {json.dumps(payload)}\n\n"
                await asyncio.sleep(max(self.live.period, 0.5))

        headers = {"Cache-Control": "no-store", "X-Accel-Buffering": "no"}
        return StreamingResponse(stream(), media_type="text/event-stream", headers=headers)

    def _event(self, snapshot: Snapshot) -> dict[str, Any]:
        topics = {
            topic: {
                "ready": s.ready,
                "delayed": s.delayed,
                "leased": s.leased,
                "dead": s.dead,
                "oldest": s.oldest_ready_age,
                "paused": s.paused,
                "estimated": s.estimated,
                "series": self.live.series(topic),
            }
            for topic, s in snapshot.stats.items()
        }
        return {
            "topics": topics,
            "workers": len(snapshot.workers),
            "in_flight": sum(w.in_flight for w in snapshot.workers),
            "rates": self.live.rates(),
            "taken_at": snapshot.taken_at,
            "limit": snapshot.limit,
        }

    async def metrics(self, request: Request) -> Response:
        try:
            from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest
        except ImportError:
            return PlainTextResponse("/metrics needs prometheus_client: squeal[metrics]\n", 501)
        from squeal.metrics import families

        snapshot = await self.live.get()

        class Once:
            def collect(self) -> Any:
                return families(snapshot)

        registry = CollectorRegistry()
        registry.register(Once())
        return Response(generate_latest(registry), media_type=CONTENT_TYPE_LATEST)

    # -- signing in -----------------------------------------------------------------------------

    async def login(self, request: Request) -> Response:
        base = _base(request)
        wanted = _local(request.query_params.get("next", ""), base)
        if self.guard.token is None:
            return RedirectResponse(base + "/", status_code=303)
        if request.method == "POST":
            form = await request.form()
            if self.guard.signs_in(str(form.get("token", ""))):
                done = RedirectResponse(wanted, status_code=303)
                done.set_cookie(
                    COOKIE,
                    self.guard.session,
                    httponly=True,
                    samesite="strict",
                    path=base + "/",
                    secure=request.url.scheme == "https",
                )
                return done
            return self.render(request, "login.html", {"wrong": True, "next": wanted}, 401)
        return self.render(request, "login.html", {"wrong": False, "next": wanted})

    async def logout(self, request: Request) -> Response:
        base = _base(request)
        done = RedirectResponse(base + "/login", status_code=303)
        done.delete_cookie(COOKIE, path=base + "/")
        return done

    # -- actions --------------------------------------------------------------------------------

    async def act(self, request: Request) -> Response:
        form = await request.form()
        refused = self.guard.action_refused(request, str(form.get("csrf", "")))
        if refused is not None:
            return PlainTextResponse(refused + "\n", 403)
        action = request.path_params["action"]
        topic = check.text(str(form.get("topic", "")), "topic")
        try:
            ids = [int(str(i)) for i in form.getlist("id") if str(i).strip()] or None
        except ValueError:
            raise ValidationError("an id must be a whole number") from None
        backend = self.live.backend
        if action == "redrive":
            note = f"redrove {await backend.redrive(topic, ids)} message(s)"
        elif action == "purge":
            note = f"purged {await backend.purge_dead(topic, ids)} dead message(s)"
        elif action == "pause":
            await backend.pause(topic)
            note = f"paused {topic}"
        elif action == "resume":
            await backend.resume(topic)
            note = f"resumed {topic}"
        else:
            return PlainTextResponse(f"no action {action!r}\n", 404)
        self.live.expire()
        if self.guard.by_header(request):
            return PlainTextResponse(note + "\n")
        back = _local(str(form.get("back", "")), _base(request))
        joiner = "&" if "?" in back else "?"
        return RedirectResponse(back + joiner + urlencode({"note": note}), status_code=303)


def points(series: list[float] | list[int]) -> str:
    """An SVG polyline's points for a 120 x 24 sparkline of ``series`` (as squeal.js draws)."""
    if not series:
        return ""
    most = max(1.0, *series)
    step = 120 / (len(series) - 1) if len(series) > 1 else 0
    return " ".join(f"{i * step:.1f},{23 - v / most * 22:.1f}" for i, v in enumerate(series))


def _base(request: Request) -> str:
    """Where the dashboard is mounted (``""`` at the root)."""
    return str(request.scope.get("root_path", "")).rstrip("/")


def _here(request: Request) -> str:
    """The path and query the browser asked for."""
    query = request.url.query
    return request.url.path + ("?" + query if query else "")


def _local(target: str, base: str) -> str:
    """``target`` if it is a path inside the dashboard, else its overview (no open redirect)."""
    target = target.split("#", maxsplit=1)[0]
    if target.startswith(base + "/") and not target.startswith("//") and "\\" not in target:
        # A 'note' from an earlier action does not pile up.
        path, _, query = target.partition("?")
        kept = "&".join(p for p in query.split("&") if p and not p.startswith("note="))
        return path + ("?" + kept if kept else "")
    return base + "/"


def _count(request: Request, default: int) -> int:
    try:
        wanted = int(request.query_params.get("n", default))
    except ValueError:
        wanted = default
    return max(1, min(wanted, PAGE_LIMIT))


__all__ = ["PAGE_LIMIT", "app"]
