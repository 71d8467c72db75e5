"""The one Markdown table writer of the reports (`report`, `leaderboard`, `theory_report`), and
the durations they print."""
from __future__ import annotations

import math
from typing import Iterable, Sequence

__all__ = ["format_seconds", "markdown_table"]


def markdown_table(headers: Sequence[str], rows: Iterable[Sequence[object]],
                   align: str | None = None) -> str:
    """A GitHub-flavoured Markdown table; align: one 'l'/'r' per column (default left)."""
    align = align or "l" * len(headers)
    if len(align) != len(headers):
        raise ValueError(f"align {align!r} needs one letter per column ({len(headers)})")

    def cell(value: object) -> str:
        return str(value).replace("|", "\\|").replace("\n", " ")

    rule = ["---:" if a == "r" else "---" for a in align]
    lines = ["| " + " | ".join(map(cell, headers)) + " |", "| " + " | ".join(rule) + " |"]
    lines += ["| " + " | ".join(map(cell, row)) + " |" for row in rows]
    return "\n".join(lines)


def format_seconds(seconds: float) -> str:
    """Human duration: '45.0 s', '12.3 min', '1.54 h'; '–' for NaN."""
    if seconds is None or not math.isfinite(seconds):
        return "–"
    if seconds < 120:
        return f"{seconds:.1f} s"
    if seconds < 3600:
        return f"{seconds / 60:.1f} min"
    return f"{seconds / 3600:.2f} h"
