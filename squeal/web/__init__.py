"""squeal's dashboard (``pip install 'squeal[web]'``; docs/dashboard.md): ``squeal dashboard``
serves it; ``squeal.web.app(queue)`` is the ASGI application to mount in yours."""

from __future__ import annotations

try:
    import jinja2  # noqa: F401
    import starlette  # noqa: F401
except ImportError as missing:  # pragma: no cover - the extra is installed in the tests
    raise ImportError("squeal.web needs its extra: pip install 'squeal[web]'") from missing

from squeal.web.app import app

__all__ = ["app"]
