"""Who may see the dashboard and who may act on it.

* Without a token the dashboard is read-only: every page shows, every action is refused
  (403). It binds 127.0.0.1 by default, so only this machine sees it.
* With a token every page, stream, action and ``/metrics`` needs it: a browser signs in once
  on ``/login`` (a cookie holding a keyed hash of the token, HttpOnly, SameSite=Strict);
  scripts and scrapers send ``Authorization: Bearer TOKEN``.
* ``read_only`` with a token still refuses every action.
* Actions are POSTs. A browser's carry a CSRF field, a keyed hash only the holder of the token
  can compute, checked on every action; a request authenticated by its Authorization header
  carries no ambient credential, so it needs none.
"""

from __future__ import annotations

import hashlib
import hmac
from dataclasses import dataclass

from starlette.requests import Request

COOKIE = "squeal_session"


@dataclass(frozen=True)
class Guard:
    token: str | None
    read_only: bool

    def _keyed(self, purpose: str) -> str:
        assert self.token is not None
        return hmac.new(self.token.encode(), purpose.encode(), hashlib.sha256).hexdigest()

    @property
    def session(self) -> str:
        """The cookie value of a signed-in browser."""
        return self._keyed("session")

    @property
    def csrf(self) -> str:
        """The CSRF field of a signed-in browser's forms ("" without a token)."""
        return "" if self.token is None else self._keyed("csrf")

    def by_header(self, request: Request) -> bool:
        """Whether the request carries the token in its Authorization header."""
        if self.token is None:
            return False
        given = request.headers.get("authorization", "")
        return hmac.compare_digest(given.encode(), f"Bearer {self.token}".encode())

    def admitted(self, request: Request) -> bool:
        """Whether the request may see the dashboard."""
        if self.token is None or self.by_header(request):
            return True
        return hmac.compare_digest(request.cookies.get(COOKIE, "").encode(), self.session.encode())

    def signs_in(self, given: str) -> bool:
        """Whether ``given`` (the login form's field) is the token."""
        return self.token is not None and hmac.compare_digest(given.encode(), self.token.encode())

    @property
    def may_act(self) -> bool:
        """Whether actions are possible at all (a token, not read-only)."""
        return self.token is not None and not self.read_only

    def action_refused(self, request: Request, csrf: str) -> str | None:
        """Why an admitted request's action is refused, or None."""
        if self.token is None:
            return "actions need a token: start the dashboard with --token"
        if self.read_only:
            return "this dashboard is read-only"
        if self.by_header(request):
            return None
        if not hmac.compare_digest(csrf.encode(), self.csrf.encode()):
            return "the form's CSRF token is missing or wrong: reload the page"
        return None


__all__ = ["COOKIE", "Guard"]
