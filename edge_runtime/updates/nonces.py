"""The capture-request nonces a device has seen, until their requests expire.

A signed capture request stays valid for its hour; anyone who can publish on the device's
``capture/request`` topic could send a copy again and make the device re-send its whole
capture. Every request carries a fresh ``nonce``; the device answers a nonce once.

:class:`NonceBook` is the pure state: ``admit`` says whether a nonce is new and records it.
It is bounded (:data:`MAX_NONCES`): expired entries go first, then (only if the operator
signed more than that many live requests) the one expiring soonest. :func:`load_book` and
:func:`save_book` keep it across restarts, so a restart does not reopen the window.
"""

from __future__ import annotations

import datetime as _dt
import json
import logging
import re
from dataclasses import dataclass, field
from pathlib import Path

from edge_runtime.atomic import write_bytes_atomic

log = logging.getLogger("edge_runtime.updates")

NONCES_FILE = "capture-nonces.json"  # in the updates state directory
NONCE_RE = re.compile(r"^[0-9a-f]{32}\Z")
MAX_NONCES = 1024
MAX_FILE_BYTES = 256 * 1024


@dataclass
class NonceBook:
    """Seen nonce -> the expiry of its request (Unix seconds)."""

    seen: dict[str, float] = field(default_factory=dict)
    capacity: int = MAX_NONCES

    def admit(self, nonce: str, expires: _dt.datetime, now: _dt.datetime | None) -> bool:
        """True (and remembered) for a nonce not seen before; False for a replay.

        ``now`` is None when the device's clock is not trusted: nothing is dropped as expired
        then, only the soonest-expiring entry when the book is full."""
        if nonce in self.seen:
            return False
        if now is not None:
            cut = now.timestamp()
            self.seen = {n: t for n, t in self.seen.items() if t > cut}
        while len(self.seen) >= self.capacity:
            del self.seen[min(self.seen, key=lambda n: self.seen[n])]
        self.seen[nonce] = expires.timestamp()
        return True

    def to_bytes(self) -> bytes:
        """The book as JSON."""
        return json.dumps({"seen": self.seen}, sort_keys=True).encode()

    @classmethod
    def from_bytes(cls, data: bytes) -> NonceBook:
        """A book from :meth:`to_bytes` output; entries that do not fit the format are dropped."""
        doc = json.loads(data)
        seen = doc.get("seen") if isinstance(doc, dict) else None
        book = cls()
        for n, t in (seen.items() if isinstance(seen, dict) else []):
            if isinstance(n, str) and NONCE_RE.match(n) and isinstance(t, (int, float)) and not isinstance(t, bool):
                book.seen[n] = float(t)
        while len(book.seen) > book.capacity:
            del book.seen[min(book.seen, key=lambda n: book.seen[n])]
        return book


def load_book(path: Path | None) -> NonceBook:
    """The saved book, or an empty one (no file, or one that does not parse: logged)."""
    if path is None:
        return NonceBook()
    try:
        with open(path, "rb") as fh:
            data = fh.read(MAX_FILE_BYTES + 1)
    except FileNotFoundError:
        return NonceBook()
    except OSError as exc:
        log.warning("capture nonces %s unreadable (%s): starting an empty book", path, exc)
        return NonceBook()
    try:
        if len(data) > MAX_FILE_BYTES:
            raise ValueError(f"over {MAX_FILE_BYTES} bytes")
        return NonceBook.from_bytes(data)
    except ValueError as exc:
        log.warning("capture nonces %s unusable (%s): starting an empty book", path, exc)
        return NonceBook()


def save_book(path: Path | None, book: NonceBook) -> None:
    """Write the book atomically (nothing without a path)."""
    if path is not None:
        path.parent.mkdir(parents=True, exist_ok=True)
        write_bytes_atomic(path, book.to_bytes())


__all__ = ["MAX_NONCES", "NONCES_FILE", "NONCE_RE", "NonceBook", "load_book", "save_book"]
