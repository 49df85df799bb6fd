"""Bytes a device downloaded: per release (``edge_update_downloaded_bytes_total{model,version}``
and the state document's ``downloaded_bytes``) and per UTC day (the daily budget).

Every chunk byte that arrives counts, duplicates and dropped chunks included: the link carried
them. Counted on the network thread (hence the lock), saved to ``traffic.json`` in the updater's
state directory when a download finishes or pauses, so a restart keeps the day's budget.
"""

from __future__ import annotations

import datetime as _dt
import json
import logging
import threading
from pathlib import Path
from typing import Any

from edge_runtime.atomic import write_bytes_atomic
from edge_runtime.updates.policy import Budget, Decision, download_decision, read_nm_metered

log = logging.getLogger("edge_runtime.updates")
TRAFFIC_FILE = "traffic.json"
MAX_RELEASES = 64  # per-release counters kept (oldest dropped first)


class Traffic:
    """The download ledger of one device."""

    def __init__(self, path: Path, metered: Path | None = None) -> None:
        self.path = Path(path)
        self.metered_file = metered  # NetworkManager's metered flag, when the platform exposes it
        self._lock = threading.Lock()
        self._releases: dict[tuple[str, int], int] = {}
        self._day = ""
        self._day_bytes = 0
        self._load()

    def _load(self) -> None:
        try:
            doc = json.loads(self.path.read_bytes())
            self._day, self._day_bytes = str(doc["day"]), int(doc["day_bytes"])
            for item in doc["releases"][-MAX_RELEASES:]:
                self._releases[(str(item[0]), int(item[1]))] = int(item[2])
        except FileNotFoundError:
            pass
        except (ValueError, KeyError, TypeError, IndexError) as exc:
            log.error("unreadable %s, download counters start at 0: %s", self.path.name, exc)

    def add(self, name: str, version: int, nbytes: int, now: _dt.datetime) -> None:
        """Count ``nbytes`` received for ``name`` v``version`` at ``now``."""
        day = now.astimezone(_dt.UTC).date().isoformat()
        with self._lock:
            if day != self._day:
                self._day, self._day_bytes = day, 0
            self._day_bytes += nbytes
            key = (name, version)
            self._releases[key] = self._releases.pop(key, 0) + nbytes
            while len(self._releases) > MAX_RELEASES:
                del self._releases[next(iter(self._releases))]

    def today(self, now: _dt.datetime) -> int:
        """Bytes downloaded on the UTC day of ``now``."""
        with self._lock:
            return self._day_bytes if self._day == now.astimezone(_dt.UTC).date().isoformat() else 0

    def releases(self) -> dict[tuple[str, int], int]:
        """Bytes downloaded per (model, version)."""
        with self._lock:
            return dict(self._releases)

    def summary(self) -> dict[str, dict[str, int]]:
        """The state document's ``downloaded_bytes``: ``{model: {version: bytes}}``."""
        out: dict[str, dict[str, int]] = {}
        for (name, version), n in sorted(self.releases().items()):
            out.setdefault(name, {})[str(version)] = n
        return out

    def metered(self, budget: Budget) -> bool:
        """The link is metered: the config says so, or NetworkManager does."""
        return budget.metered or read_nm_metered(self.metered_file) is True

    def decide(self, need_bytes: int, budget: Budget, *, window_open: bool, now: _dt.datetime) -> Decision:
        """May a download of ``need_bytes`` start now (see :func:`policy.download_decision`)."""
        return download_decision(need_bytes, self.today(now), budget, metered=self.metered(budget),
                                 window_open=window_open, now=now)

    def save(self) -> None:
        """Persist the counters (errors are logged: counting must never stop an update)."""
        with self._lock:
            doc: dict[str, Any] = {
                "day": self._day,
                "day_bytes": self._day_bytes,
                "releases": [[n, v, b] for (n, v), b in self._releases.items()],
            }
        try:
            write_bytes_atomic(self.path, json.dumps(doc).encode())
        except OSError as exc:
            log.error("cannot save %s: %s", self.path.name, exc)


def metrics_lines(traffic: Traffic) -> list[str]:
    """Prometheus text lines of ``edge_update_downloaded_bytes_total``."""
    lines = [
        "# HELP edge_update_downloaded_bytes_total Update bytes received per release (chunks and deltas).",
        "# TYPE edge_update_downloaded_bytes_total counter",
    ]
    for (name, version), n in sorted(traffic.releases().items()):
        lines.append(f'edge_update_downloaded_bytes_total{{model="{name}",version="{version}"}} {n}')
    return lines


__all__ = ["TRAFFIC_FILE", "Traffic", "metrics_lines"]
