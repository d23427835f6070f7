"""squeal's structured log events: the ``squeal`` logger, quiet unless the application asks.

Every event is one record whose message is the event name followed by its fields, and whose
fields are also attributes of the record (``extra=``): ``record.squeal_event`` is the name and
``record.topic``, ``record.message_id`` and so on carry the values. Payload bytes are never
logged.
"""

from __future__ import annotations

import logging
from typing import Any

logger = logging.getLogger("squeal")
logger.addHandler(logging.NullHandler())


def event(name: str, level: int = logging.DEBUG, /, **fields: Any) -> None:
    """Log event ``name`` with ``fields`` (cheap when the level is off)."""
    if not logger.isEnabledFor(level):
        return
    text = " ".join(f"{key}={value!r}" for key, value in fields.items())
    logger.log(level, "%s %s", name, text, extra={"squeal_event": name, **fields})
