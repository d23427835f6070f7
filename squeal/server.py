"""What squeal learns about a database server on first use (read once, never changed)."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Server:
    """The server's version and the limits squeal checks input against before sending it."""

    version: tuple[int, ...] = ()
    #: The largest statement the server accepts, in bytes (MySQL's max_allowed_packet), or None.
    statement_limit: int | None = None


#: Before the first connection: nothing known, nothing limited.
UNKNOWN = Server()

__all__ = ["UNKNOWN", "Server"]
