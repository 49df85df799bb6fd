"""Plain text for terminals: the one table formatter and the one progress line.

It imports nothing from the project, so every layer (and the converter) can use it.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Container, Sequence
from typing import IO


def format_table(rows: Sequence[Sequence[str]], *, right: Container[int] = (), min_widths: Sequence[int] = ()) -> str:
    """Rows of cells (the header first) as columns two spaces apart, without trailing blanks.

    Columns whose index is in ``right`` are right-aligned. A row's last cell is never
    padded, so a shorter row's last cell runs on under the columns it does not fill
    (a note under a model, say) without widening them.
    """
    columns = max((len(r) for r in rows), default=0)
    widths = [min_widths[i] if i < len(min_widths) else 0 for i in range(columns)]
    for r in rows:
        for i, cell in enumerate(r[:-1]):
            widths[i] = max(widths[i], len(cell))
    lines = []
    for r in rows:
        cells = [cell.rjust(widths[i]) if i in right else cell.ljust(widths[i]) for i, cell in enumerate(r[:-1])]
        lines.append("  ".join([*cells, *r[-1:]]).rstrip())
    return "\n".join(lines)


class ProgressLine:
    """A ``progress(done, total)`` callback that redraws one line on ``stream``.

    With a total: ``label [#####.....]  42% 1.2/3.4 MB``; without: ``label 7 rows``. Counts
    are divided by ``scale`` and shown with ``decimals``; ``rate`` appends units per second.
    The line is written only when its text changes, and ended once ``done`` reaches the
    total when ``end_line`` is set.
    """

    def __init__(
        self,
        stream: IO[str],
        unit: str,
        *,
        label: str = "",
        scale: float = 1.0,
        decimals: int = 0,
        width: int = 30,
        rate: bool = False,
        end_line: bool = True,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.stream = stream
        self.unit = unit
        self.label = label
        self.scale = scale
        self.decimals = decimals
        self.width = width
        self.rate = rate
        self.end_line = end_line
        self.clock = clock
        self.start = clock()
        self.last = ""

    def _count(self, n: int) -> str:
        return f"{n / self.scale:.{self.decimals}f}"

    def __call__(self, done: int, total: int | None) -> None:
        label = f"{self.label} " if self.label else ""
        if total:
            filled = min(self.width, self.width * done // total)
            pct = min(100, 100 * done // total)
            text = f"{label}[{'#' * filled}{'.' * (self.width - filled)}] {pct:3d}% {self._count(done)}/{self._count(total)} {self.unit}"
        else:
            text = f"{label}{self._count(done)} {self.unit}"
        if self.rate:
            per_s = done / self.scale / max(self.clock() - self.start, 1e-9)
            text += f" {per_s:,.0f} {self.unit}/s"
        if text == self.last:
            return
        self.last = text
        self.stream.write("\r" + text)
        if self.end_line and total and done >= total:
            self.stream.write("\n")
        self.stream.flush()


__all__ = ["ProgressLine", "format_table"]
