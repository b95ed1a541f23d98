"""Userinfo (`user:password@`) removed from URLs before they are printed, raised or logged.

Index URLs carry tokens (`https://__token__:SECRET@host/simple`) and a pasted endpoint may carry
`KEY:SECRET@`; both reach messages through the URL they name. Everything that shows a URL goes
through `redact_url` (one value known to be a URL) or `redact_text` (free text that may contain
some); `ReleaseError` and `console.info` apply `redact_text` to every message as a last line.

A password may hold an unescaped `/` (AWS secret keys often do), so userinfo runs to the LAST `@`
of the token, not to the first `/`: over-redacting a rare `@` in a path is the safe way to be wrong.
"""

from __future__ import annotations

import re

MASK = "***"

# scheme://userinfo@ inside free text. s3:// names carry no credentials, and prefixes may contain
# '@', so they are left alone.
_IN_TEXT = re.compile(r"(?<![\w+.-])(?!s3://)([A-Za-z][A-Za-z0-9+.-]*://)[^\s'\"<>()\[\]{}]*@")


def redact_url(value: str) -> str:
    """`value` with any userinfo replaced by ***: with or without a scheme (MinIO's `host:port`
    style), since both are accepted as endpoints."""
    if "@" not in value:
        return value
    start = value.find("://")
    start = start + 3 if start >= 0 else 0
    at = value.rfind("@")
    if at < start:
        return value
    return value[:start] + MASK + value[at:]


def redact_text(text: str) -> str:
    """`text` with the userinfo of every scheme://user:pass@host URL in it replaced by ***."""
    if "@" not in text:
        return text
    return _IN_TEXT.sub(lambda m: m.group(1) + MASK + "@", text)
