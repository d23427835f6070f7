"""The handler module the entrypoint's worker runs (``handlers:handle``)."""

from __future__ import annotations

from squeal import Message


def handle(message: Message) -> None:
    print(f"handled {message.payload.decode()}", flush=True)
