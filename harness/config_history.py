"""The resolved config keeps its history.

`RESULTS_DIR/config.toml` is always the config of the last run. A run whose settings differ
from it (or the first run) also appends a timestamped copy,
`RESULTS_DIR/config_history/<UTC time>.toml`, and one line to
`RESULTS_DIR/config_history/changes.txt` saying what changed from what to what, so growing an
experiment (more seeds, methods, shot counts, other resources) never overwrites how its
earlier rows were made. A rerun with the same settings writes nothing here.
"""
from __future__ import annotations

import datetime as _dt
import tomllib
from pathlib import Path
from typing import Any, Mapping

from harness import store

HISTORY_DIR = "config_history"
CHANGES_FILE = "changes.txt"
CONFIG_FILE = "config.toml"


def flat_settings(text: str) -> dict[str, Any]:
    """"table.key" -> value of a resolved config's TOML text (comments, which say where it
    came from, are not settings). Nested tables flatten to dotted keys."""
    out: dict[str, Any] = {}

    def walk(prefix: str, node: Mapping[str, Any]) -> None:
        for key, value in node.items():
            name = f"{prefix}.{key}" if prefix else str(key)
            if isinstance(value, Mapping) and value:
                walk(name, value)
            else:
                out[name] = value

    walk("", tomllib.loads(text))
    return out


def describe_changes(old_text: str | None, new_text: str) -> str:
    """One line: "first run", or "a.b: 1 -> 2; c.d: (unset) -> 'x'" for each changed key."""
    if old_text is None:
        return "first recorded config"
    try:
        old = flat_settings(old_text)
    except tomllib.TOMLDecodeError:
        return "replaces an unreadable config.toml"
    new = flat_settings(new_text)
    parts = [f"{k}: {old[k]!r} -> {new[k]!r}" if k in old and k in new
             else f"{k}: (unset) -> {new[k]!r}" if k in new else f"{k}: {old[k]!r} -> (unset)"
             for k in sorted(set(old) | set(new)) if old.get(k, ...) != new.get(k, ...)]
    return "; ".join(parts) or "same settings"


def _stamp(now: _dt.datetime) -> str:
    return now.astimezone(_dt.timezone.utc).strftime("%Y%m%dT%H%M%S%fZ")


def record_config(results_dir: str | Path, text: str, *, now: _dt.datetime | None = None) -> Path | None:
    """Write `text` (a resolved config, `harness.config.to_toml`) as RESULTS_DIR/config.toml,
    keeping the history; returns the history copy written, or None when the settings equal
    the recorded ones (then nothing is written, config.toml included).

    A folder from before the history existed gets its old config.toml saved first, stamped
    with that file's modification time.
    """
    folder = Path(results_dir)
    current = folder / CONFIG_FILE
    old_text = current.read_text(encoding="utf-8") if current.is_file() else None
    change = describe_changes(old_text, text)
    if change == "same settings":
        return None
    history = folder / HISTORY_DIR
    lines = (history / CHANGES_FILE).read_text(encoding="utf-8") if (history / CHANGES_FILE).is_file() else ""
    if old_text is not None and not lines:  # the config recorded before there was a history
        then = _dt.datetime.fromtimestamp(current.stat().st_mtime, _dt.timezone.utc)
        store.write_text_atomic(history / f"{_stamp(then)}.toml", old_text)
        lines += f"{_stamp(then)}  config.toml before its history was kept\n"
    stamp = _stamp(now or _dt.datetime.now(_dt.timezone.utc))
    copy = store.write_text_atomic(history / f"{stamp}.toml", text)
    store.write_text_atomic(history / CHANGES_FILE, lines + f"{stamp}  {change}\n")
    store.write_text_atomic(current, text)
    return copy
