"""The database clock: ``now_ms()`` is the server's current time in epoch milliseconds.

squeal never binds a client-side timestamp into claim, ack or backoff SQL; every time comparison
uses this expression, compiled per dialect in ``squeal.dialects``.
"""

from __future__ import annotations

from typing import Any

import sqlalchemy as sa
from sqlalchemy.ext.compiler import compiles
from sqlalchemy.sql.functions import FunctionElement


class now_ms(FunctionElement[int]):
    """The database server's clock, in integer milliseconds since the Unix epoch."""

    type = sa.BigInteger()
    inherit_cache = True
    name = "squeal_now_ms"


@compiles(now_ms)
def _no_clock(element: now_ms, compiler: Any, **kw: Any) -> str:
    raise NotImplementedError(f"squeal has no clock for the {compiler.dialect.name} dialect")
