"""One HTTP request over loopback, as the daemon tests send them."""

from __future__ import annotations

import http.client

REQUEST_TIMEOUT_S = 120.0


def request(
    port: int, method: str, path: str, body: bytes | None = None, headers: dict[str, str] | None = None,
    conn: http.client.HTTPConnection | None = None,
) -> tuple[int, bytes]:
    """One HTTP request to ``127.0.0.1:port`` (on ``conn`` when given, kept alive); (status, body)."""
    own = conn is None
    c = conn or http.client.HTTPConnection("127.0.0.1", port, timeout=REQUEST_TIMEOUT_S)
    try:
        c.request(method, path, body=body, headers=headers or {})
        resp = c.getresponse()
        return resp.status, resp.read()
    finally:
        if own:
            c.close()
