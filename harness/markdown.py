"""The one Markdown table writer of the reports (`report`, `leaderboard`, `theory_report`)."""
from __future__ import annotations

from typing import Iterable, Sequence

__all__ = ["markdown_table"]


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
