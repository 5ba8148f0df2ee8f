"""How shipwatch signs what it POSTs to endpoints you run (the traffic webhook, incident tickets),
and how a receiver checks it.

    X-Shipwatch-Timestamp: unix seconds at which the request was signed
    X-Shipwatch-Signature: v1=<hex HMAC-SHA256(secret, "v1:" + timestamp + ":" + body)>

A receiver passes the raw body bytes and the two header values to :func:`verify_signature`.
"""

from __future__ import annotations

import hashlib
import hmac
import time

SIGNATURE_HEADER = "X-Shipwatch-Signature"
TIMESTAMP_HEADER = "X-Shipwatch-Timestamp"
SIGNATURE_VERSION = "v1"
DEFAULT_TOLERANCE = 300.0

# Unix seconds fit in 11 digits for millennia; longer strings are junk and `int()` on very long
# digit strings is slow or refused outright.
_MAX_TIMESTAMP_DIGITS = 15


def sign(secret: str, timestamp: str, body: bytes) -> str:
    """The ``X-Shipwatch-Signature`` value for ``body`` sent at ``timestamp``."""
    message = f"{SIGNATURE_VERSION}:{timestamp}:".encode("ascii") + body
    digest = hmac.new(secret.encode("utf-8"), message, hashlib.sha256).hexdigest()
    return f"{SIGNATURE_VERSION}={digest}"


def verify_signature(
    secret: str,
    timestamp: str,
    body: bytes,
    signature: str,
    *,
    now: float | None = None,
    tolerance: float = DEFAULT_TOLERANCE,
) -> bool:
    """True when ``signature`` is ours for ``body`` and ``timestamp`` is fresh.

    ``timestamp`` and ``signature`` are the ``X-Shipwatch-Timestamp`` and
    ``X-Shipwatch-Signature`` header values, ``body`` the raw request body. ``now`` defaults to
    the current time; timestamps further than ``tolerance`` seconds from it, in either
    direction, are rejected.
    """
    if not secret:
        # An empty key is known to everyone, so nothing signed with it proves anything.
        return False
    ts = timestamp.strip()
    if not (ts.isascii() and ts.isdigit()) or len(ts) > _MAX_TIMESTAMP_DIGITS:
        return False
    current = time.time() if now is None else now
    if abs(current - int(ts)) > tolerance:
        return False
    expected = sign(secret, ts, body).encode("ascii")
    # Compare bytes: compare_digest refuses non-ASCII str, and the header is attacker-chosen.
    return hmac.compare_digest(expected, signature.strip().encode("utf-8", "replace"))
