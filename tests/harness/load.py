"""Client threads that send requests in a loop until the ``with`` block ends."""

from __future__ import annotations

import threading
from typing import Any, TypeVar

from harness.wait import DEFAULT_TIMEOUT_S

L = TypeVar("L", bound="ClientThreads")


class ClientThreads:
    """``clients`` named threads running ``self._run(i)`` until ``self.stop`` is set.

    Subclasses implement ``_run`` (loop while ``not self.stop.is_set()``); entering the
    ``with`` block starts the threads, leaving it stops and joins them.
    """

    def __init__(self, clients: int, name: str) -> None:
        self.stop = threading.Event()
        self.lock = threading.Lock()
        self.threads = [threading.Thread(target=self._run, args=(i,), name=f"{name}-{i}") for i in range(clients)]

    def _run(self, i: int) -> None:
        raise NotImplementedError

    def __enter__(self: L) -> L:
        for t in self.threads:
            t.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self.stop.set()
        for t in self.threads:
            t.join(DEFAULT_TIMEOUT_S)
