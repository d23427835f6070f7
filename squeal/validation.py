"""Argument checks that run before any SQL, so bad input never reaches the database."""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from typing import Any

import sqlalchemy as sa

from squeal.errors import InvalidType, PayloadTooLarge, ValidationError
from squeal.schema import MAX_TEXT_LENGTH

INT32_MIN, INT32_MAX = -(2**31), 2**31 - 1
#: Longest delay or timeout squeal accepts: about 100 years, far inside a 64-bit millisecond clock.
MAX_SECONDS = 100 * 365 * 24 * 3600.0
#: Largest payload any supported column holds comfortably (MySQL LONGBLOB, PostgreSQL BYTEA).
MAX_PAYLOAD_LIMIT = 512 * 1024 * 1024


#: Largest headers of one message, as stored (compact JSON, UTF-8 bytes).
HEADERS_LIMIT = 8 * 1024


def headers(value: object) -> str | None:
    """A put's headers as stored: compact JSON of a str-to-str mapping (None: none or empty).

    Keys are 1-255 characters; the whole, as stored, at most HEADERS_LIMIT bytes.
    """
    if value is None:
        return None
    if not isinstance(value, Mapping):
        raise InvalidType(f"headers must be a mapping of str to str, not {type(value).__name__}")
    for key, item in value.items():
        if not isinstance(key, str) or not isinstance(item, str):
            raise InvalidType(
                f"headers must map str to str, not {type(key).__name__} to {type(item).__name__}"
            )
        if not key or len(key) > MAX_TEXT_LENGTH:
            raise ValidationError(f"a header name must be 1-{MAX_TEXT_LENGTH} characters")
    if not value:
        return None
    text = json.dumps(dict(value), ensure_ascii=False, separators=(",", ":"))
    size = len(text.encode())
    if size > HEADERS_LIMIT:
        raise PayloadTooLarge(f"headers take {size} bytes stored, more than {HEADERS_LIMIT}")
    return text


def payload(value: object, limit: int) -> bytes:
    """Return ``value`` as bytes, or raise if it is not bytes-like or larger than ``limit``."""
    if isinstance(value, bytes):
        data = value
    elif isinstance(value, (bytearray, memoryview)):
        data = bytes(value)
    else:
        hint = " (encode it first, e.g. text.encode())" if isinstance(value, str) else ""
        raise InvalidType(f"payload must be bytes-like, not {type(value).__name__}{hint}")
    if len(data) > limit:
        raise PayloadTooLarge(f"payload is {len(data)} bytes; this queue accepts at most {limit}")
    return data


def text(value: object, what: str) -> str:
    """A topic or dedup key: a non-empty str of at most 255 characters, stored exactly."""
    if not isinstance(value, str):
        raise InvalidType(f"{what} must be a str, not {type(value).__name__}")
    if not value or len(value) > MAX_TEXT_LENGTH:
        raise ValidationError(f"{what} must be 1 to {MAX_TEXT_LENGTH} characters, not {len(value)}")
    if "\x00" in value:
        raise ValidationError(f"{what} must not contain NUL characters")
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        raise ValidationError(f"{what} must be valid Unicode (no lone surrogates)") from None
    return value


def optional_text(value: object, what: str) -> str | None:
    """``text`` that also accepts None."""
    return None if value is None else text(value, what)


def texts(value: object, what: str) -> list[str]:
    """Distinct topics or dedup keys of an iterable, in order (a lone str is refused)."""
    if isinstance(value, (str, bytes, bytearray, memoryview)):
        raise InvalidType(f"{what} must be an iterable of str, not {type(value).__name__}")
    try:
        items = iter(value)  # type: ignore[call-overload]
    except TypeError:
        raise InvalidType(
            f"{what} must be an iterable of str, not {type(value).__name__}"
        ) from None
    return list(dict.fromkeys(text(item, what) for item in items))


def priority(value: object) -> int:
    """A signed 32-bit int (bool is refused)."""
    if isinstance(value, bool) or not isinstance(value, int):
        raise InvalidType(f"priority must be an int, not {type(value).__name__}")
    if not INT32_MIN <= value <= INT32_MAX:
        raise ValidationError(f"priority must be between {INT32_MIN} and {INT32_MAX}")
    return value


def seconds(value: object, what: str, *, positive: bool = False) -> float:
    """A finite, non-negative (or positive) number of seconds, at most about 100 years."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise InvalidType(f"{what} must be a number of seconds, not {type(value).__name__}")
    number = float(value)
    if math.isnan(number) or math.isinf(number):
        raise ValidationError(f"{what} must be finite, not {number}")
    if number < 0 or (positive and number == 0):
        raise ValidationError(f"{what} must be {'positive' if positive else 'zero or more'}")
    if number > MAX_SECONDS:
        raise ValidationError(f"{what} must be at most {MAX_SECONDS:.0f} seconds")
    return number


def to_ms(value: float) -> int:
    """Seconds to whole milliseconds."""
    return round(value * 1000)


def count(value: object, what: str, *, minimum: int = 1, maximum: int | None = None) -> int:
    """A whole number in range."""
    if isinstance(value, bool) or not isinstance(value, int):
        raise InvalidType(f"{what} must be an int, not {type(value).__name__}")
    if value < minimum or (maximum is not None and value > maximum):
        upper = f" and at most {maximum}" if maximum is not None else ""
        raise ValidationError(f"{what} must be at least {minimum}{upper}, not {value}")
    return value


def connection(value: object) -> sa.Connection | None:
    """None, or a SQLAlchemy Connection (for example ``session.connection()``)."""
    if value is not None and not isinstance(value, sa.Connection):
        raise InvalidType(f"connection must be a sqlalchemy Connection, not {type(value).__name__}")
    return value


def sequence(value: object, what: str) -> list[Any]:
    """A list or tuple (a lone bytes or str is refused: it is almost always a mistake)."""
    if isinstance(value, (bytes, bytearray, memoryview, str)) or not isinstance(
        value, (list, tuple)
    ):
        raise InvalidType(f"{what} must be a list or tuple, not {type(value).__name__}")
    return list(value)
