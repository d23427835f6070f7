"""How the dashboard shows a payload: JSON pretty-printed, text as text, anything else as a
hex dump; never more than a few KiB of it. The result is plain text, escaped by the template
like everything else a user wrote."""

from __future__ import annotations

import json
from dataclasses import dataclass

#: Bytes of a payload the dashboard reads for its preview.
PREVIEW_BYTES = 4096
#: Bytes shown in a hex dump.
HEX_BYTES = 512


@dataclass(frozen=True)
class Preview:
    #: ``json``, ``text`` or ``binary``.
    kind: str
    text: str
    #: The payload's size in bytes, and whether the preview shows less than all of it.
    size: int
    cut: bool


def preview(payload: bytes) -> Preview:
    """The preview of ``payload``."""
    size = len(payload)
    head = payload[:PREVIEW_BYTES]
    try:
        text = head.decode("utf-8")
    except UnicodeDecodeError as error:
        # A multi-byte character split at the cut is still text.
        if size > PREVIEW_BYTES and error.start >= len(head) - 3:
            text = head[: error.start].decode("utf-8")
        else:
            return _hex(payload)
    if size <= PREVIEW_BYTES:
        try:
            parsed = json.loads(text)
        except ValueError:
            pass
        else:
            if isinstance(parsed, dict | list):
                return Preview(
                    "json", json.dumps(parsed, indent=2, ensure_ascii=False), size, False
                )
    if any(ord(c) < 32 and c not in "\t\n\r" for c in text):
        return _hex(payload)
    return Preview("text", text, size, size > len(text.encode("utf-8")))


def _hex(payload: bytes) -> Preview:
    rows = []
    for offset in range(0, min(len(payload), HEX_BYTES), 16):
        chunk = payload[offset : offset + 16]
        shown = "".join(chr(b) if 32 <= b < 127 else "." for b in chunk)
        rows.append(f"{offset:08x}  {chunk.hex(' '):<47}  {shown}")
    return Preview("binary", "\n".join(rows), len(payload), len(payload) > HEX_BYTES)


__all__ = ["HEX_BYTES", "PREVIEW_BYTES", "Preview", "preview"]
