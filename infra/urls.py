"""Database URLs in messages: one way to hide their secrets, one check that they can be parsed.

The rule: every database URL that reaches an error message, a log line, a printed line or a stored
manifest goes through :func:`redact_url` first, and every driver message that may quote one goes
through :func:`scrub`. The only places that print URLs whole are ``recsys stack env`` and
``recsys stack status``, whose point is to hand out the embedded stack's URLs (they hold no
password).

What counts as a secret:

- the password of the user-info part, ``scheme://user:PASSWORD@host``. Where the user info ends is
  decided leniently (the last ``@`` before the query), so a password holding an unencoded ``@``,
  ``/``, ``?`` or ``#`` is hidden whole, not in pieces;
- the value of every query (or libpq ``key=value``) parameter whose name says password, secret,
  token, key or signature: ``?password=``, ``sslpassword=``, ``passfile=``, ``api_key=``...

:func:`check_url` refuses a URL whose user name or password holds one of ``@ / ? #`` unencoded:
drivers disagree on where such a user info ends (libpq stops at the first ``/``, asyncpg at the
first ``/``, ``?`` or ``#``, SQLAlchemy at the first ``@``), and each would quote the pieces it took
for a host, a port or a database name in its error messages.
"""

from __future__ import annotations

import re
from urllib.parse import unquote

from core.errors import ConfigError

__all__ = ["check_url", "redact_url", "scrub"]

HIDDEN = "***"
_SECRET_NAME = r"[A-Za-z0-9_.\-]*(?:pass|pwd|secret|token|key|signature|credential)[A-Za-z0-9_.\-]*"  # noqa: S105
# a secret parameter's value runs to the next parameter (or the end); it may hold '#', '/', '@'
_SECRET_PARAM = re.compile(rf"(?:(?<=[?&;\s])|^)(?i:{_SECRET_NAME})=([^&;\s]*)")
_UNSAFE_IN_USERINFO = "@/?#"
_MIN_SCRUBBED = 3  # shorter secrets are not searched for in free text (they would mangle it)


def _spans(url: str) -> tuple[list[tuple[int, int]], bool]:
    """Spans of ``url`` that hold secrets, and whether its user info needs percent-encoding."""
    spans = [m.span(1) for m in _SECRET_PARAM.finditer(url) if m.group(1)]
    start = url.find("://")
    if start < 0:
        return spans, False
    start += 3
    # the user info cannot reach into a secret parameter: search for its '@' before the first one
    end = min((s for s, _ in spans), default=len(url))
    region = url[start:end]
    strict_end = next((i for i, c in enumerate(region) if c in "/?#"), len(region))
    authority = region[:strict_end]  # where asyncpg and urllib say the authority ends
    path = region[strict_end:].split("?", 1)[0] if region[strict_end : strict_end + 1] != "?" else ""
    unsafe = (
        authority.count("@") > 1
        or ("@" not in authority and "@" in region[strict_end:])  # a user info cut short
        or ("@" in path)  # one that went on past a '/' or '#'
    )
    at = region.rfind("@") if unsafe else authority.rfind("@")
    if at >= 0:
        colon = region.find(":", 0, at)
        if colon >= 0 and colon + 1 < at:
            spans.append((start + colon + 1, start + at))
        unsafe = unsafe or any(c in region[:at] for c in _UNSAFE_IN_USERINFO)
    return spans, unsafe


def redact_url(url: str) -> str:
    """``url`` with its password and secret parameters replaced by ``***``; never raises."""
    spans, _ = _spans(url)
    out = url
    for s, e in sorted(spans, reverse=True):
        out = out[:s] + HIDDEN + out[e:]
    return out


def _secrets(url: str) -> set[str]:
    spans, _ = _spans(url)
    found: set[str] = set()
    for s, e in spans:
        raw = url[s:e]
        found.update({raw, unquote(raw)})
    return {s for s in found if len(s) >= _MIN_SCRUBBED}


def scrub(text: str, url: str) -> str:
    """``text`` (a driver's error message) with every secret of ``url`` replaced by ``***``, and
    ``url`` itself by its redacted form."""
    out = text.replace(url, redact_url(url)) if url else text
    for secret in sorted(_secrets(url), key=len, reverse=True):
        out = out.replace(secret, HIDDEN)
    return out


def check_url(url: str, what: str = "the database URL") -> str:
    """``url`` when its user info can be parsed one way only; else ``ConfigError`` (redacted)."""
    _, unsafe = _spans(url)
    if unsafe:
        raise ConfigError(
            f"{what} {redact_url(url)}: the user name or password holds '@', '/', '?' or '#'; "
            "percent-encode them (%40, %2F, %3F, %23)"
        )
    return url
