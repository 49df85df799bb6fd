"""The one table formatter and the one progress line."""

from __future__ import annotations

import io

from edge_runtime.text import ProgressLine, format_table


def test_table_aligns_columns_and_leaves_the_last_cell_unpadded() -> None:
    table = format_table([["NAME", "N", "NOTE"], ["fraud", "12", "ok"], ["a", "3", ""]], right=(1,))
    assert table.splitlines() == ["NAME    N  NOTE", "fraud  12  ok", "a       3"]


def test_a_short_row_runs_on_without_widening_columns() -> None:
    table = format_table([["MODEL", "VERSION", "STATUS"], ["fraud", "1", "active"], ["", "a long note under the model"]])
    assert table.splitlines()[1] == "fraud  1        active"
    assert table.splitlines()[2] == "       a long note under the model"


def test_min_widths_keep_a_fixed_layout() -> None:
    assert format_table([["a", "b", "c"]], min_widths=(4, 2)) == "a     b   c"


def test_progress_line_redraws_only_on_change_and_ends_the_line() -> None:
    out = io.StringIO()
    bar = ProgressLine(out, "MB", label="chunks", scale=1e6, decimals=1, width=10)
    bar(500_000, 2_000_000)
    bar(500_000, 2_000_000)
    bar(2_000_000, 2_000_000)
    assert out.getvalue() == "\rchunks [##........]  25% 0.5/2.0 MB\rchunks [##########] 100% 2.0/2.0 MB\n"


def test_progress_line_without_a_total_counts_with_a_rate() -> None:
    out = io.StringIO()
    ticks = iter([0.0, 2.0])
    bar = ProgressLine(out, "rows", rate=True, clock=lambda: next(ticks))
    bar(10, None)
    assert out.getvalue() == "\r10 rows 5 rows/s"
